"""Finding the daemon's control socket (tui/discovery.py) and the client's messages."""

import asyncio
import socket

from tests.tui_fake import FakeDaemon, stream
from tui import discovery
from tui.control_client import ControlClient, ControlError, absent
from tui.lines import BadLine, LineDecoder


def listening(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(4)
    return sock


def stale(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))          # bound, never listening: a dead daemon's file
    sock.close()


def test_named_socket_wins_even_when_nothing_listens(tmp_path):
    assert discovery.find_socket("/x/y.sock", {"AFB_CONTROL_SOCKET": "/a.sock"}) == (
        "/x/y.sock", True)
    assert discovery.find_socket(None, {"AFB_CONTROL_SOCKET": "/a.sock"}) == ("/a.sock", True)


def test_search_order_and_client_before_server(tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "run"), "HOME": str(tmp_path / "home")}
    dirs = discovery.search_dirs(env, cwd=str(tmp_path))
    assert dirs == ["/run/afb", str(tmp_path / "run" / "afb"),
                    str(tmp_path / "home" / ".local" / "state" / "afb"), "/var/lib/afb",
                    str(tmp_path / "demo"),
                    str(tmp_path / "home" / ".local" / "share" / "afb" / "demo")]
    demo = tmp_path / "demo"
    demo.mkdir()
    socks = [listening(demo / name) for name in ("aaa.sock", "server.sock", "client.sock")]
    try:
        assert [p.rsplit("/", 1)[1] for p in discovery.candidates(str(demo))] == [
            "client.sock", "server.sock", "aaa.sock"]
        probe = lambda path: (not path.startswith(("/run/afb/", "/var/lib/afb/"))  # noqa: E731
                              and discovery.accepts(path))
        assert discovery.discover(env, str(tmp_path), probe=probe) == str(demo / "client.sock")
    finally:
        for sock in socks:
            sock.close()


def test_a_stale_socket_file_is_passed_over(tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    stale(demo / "client.sock")
    live = listening(demo / "server.sock")
    try:
        assert not discovery.accepts(str(demo / "client.sock"))
        found = discovery.discover({}, str(tmp_path),
                                   probe=lambda p: p.startswith(str(tmp_path))
                                   and discovery.accepts(p))
        assert found == str(demo / "server.sock")
    finally:
        live.close()


def test_nothing_found_names_the_default_socket():
    assert absent(None) == ("no afb daemon at /run/afb/client.sock: is it running? start it "
                            "or pass --connect")


def _client_against(tmp_path, scenario, **fake_kwargs):
    messages, statuses = [], []

    async def main():
        fake = await FakeDaemon(tmp_path / "c.sock", [stream(1)], **fake_kwargs).start()
        client = ControlClient(messages.append, lambda ok, text: statuses.append((ok, text)),
                               connect=str(tmp_path / "c.sock"), environ={},
                               backoff=(0.05, 0.1))
        task = asyncio.ensure_future(client.run())
        try:
            for _ in range(200):
                if client.connected:
                    break
                await asyncio.sleep(0.01)
            await scenario(client, fake, messages)
        finally:
            task.cancel()
            await fake.stop()
    asyncio.run(main())
    return messages, statuses


def test_requests_get_their_answers_and_errors_become_one_line(tmp_path):
    async def scenario(client, fake, messages):
        assert (await client.request({"cmd": "close_stream", "stream": "1/1"}))["type"] == "ok"
        try:
            await client.request({"cmd": "close_stream", "stream": "9/9"})
        except ControlError as exc:
            assert str(exc) == "not_found: no stream 9/9"
        else:
            raise AssertionError("no error")
    _messages, statuses = _client_against(tmp_path, scenario)
    assert statuses[0][0] is True


def test_an_over_long_line_from_the_daemon_is_reported_and_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr("tui.control_client.LineDecoder", lambda: LineDecoder(4096))

    async def scenario(client, fake, messages):
        fake.send_raw(b'{"v": 1, "pad": "' + b"x" * 10000 + b'"}\n')
        for _ in range(200):
            seen = [isinstance(m, BadLine) for m in messages]
            if True in seen and seen[-1] is False:      # a snapshot after the bad line
                break
            await asyncio.sleep(0.01)
    messages, _statuses = _client_against(tmp_path, scenario, interval=0.05)
    bad = [m for m in messages if isinstance(m, BadLine)]
    assert len(bad) == 1 and "longer than 4096 bytes" in bad[0].reason
    assert isinstance(messages[-1], dict) and messages[-1]["type"] == "snapshot"


def test_another_protocol_version_is_a_bad_line(tmp_path):
    async def scenario(client, fake, messages):
        fake.send_raw(b'{"v": 2, "type": "snapshot"}\n')
        for _ in range(200):
            if any(isinstance(m, BadLine) for m in messages):
                break
            await asyncio.sleep(0.01)
    messages, _statuses = _client_against(tmp_path, scenario)
    assert [m.reason for m in messages if isinstance(m, BadLine)] == [
        "the daemon speaks control protocol version 2; this afb tui speaks version 1"]
