"""Helpers for the dashboard's Pilot tests: run the app against a FakeDaemon."""

import asyncio
import contextlib
import time

from tests.tui_fake import FakeDaemon
from tui.app import Dashboard
from tui.widgets.connections import ConnectionsTable


async def until(pilot, predicate, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        await pilot.pause(0.02)


@contextlib.asynccontextmanager
async def dashboard(tmp_path, streams=(), role="client", size=(120, 36), start=True, **kwargs):
    """(app, pilot, fake) with the app connected to a fake daemon (when ``start``)."""
    path = tmp_path / "client.sock"
    fake = FakeDaemon(path, streams, role=role, **kwargs)
    if start:
        await fake.start()
    app = Dashboard(connect=str(path), environ={}, backoff=(0.05, 0.2))
    try:
        async with app.run_test(size=size) as pilot:
            if start:
                await until(pilot, lambda: app.snapshot is not None, what="a first snapshot")
                await pilot.pause()
            yield app, pilot, fake
    finally:
        if fake._server is not None and fake._server.is_serving():
            await fake.stop()


def table(app):
    return app.query_one(ConnectionsTable)


def column(app, key):
    """The text of column ``key``, top to bottom."""
    t = table(app)
    return [str(t.get_cell_at((row, t.get_column_index(key)))).strip()
            for row in range(t.row_count)]


def run(coro):
    return asyncio.run(coro)
