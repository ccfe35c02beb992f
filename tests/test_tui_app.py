"""The dashboard against a fake control socket: Pilot tests (app.run_test())."""

import time

from tests.tui_fake import DEVICES, FakeDaemon, stream
from tests.tui_pilot import column, dashboard, run, table, until
from tui.app import Dashboard
from tui.screens import ConfirmScreen
from tui.widgets.devices import DevicesTable
from tui.widgets.status import StatusLine
from tui.widgets.users import UsersTable


def three():
    return [stream(1, host="example.com", up=517, down=48213),
            stream(2, host="debian.org", up=5_000_000, down=1200),
            stream(3, host="python.org", up=90, down=3_000_000_000, state="half-closed")]


def test_the_table_shows_each_stream_with_human_figures(tmp_path):
    async def scenario():
        async with dashboard(tmp_path, three()) as (app, pilot, fake):
            assert table(app).row_count == 3
            assert sorted(column(app, "dest")) == ["debian.org:443", "example.com:443",
                                                   "python.org:443"]
            t = table(app)
            row = t.get_row("1/3")
            assert [str(c).strip() for c in row[2:]] == ["127.0.0.1:40003", "half-closed", "10s",
                                                 "90 B", "3.0 GB", "30 B/s",
                                                 "3.0 kB/s"]
            assert fake.commands[0]["cmd"] == "subscribe" and fake.commands[0]["streams"]
            header = str(app.query_one("#header").render())
            assert "afb client" in header and "wss://vpn.example/secret/" in header
            assert "RTT 21.3 ms" in header and "uptime 2h03m" in header
    run(scenario())


def test_cells_change_in_place_and_rows_come_and_go(tmp_path):
    async def scenario():
        async with dashboard(tmp_path, three()) as (app, pilot, fake):
            t = table(app)
            t.move_cursor(row=t.get_row_index("1/2"))
            fake.streams[1] = stream(2, host="debian.org", up=6_000_000, down=1200)
            fake.streams.append(stream(4, host="new.example"))
            del fake.streams[0]
            await until(pilot, lambda: "new.example:443" in column(app, "dest"), what="row 4")
            assert t.row_count == 3 and "example.com:443" not in column(app, "dest")
            assert str(t.get_row("1/2")[5]).strip() == "6.0 MB"
            assert t.selected_id() == "1/2"            # the cursor stayed on its stream
    run(scenario())


def test_sort_cycles_columns_on_raw_values_and_reverses(tmp_path):
    async def scenario():
        async with dashboard(tmp_path, three()) as (app, pilot, fake):
            t = table(app)
            while t.sort_column != "down":
                await pilot.press("s")
            await pilot.pause()
            assert column(app, "down") == ["1.2 kB", "48.2 kB", "3.0 GB"]
            await pilot.press("S")
            await pilot.pause()
            assert column(app, "down") == ["3.0 GB", "48.2 kB", "1.2 kB"]
            assert "down ↓" in str(app.query_one("#table-title").render())
    run(scenario())


def test_filter_narrows_the_table_and_escape_clears_it(tmp_path):
    async def scenario():
        async with dashboard(tmp_path, three()) as (app, pilot, fake):
            await pilot.press("slash")
            await pilot.press(*"org")
            await pilot.pause()
            assert sorted(column(app, "dest")) == ["debian.org:443", "python.org:443"]
            await pilot.press("enter")
            await pilot.pause(0.3)              # new snapshots keep the filter
            assert table(app).row_count == 2
            await pilot.press("escape", "slash", *"HALF")
            await pilot.pause()
            assert column(app, "state") == ["half-closed"]      # case-insensitive
            await pilot.press("escape")
            await pilot.pause()
            assert table(app).row_count == 3
    run(scenario())


def test_close_asks_first_and_sends_close_stream_with_the_selected_id(tmp_path):
    async def scenario():
        async with dashboard(tmp_path, three()) as (app, pilot, fake):
            t = table(app)
            t.move_cursor(row=t.get_row_index("1/2"))
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
            await pilot.press("n")              # no: nothing sent
            await pilot.pause(0.2)
            assert not [c for c in fake.commands if c["cmd"] == "close_stream"]
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
            await pilot.press("y")
            await until(pilot, lambda: [c for c in fake.commands if c["cmd"] == "close_stream"],
                        what="close_stream")
            sent = [c for c in fake.commands if c["cmd"] == "close_stream"]
            assert sent[0]["stream"] == "1/2" and sent[0]["v"] == 1 and "id" in sent[0]
            await until(pilot, lambda: "debian.org:443" not in column(app, "dest"),
                        what="the closed row to go")
    run(scenario())


def test_pause_freezes_the_table_and_resume_catches_up(tmp_path):
    async def scenario():
        async with dashboard(tmp_path, three()) as (app, pilot, fake):
            await pilot.press("p")
            before = column(app, "up")
            sent = fake.snapshots_sent
            fake.streams[0] = stream(1, host="example.com", up=999_999, down=1)
            fake.streams.append(stream(9, host="late.example"))
            await until(pilot, lambda: fake.snapshots_sent >= sent + 3, what="3 snapshots")
            assert column(app, "up") == before and table(app).row_count == 3
            assert "PAUSED" in str(app.query_one("#header").render())
            await pilot.press("p")
            await pilot.pause()
            assert table(app).row_count == 4 and "1.0 MB" in column(app, "up")
    run(scenario())


def test_daemon_lost_and_back(tmp_path):
    async def scenario():
        async with dashboard(tmp_path, three()) as (app, pilot, fake):
            status = app.query_one(StatusLine)
            assert not status.display
            await fake.stop()
            await until(pilot, lambda: status.display and "no afb daemon at %s" % fake.path
                        in str(status.render()), what="the daemon-lost line")
            assert "is it running? start it or pass --connect" in str(status.render())
            assert table(app).row_count == 3    # the last figures stay
            fake.streams.append(stream(5, host="again.example"))
            await fake.start()
            await until(pilot, lambda: not status.display and table(app).row_count == 4,
                        what="reconnection")
            assert [c["cmd"] for c in fake.commands].count("subscribe") == 2
    run(scenario())


def test_no_daemon_at_start_says_so_then_finds_it(tmp_path):
    async def scenario():
        async with dashboard(tmp_path, three(), start=False) as (app, pilot, fake):
            status = app.query_one(StatusLine)
            await until(pilot, lambda: status.display, what="the no-daemon line")
            assert str(status.render()) == ("no afb daemon at %s: is it running? start it or "
                                            "pass --connect" % fake.path)
            await fake.start()
            await until(pilot, lambda: table(app).row_count == 3, what="the table")
    run(scenario())


def test_discovery_finds_the_demo_socket_without_arguments(tmp_path):
    async def scenario():
        (tmp_path / "demo").mkdir()
        fake = await FakeDaemon(tmp_path / "demo" / "client.sock", three()).start()
        import os
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            app = Dashboard(environ={}, backoff=(0.05, 0.2))
            async with app.run_test(size=(100, 30)) as pilot:
                await until(pilot, lambda: table(app).row_count == 3, what="the demo's table")
                assert app.client.path == str(tmp_path / "demo" / "client.sock")
        finally:
            os.chdir(cwd)
            await fake.stop()
    run(scenario())


def test_bad_json_from_the_daemon_is_shown_not_a_crash(tmp_path):
    async def scenario():
        async with dashboard(tmp_path, three()) as (app, pilot, fake):
            fake.send_raw(b"{this is not json\n")
            status = app.query_one(StatusLine)
            await until(pilot, lambda: status.display, what="the bad-line message")
            assert "not JSON" in str(status.render())
            fake.streams.append(stream(6, host="after.example"))
            await until(pilot, lambda: table(app).row_count == 4, what="the next snapshot")
            assert app.is_running
    run(scenario())


def test_users_view_on_the_server_and_logs_with_a_level_filter(tmp_path):
    async def scenario():
        async with dashboard(tmp_path, three(), role="server") as (app, pilot, fake):
            await pilot.press("u")
            await pilot.pause()
            users = app.query_one(UsersTable)
            assert users.row_count == 2 and str(users.get_row("bob")[5]) == "988 MB"
            await pilot.press("l")
            await pilot.pause()
            logs = app.query_one("#logs")
            assert app.query_one("#views").current == "logs"
            assert len(logs.records) == 3 and "2 of 3" in str(
                app.query_one("#log-title").render())
            await pilot.press("v")             # WARNING and above
            await pilot.pause()
            assert "1 of 3" in str(app.query_one("#log-title").render())
            await pilot.press("question_mark")
            await pilot.pause()
            assert app.screen.__class__.__name__ == "HelpScreen"
            await pilot.press("escape")
    run(scenario())


def test_devices_view_on_the_client_updates_in_place(tmp_path):
    async def scenario():
        devices = [dict(d) for d in DEVICES]
        async with dashboard(tmp_path, three(), devices=devices) as (app, pilot, fake):
            await pilot.press("u")
            await pilot.pause()
            table_ = app.query_one(DevicesTable)
            assert table_.display and not app.query_one(UsersTable).display
            assert app.focused is table_ and table_.row_count == 2
            row = [str(c).strip() for c in table_.get_row("192.168.1.20")]
            assert row == ["192.168.1.20", "2", "5", "1 (14)", "2.5 MB", "812 MB", "12.0 kB/s",
                           "1.9 MB/s", "500 kB/s", "2.0 MB/s", "42s", "0 B", "0"]
            assert [str(c).strip() for c in table_.get_row("kid-tablet")][1:4] == [
                "0.5", "0", "0 (0)"]
            assert "LAN devices: 2" in str(app.query_one("#users-title").render())
            fake.devices[0] = dict(devices[0], priority_streams=0, throttled_down=0.0)
            del fake.devices[1]
            await until(pilot, lambda: table_.row_count == 1, what="the next snapshot")
            row = [str(c).strip() for c in table_.get_row("192.168.1.20")]
            assert row[3] == "0 (14)" and row[10] == "-"
    run(scenario())


def test_a_client_without_qos_rules_says_so_in_the_devices_view(tmp_path):
    async def scenario():
        async with dashboard(tmp_path, three()) as (app, pilot, fake):
            await pilot.press("u")
            await pilot.pause()
            assert app.query_one(DevicesTable).row_count == 0
            assert "no QoS rules" in str(app.query_one("#users-title").render())
    run(scenario())


def test_two_thousand_rows_update_in_place(tmp_path):
    async def scenario():
        streams = [stream(n) for n in range(1, 2001)]
        async with dashboard(tmp_path, streams, size=(140, 50), interval=0.3) as (app, pilot,
                                                                                   fake):
            t = table(app)
            await until(pilot, lambda: t.row_count == 2000, what="2000 rows")
            t.move_cursor(row=t.get_row_index("1/1500"))
            fake.streams = [stream(n, up=n * 7, age=11.0) for n in range(21, 2021)]
            started = time.monotonic()
            await until(pilot, lambda: "1/2020" in t.rows and "1/5" not in t.rows,
                        what="the churned rows")
            await pilot.pause()
            assert time.monotonic() - started < 5
            assert t.row_count == 2000 and t.selected_id() == "1/1500"
            assert str(t.get_row("1/1500")[5]).strip() == "10.5 kB"
    run(scenario())
