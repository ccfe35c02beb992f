"""Usage per user and UTC day (afb/monitor/usage.py), its table in the state store, afb report."""

import calendar
import datetime
import io
import json
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afb.cli_report import parse_day, render
from afb.monitor.usage import UsageRecorder, next_midnight, utc_day
from afb.state import SCHEMA_VERSION, StateStore
from tests.monitor_fakes import FakeMonitor

MIDNIGHT = calendar.timegm((2026, 12, 2, 0, 0, 0))


def counters(up=0, down=0, streams=0, seconds=0.0, peak=0):
    return {"bytes_up": up, "bytes_down": down, "streams": streams, "tunnel_seconds": seconds,
            "peak_streams": peak}


@pytest.fixture
def store(tmp_path):
    s = StateStore(str(tmp_path / "afb.sqlite3"))
    yield s
    s.close()


def recorder(store, monitor, now, **kwargs):
    rec = UsageRecorder(monitor.usage_counters, store, **kwargs)
    rec.load(now)
    return rec


def test_days_split_at_utc_midnight(store):
    monitor = FakeMonitor()
    rec = recorder(store, monitor, MIDNIGHT - 10)
    monitor.counters = {"alice": counters(100, 1000, 2, 5.0, 3)}
    rec.sample(MIDNIGHT - 5)
    monitor.counters = {"alice": counters(150, 1500, 3, 10.0, 2)}
    rec.sample(MIDNIGHT)                # the recorder wakes at midnight
    assert rec.today("alice") == (0, 0)
    monitor.counters = {"alice": counters(160, 1600, 4, 15.0, 1),
                        "bob": counters(7, 8, 1, 1.0, 1)}
    rec.sample(MIDNIGHT + 5)
    assert rec.flush() == 3
    assert store.usage() == [
        {"day": "2026-12-01", "user": "alice", "bytes_up": 150, "bytes_down": 1500,
         "streams": 3, "peak_streams": 3, "tunnel_seconds": 10.0},
        {"day": "2026-12-02", "user": "alice", "bytes_up": 10, "bytes_down": 100,
         "streams": 1, "peak_streams": 1, "tunnel_seconds": 5.0},
        {"day": "2026-12-02", "user": "bob", "bytes_up": 7, "bytes_down": 8,
         "streams": 1, "peak_streams": 1, "tunnel_seconds": 1.0}]
    assert rec.today("alice") == (10, 100)
    # the live figures between two samples (the snapshot's USER bytes_*)
    assert rec.today("alice", live_up=170, live_down=1700) == (20, 200)
    assert rec.today("nobody") == (0, 0)


def test_a_restarted_server_adds_to_the_day(store):
    for run in range(2):
        monitor = FakeMonitor()
        rec = recorder(store, monitor, MIDNIGHT + 100 + run)
        assert rec.today("alice")[1] == 1000 * run
        monitor.counters = {"alice": counters(10, 1000, 1, 2.0, 4 - run)}
        rec.sample(MIDNIGHT + 200 + run)
        rec.flush()
    assert store.usage(user="alice") == [
        {"day": "2026-12-02", "user": "alice", "bytes_up": 20, "bytes_down": 2000,
         "streams": 2, "peak_streams": 4, "tunnel_seconds": 4.0}]


def test_old_rows_expire(store):
    store.add_usage([dict(day=day, user="u", bytes_up=1, bytes_down=1, streams=1,
                          peak_streams=1, tunnel_seconds=1.0)
                     for day in ("2026-08-01", "2026-09-02", "2026-09-03", "2026-12-01")])
    monitor = FakeMonitor()
    rec = recorder(store, monitor, MIDNIGHT + 1, keep_days=90)      # 90 days: from 09-03
    assert [r["day"] for r in store.usage()] == ["2026-09-03", "2026-12-01"]
    rec.sample(MIDNIGHT + 86400)        # the next midnight expires one more day
    assert [r["day"] for r in store.usage()] == ["2026-12-01"]


def test_a_failed_flush_keeps_the_rows(store):
    monitor = FakeMonitor()
    rec = recorder(store, monitor, MIDNIGHT)
    monitor.counters = {"alice": counters(1, 2, 1, 1.0, 1)}
    rec.sample(MIDNIGHT + 1)
    real, calls = store.add_usage, []

    def locked(rows):
        calls.append(rows)
        raise sqlite3.OperationalError("database is locked")

    store.add_usage = locked
    assert rec.flush() == 0
    store.add_usage = real
    monitor.counters = {"alice": counters(2, 4, 1, 2.0, 1)}
    rec.sample(MIDNIGHT + 2)
    assert rec.flush() == 1 and len(calls) == 1
    assert store.usage()[0]["bytes_down"] == 4


def test_the_schema_migrates_from_version_2(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE tokens (jti TEXT PRIMARY KEY, sub TEXT NOT NULL, iat INTEGER "
               "NOT NULL, exp INTEGER NOT NULL, kid TEXT, recorded_at REAL NOT NULL, fam TEXT, "
               "refreshes INTEGER NOT NULL DEFAULT 0)")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    store = StateStore(path)
    try:
        assert store.usage() == []
        assert store._query("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 4
    finally:
        store.close()


def test_next_midnight():
    assert next_midnight(MIDNIGHT - 0.5) == MIDNIGHT
    assert next_midnight(MIDNIGHT) == MIDNIGHT + 86400
    assert utc_day(MIDNIGHT - 1) == "2026-12-01" and utc_day(MIDNIGHT) == "2026-12-02"


# --- afb report -------------------------------------------------------------------------

ROWS = [{"day": "2026-12-01", "user": "alice", "bytes_up": 1500, "bytes_down": 2_500_000,
         "streams": 3, "peak_streams": 2, "tunnel_seconds": 3725.5},
        {"day": "2026-12-01", "user": "bob, jr", "bytes_up": 1, "bytes_down": 2,
         "streams": 1, "peak_streams": 1, "tunnel_seconds": 1.0}]


def rendered(fmt, rows=ROWS):
    out = io.StringIO()
    render(rows, fmt, out)
    return out.getvalue()


def test_report_formats():
    assert rendered("table").splitlines() == [
        "DAY         USER                      UP        DOWN   STREAMS   PEAK      TUNNEL",
        "2026-12-01  alice                 1.5 kB      2.5 MB         3      2     1:02:05",
        "2026-12-01  bob, jr                  1 B         2 B         1      1     0:00:01",
        "total       2 users               1.5 kB      2.5 MB         4      2     1:02:06"]
    assert rendered("csv").splitlines() == [
        "day,user,bytes_up,bytes_down,streams,peak_streams,tunnel_seconds",
        "2026-12-01,alice,1500,2500000,3,2,3725.5",
        '2026-12-01,"bob, jr",1,2,1,1,1.0']
    assert json.loads(rendered("json")) == ROWS
    assert rendered("table", []) == "no usage recorded in that period\n"
    assert json.loads(rendered("json", [])) == []


TODAY = datetime.date(2026, 12, 2)


def test_report_days():
    assert parse_day("2026-02-28", TODAY) == "2026-02-28"
    assert parse_day("today", TODAY) == "2026-12-02"
    assert parse_day("Yesterday", TODAY) == "2026-12-01"
    assert parse_day("7d", TODAY) == "2026-11-25"
    for bad in ("2026-02-30", "2026-2-3", "20261201", "-1d", "tomorrow", "", "2026-12-01x"):
        with pytest.raises(ValueError, match="is not a date"):
            parse_day(bad, TODAY)


@given(st.dates(min_value=datetime.date(1, 1, 1)))
def test_every_date_reads_back(day):
    assert parse_day(day.isoformat(), TODAY) == day.isoformat()


@given(st.text(max_size=20))
def test_any_text_is_a_day_or_a_value_error(text):
    try:
        day = parse_day(text, TODAY)
    except ValueError:
        return
    datetime.date.fromisoformat(day)


def test_afb_report_command(tmp_path, capsys):
    from afb.cli import main

    conf = tmp_path / "server.conf"
    conf.write_text("[server]\nstate_dir = state\n")
    assert main(["report", "-c", str(conf)]) == 0          # no state folder yet: no rows
    assert capsys.readouterr().out == "no usage recorded in that period\n"
    store = StateStore(str(tmp_path / "state" / "afb.sqlite3"))
    store.add_usage([dict(ROWS[0], day=day) for day in ("2026-11-30", "2026-12-01")]
                    + [ROWS[1]])
    store.close()
    assert main(["report", "-c", str(conf), "--since", "2026-12-01", "--user", "alice",
                 "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["2026-12-01,alice,1500,2500000,3,2,3725.5"]
    assert main(["report", "-c", str(conf), "--until", "2026-11-30", "--format", "json"]) == 0
    assert [r["day"] for r in json.loads(capsys.readouterr().out)] == ["2026-11-30"]
    assert main(["report", "-c", str(conf), "--since", "2026-12-02", "--until", "2026-12-01"]) == 1
    assert capsys.readouterr().err == ("afb report: --since 2026-12-02 is after --until "
                                       "2026-12-01\n")
    with pytest.raises(SystemExit) as info:
        main(["report", "-c", str(conf), "--since", "last week"])
    assert info.value.code == 2
    assert "argument --since: 'last week' is not a date" in capsys.readouterr().err
