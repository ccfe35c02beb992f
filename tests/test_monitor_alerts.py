"""Alert rules (afb/monitor/alerts.py) on fixed snapshots and a fake clock; alert_command."""

import json
import logging
import os

import gevent
import pytest

from afb.monitor import alert_command
from afb.monitor.alert_command import AlertCommand
from afb.monitor.alerts import AlertEngine
from tests.monitor_fakes import snapshot

OFF = {"max_rate_up": 0, "max_rate_down": 0, "max_errors_per_minute": 0, "max_rss": 0,
       "max_fds": 0, "anomaly_factor": 0, "anomaly_floor": 1e6, "anomaly_window": 600.0,
       "clear_after": 10.0, "max_auth_failures_per_minute": 0,
       "max_auth_failures_per_source": 0, "tunnel_down_after": 0}


def engine(role="server", **rules):
    return AlertEngine(dict(OFF, **rules), role, now=0.0)


def names(alerts):
    return [(a["name"], a["subject"]) for a in alerts]


def test_bandwidth_starts_updates_and_clears_after_the_hold():
    e = engine(max_rate_down=10e6)
    assert e.evaluate(snapshot(totals={"rate_down": 5e6}), 1) == ([], [])
    started, cleared = e.evaluate(snapshot(totals={"rate_down": 12.1e6}), 2)
    assert names(started) == [("bandwidth_down", None)] and cleared == []
    assert started[0]["message"] == "download 12.1 MB/s > 10.0 MB/s"
    assert started[0]["threshold"] == 10e6 and started[0]["since"] == 2
    assert e.evaluate(snapshot(totals={"rate_down": 15e6}), 3) == ([], [])
    assert e.alerts()[0]["value"] == 15e6               # follows the latest figure
    assert e.evaluate(snapshot(totals={"rate_down": 0.0}), 4) == ([], [])    # held
    assert e.evaluate(snapshot(totals={"rate_down": 11e6}), 5) == ([], [])   # back: same alert
    e.evaluate(snapshot(totals={"rate_down": 0.0}), 6)
    assert e.evaluate(snapshot(totals={"rate_down": 0.0}), 15.9) == ([], [])
    started, cleared = e.evaluate(snapshot(totals={"rate_down": 0.0}), 16)
    assert started == [] and names(cleared) == [("bandwidth_down", None)]
    assert e.alerts() == []


def test_error_rate_counts_the_last_minute_without_decoy_answers():
    e = engine(max_errors_per_minute=10)
    base = snapshot()["errors"]
    e.evaluate(snapshot(errors=dict(base)), 0)
    assert e.evaluate(snapshot(errors=dict(base, decoy_answers=500)), 1) == ([], [])
    started, _ = e.evaluate(snapshot(errors=dict(base, decoy_answers=500, resets=51)), 2)
    assert names(started) == [("error_rate", None)]
    assert started[0]["value"] == 11
    # a minute later those 11 errors are out of the window
    _, cleared = e.evaluate(snapshot(errors=dict(base, resets=51)), 63)
    assert cleared == [] and e.active            # not held long enough yet
    _, cleared = e.evaluate(snapshot(errors=dict(base, resets=51)), 73)
    assert names(cleared) == [("error_rate", None)]


def test_auth_failures_in_total_and_from_one_address():
    e = engine(max_auth_failures_per_minute=5, max_auth_failures_per_source=3)
    errors = snapshot()["errors"]
    e.evaluate(snapshot(), 0)
    started, _ = e.evaluate(snapshot(errors=dict(errors, auth_failures=4)), 1,
                            {"203.0.113.9": 4})
    assert names(started) == [("auth_failures_source", "203.0.113.9")]
    assert "4 failed logins from 203.0.113.9" in started[0]["message"]
    started, _ = e.evaluate(snapshot(errors=dict(errors, auth_failures=6)), 2,
                            {"203.0.113.10": 2})
    assert names(started) == [("auth_failures", None)]
    assert ("auth_failures_source", "203.0.113.10") not in e.active
    assert e.evaluate(snapshot(errors=dict(errors, auth_failures=6)), 72) == ([], [])
    _, cleared = e.evaluate(snapshot(errors=dict(errors, auth_failures=6)), 82)
    assert sorted(names(cleared)) == [("auth_failures", None),
                                      ("auth_failures_source", "203.0.113.9")]


def test_tunnel_down_on_the_client_only():
    down = [{"id": 1, "state": "connecting", "rtt": None}]
    up = [{"id": 1, "state": "open", "rtt": 0.01}]
    e = engine("client", tunnel_down_after=5)
    assert e.evaluate(snapshot(role="client", tunnels=up), 1) == ([], [])
    e.evaluate(snapshot(role="client", tunnels=down), 2)
    assert e.evaluate(snapshot(role="client", tunnels=[]), 7) == ([], [])
    started, _ = e.evaluate(snapshot(role="client", tunnels=down), 7.5)
    assert names(started) == [("tunnel_down", None)]
    assert started[0]["message"] == "no tunnel for 6 s > 5 s"
    e.evaluate(snapshot(role="client", tunnels=up), 8)
    _, cleared = e.evaluate(snapshot(role="client", tunnels=up), 18)
    assert names(cleared) == [("tunnel_down", None)]
    server = engine("server", tunnel_down_after=5)
    assert server.evaluate(snapshot(tunnels=[]), 100) == ([], [])


def test_rss_and_descriptors():
    e = engine(max_rss=40 << 20, max_fds=30, clear_after=0)
    started, _ = e.evaluate(snapshot(), 1)
    assert sorted(names(started)) == [("fds", None), ("rss", None)]
    _, cleared = e.evaluate(snapshot(process={"rss": 1 << 20, "fds": 10}), 2)
    assert sorted(names(cleared)) == [("fds", None), ("rss", None)]


def user(name, rate):
    return {"user": name, "tunnels": 1, "streams": 1, "rate_up": 0.0, "rate_down": rate,
            "bytes_up": 0, "bytes_down": 0}


def steady(e, start, stop, total, users, step=1.0):
    t = start
    while t < stop:
        assert e.evaluate(snapshot(totals={"rate_up": 0.0, "rate_down": total}, users=users),
                          t) == ([], [])
        t += step
    return t


def test_anomaly_of_a_user_and_of_the_whole_server():
    e = engine(anomaly_factor=5, anomaly_floor=1e6, anomaly_window=100, clear_after=0)
    t = steady(e, 0, 60, 2e6, [user("alice", 1e6), user("bob", 1e6)])
    spike = [user("alice", 1e6), user("bob", 8e6)]
    started, _ = e.evaluate(snapshot(totals={"rate_up": 0.0, "rate_down": 9e6}, users=spike), t)
    assert names(started) == [("anomaly", "bob")]       # the total is 4.5x its mean: not yet
    assert started[0]["message"].startswith("user bob rate 8.0 MB/s > 5 x its mean")
    started, _ = e.evaluate(snapshot(totals={"rate_up": 0.0, "rate_down": 20e6}, users=spike),
                            t + 1)
    assert names(started) == [("anomaly", None)]
    # a sustained rate becomes the new mean: the anomaly ends by itself
    t = t + 2
    while e.active and t < 400:
        e.evaluate(snapshot(totals={"rate_up": 0.0, "rate_down": 9e6}, users=spike), t)
        t += 1
    assert not e.active and t < 400


def test_anomaly_needs_the_floor_and_a_baseline():
    e = engine(anomaly_factor=3, anomaly_floor=1e6, anomaly_window=100, clear_after=0)
    # the first 25 s (a quarter of the window) judge nothing: no baseline yet
    t = steady(e, 0, 20, 0.0, [])
    steady(e, t, t + 1, 50e6, [])
    e1 = engine(anomaly_factor=3, anomaly_floor=1e6, anomaly_window=100, clear_after=0)
    t = steady(e1, 0, 30, 0.0, [])
    assert names(e1.evaluate(snapshot(totals={"rate_down": 50e6}, users=[]), t)[0]) == [
        ("anomaly", None)]
    e2 = engine(anomaly_factor=3, anomaly_floor=1e6, anomaly_window=100)
    t = steady(e2, 0, 60, 0.0, [])
    # idle -> small is no anomaly: under the floor
    assert e2.evaluate(snapshot(totals={"rate_up": 0.0, "rate_down": 5e5},
                                users=[user("dave", 5e5)]), t) == ([], [])
    # a user first seen now has no baseline yet either
    assert e2.evaluate(snapshot(totals={"rate_up": 0.0, "rate_down": 5e5},
                                users=[user("erin", 9e6)]), t + 1) == ([], [])
    started, _ = e2.evaluate(snapshot(totals={"rate_up": 0.0, "rate_down": 9e6}, users=[]),
                             t + 2)
    assert names(started) == [("anomaly", None)]


def test_users_that_leave_are_forgotten():
    e = engine(anomaly_factor=3, anomaly_window=10)
    e.evaluate(snapshot(users=[user("x%d" % i, 100.0) for i in range(100)]), 0)
    for t in range(1, 400):
        e.evaluate(snapshot(users=[]), t)
    assert set(e._mean) == {None}


# --- alert_command ------------------------------------------------------------------

ALERT = {"name": "bandwidth_down", "since": 1.0, "subject": None, "value": 2.0,
         "threshold": 1.0, "message": "download 2 B/s > 1 B/s"}


def script(tmp_path, body):
    path = tmp_path / "hook.sh"
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return str(path)


def test_alert_command_gets_the_alert_as_json(tmp_path):
    out = tmp_path / "out"
    cmd = AlertCommand("%s %s" % (script(tmp_path, 'cat >> "$1"\n'), out), timeout=10)
    assert cmd.run(ALERT, "active").get(timeout=10) == 0
    data = json.loads(out.read_text())
    assert data["name"] == "bandwidth_down" and data["state"] == "active"
    assert data["role"] == "server" and data["message"] == ALERT["message"]


def test_alert_command_timeout_and_failures_are_one_line(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=alert_command.__name__)
    slow = AlertCommand(script(tmp_path, "sleep 30\n"), timeout=0.3)
    started = gevent.get_hub().loop.now()
    task = slow.run(ALERT, "active")
    ticks = []
    while not task.ready():             # the loop goes on meanwhile
        ticks.append(1)
        gevent.sleep(0.02)
    assert task.value is None and gevent.get_hub().loop.now() - started < 5
    assert len(ticks) > 5
    failing = AlertCommand(script(tmp_path, "echo oops; exit 3\n"), timeout=5)
    assert failing.run(ALERT, "cleared").get(timeout=10) == 3
    missing = AlertCommand(str(tmp_path / "nothing-here"), timeout=5)
    assert missing.run(ALERT, "active").get(timeout=10) is None
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "alert_command %s/hook.sh for alert=bandwidth_down killed after 0.3 s" % tmp_path,
        "alert_command %s/hook.sh for alert=bandwidth_down exited with status 3: oops"
        % tmp_path,
        "alert_command %s/nothing-here failed for alert=bandwidth_down: No such file or "
        "directory" % tmp_path]
    assert not any(r.exc_info for r in caplog.records)


def test_alert_command_runs_at_most_a_few_at_once(tmp_path, caplog):
    cmd = AlertCommand(script(tmp_path, "sleep 1\n"), timeout=5)
    tasks = [cmd.run(ALERT, "active") for _ in range(alert_command.MAX_RUNNING + 2)]
    assert tasks[-2:] == [None, None]
    assert "2 still running" not in caplog.text
    cmd.wait(10)
    assert not cmd.running


@pytest.mark.parametrize("command", ["", "   "])
def test_no_command_runs_nothing(command):
    assert AlertCommand(command).run(ALERT, "active") is None


# --- the loop's step (afb/monitor/reporting.py) ------------------------------------

def test_a_check_logs_lists_and_runs_the_command(tmp_path, caplog):
    from afb.monitor import reporting
    from tests.monitor_fakes import FakeMonitor

    out = tmp_path / "alerts.jsonl"

    class App:
        monitor = FakeMonitor(snapshot(role="client", totals={"rate_down": 12.1e6}), "client")
        auth_failures_by_source = {"192.0.2.1": 2}

    settings = dict(OFF, max_rate_down=10e6, clear_after=0, alert_command="%s %s" % (
        script(tmp_path, 'cat >> "$1"\n'), out), alert_command_timeout=5.0)
    app = App()
    mon = reporting.Reporting(app, {"client": {"metrics_listen": ""}, "alerts": settings},
                                "client")
    assert mon.alerting and mon.metrics is None and mon.usage is None
    caplog.set_level(logging.INFO, logger=reporting.__name__)
    started, _ = mon.check(now=100.0)
    assert app.auth_failures_by_source == {}
    assert [a["name"] for a in app.monitor.alerts] == ["bandwidth_down"]
    assert app.monitor.readers == ["alerts"]
    app.monitor.snap["totals"]["rate_down"] = 0.0
    _, cleared = mon.check(now=107.0)
    assert app.monitor.alerts == []
    mon.command.wait(10)
    assert [r.getMessage() for r in caplog.records] == [
        "alert=bandwidth_down: download 12.1 MB/s > 10.0 MB/s",
        "alert=bandwidth_down cleared after 7 s"]
    sent = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(a["state"] for a in sent) == ["active", "cleared"]
    assert {a["role"] for a in sent} == {"client"}
    mon.stop()


def test_sighup_settings_start_the_loop():
    from afb.monitor import reporting
    from tests.monitor_fakes import FakeMonitor

    class App:
        monitor = FakeMonitor(snapshot(role="client"), "client")

    settings = dict(OFF, alert_command="", alert_command_timeout=5.0)
    mon = reporting.Reporting(App(), {"client": {"metrics_listen": ""}, "alerts": settings},
                              "client").start()
    assert mon._alerts is None              # every rule off: no loop, no snapshots
    mon.configure(dict(settings, max_fds=1))
    assert mon._alerts is not None and mon.engine.settings["max_fds"] == 1
    mon.stop()
    assert mon._alerts.dead


def test_the_server_counts_failed_logins_per_address(tmp_path):
    from afb.apps.server import TunnelServer
    from afb.errors import AuthError
    from tests.support import Setup

    server = TunnelServer(Setup(tmp_path).server_cfg())
    try:
        for token in (None, "not.a.token", None):
            environ = {"REMOTE_ADDR": "192.0.2.9"}
            if token:
                environ["HTTP_AUTHORIZATION"] = "Bearer " + token
            with pytest.raises(AuthError):
                server._authorize(environ)
        assert server.auth_failures_by_source == {"192.0.2.9": 3}
        server.reporting.configure(dict(server.cfg["alerts"], max_auth_failures_per_source=2))
        started, _ = server.reporting.check(now=1.0)
        assert [(a["name"], a["subject"]) for a in started] == [
            ("auth_failures_source", "192.0.2.9")]
        assert server.auth_failures_by_source == {}
    finally:
        server.reporting.stop()
        server.state.close()
