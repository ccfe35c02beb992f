"""How the dashboard looks (pytest-textual-snapshot): the main screen, the users and
devices views.

Fixed data from the fake daemon, sent once (the next beat an hour later), and
a fixed bandwidth history pushed into the chart: ages, uptime and rates are
the daemon's figures, never the local clock, so the SVG is the same on every
run.  The fake daemon starts inside ``run_before``, on the app's own loop.
``pytest tests/test_tui_snapshots.py --snapshot-update`` remakes the SVGs
(tests/__snapshots__/) after a deliberate change; look at them first.

Marked ``snapshot``: ``make test-tui-textual21`` leaves them out, as
Textual 2.1 draws some details (the footer, borders) differently.
"""

import os
import time

import pytest

from tests.tui_fake import DEVICES, FakeDaemon, stream
from tests.tui_pilot import until
from tui.app import Dashboard
from tui.widgets.bandwidth import BandwidthChart

# Debian 13 has no pytest-textual-snapshot (make test-trixie): its SVG checks need it.
pytest.importorskip("pytest_textual_snapshot", reason="pytest-textual-snapshot is not installed")

os.environ["TZ"] = "UTC"
time.tzset()
pytestmark = pytest.mark.snapshot
SIZE = (130, 36)


def streams(role):
    hosts = ["example.com", "deb.debian.org", "pypi.org", "github.com", "2001:db8::7",
             "news.ycombinator.com", "mail.example.net"]
    out = []
    for n, host in enumerate(hosts, start=1):
        out.append(stream(n, host=host, age=5.0 * n * n, up=1234 * n ** 5, down=98765 * n ** 4,
                          state="half-closed" if n == 4 else "open", role=role))
    return out


ALERT = {"name": "bandwidth", "since": 1796169900.0, "message": "download 12.1 MB/s > 10 MB/s",
         "value": 12100000.0, "threshold": 10000000.0, "subject": None}


def prepared(tmp_path, role, devices=None):
    path = tmp_path / ("%s.sock" % role)
    fake = FakeDaemon(path, streams(role), role=role, interval=3600, alerts=[ALERT],
                      devices=devices)

    async def run_before(pilot):
        app = pilot.app
        await fake.start()
        app.client.retry_now()
        await until(pilot, lambda: app.snapshot is not None, what="the snapshot")
        chart = app.main.query_one(BandwidthChart)
        chart.up.clear()
        chart.down.clear()
        for i in range(120):            # two minutes of a fixed, varied history
            chart.push(1000.0 * (i % 17), 50000.0 * ((i * 7) % 23))
        await pilot.pause()

    app = Dashboard(connect=str(path), environ={}, backoff=(0.05, 0.1))
    return app, fake, run_before


def test_main_screen(snap_compare, tmp_path):
    app, fake, run_before = prepared(tmp_path, "client")
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_users_view(snap_compare, tmp_path):
    app, fake, run_before = prepared(tmp_path, "server")

    async def users(pilot):
        await run_before(pilot)
        await pilot.press("u")
        await pilot.pause()
    assert snap_compare(app, terminal_size=SIZE, run_before=users)


def test_devices_view(snap_compare, tmp_path):
    app, fake, run_before = prepared(tmp_path, "client", devices=DEVICES)

    async def devices(pilot):
        await run_before(pilot)
        await pilot.press("u")
        await pilot.pause()
    assert snap_compare(app, terminal_size=SIZE, run_before=devices)
