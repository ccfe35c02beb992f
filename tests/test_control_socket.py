"""The control socket of both daemons, in this process (issue 11, part 2).

A real server and client (InProcessTunnel), a real SOCKS5 client (PySocks)
moving bytes through them, and readers on both control sockets: every
command, the errors a reader can cause (the connection stays usable), a
subscriber that never reads (dropped, the tunnel unhurt) and fifty at once.
"""

import json
import logging
import os
import socket
import time

import gevent
import pytest

from afb.transport import control_server
from tests.support import EchoTarget, InProcessTunnel, Setup, socks_connect, wait_until


class Reader:
    """A line-at-a-time JSON reader of a control socket."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buf = b""

    def send(self, obj):
        self.sock.sendall(obj if isinstance(obj, bytes) else json.dumps(obj).encode() + b"\n")

    def read(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("control socket closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def read_type(self, kind, limit=50):
        for _ in range(limit):
            message = self.read()
            if message["type"] == kind:
                return message
        raise AssertionError("no %s message" % kind)

    def ask(self, obj):
        self.send(obj)
        return self.read()

    def close(self):
        self.sock.close()


@pytest.fixture
def tunnel(tmp_path, caplog):
    caplog.set_level(logging.INFO)      # as the daemons log (INFO records reach the ring)
    setup = Setup(tmp_path)
    echo = EchoTarget()
    with InProcessTunnel(setup) as pair:
        pair.echo = echo
        pair.server_sock = os.path.join(setup.dir, "server.sock")
        pair.client_sock = os.path.join(setup.dir, "client.sock")
        yield pair
    echo.close()


def echo_once(sock, data):
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        assert chunk, "echo closed"
        got += chunk
    return got


def test_both_snapshots_show_the_stream_with_its_bytes(tunnel):
    app = socks_connect(tunnel.proxy, "127.0.0.1", tunnel.echo.port)
    payload = os.urandom(100_000)
    assert echo_once(app, payload) == payload
    client, server = Reader(tunnel.client_sock), Reader(tunnel.server_sock)
    try:
        snap = client.ask({"v": 1, "cmd": "snapshot", "id": 1})
        assert (snap["type"], snap["role"], snap["id"]) == ("snapshot", "client", 1)
        assert snap["totals"]["streams"] == 1 and snap["tunnels"][0]["state"] == "open"
        assert snap["tunnels"][0]["user"] == "tester" and snap["tunnels"][0]["cipher"]
        assert snap["process"]["rss"] > 0 and snap["process"]["fds"] > 0
        # A PING leaves as the tunnel starts: its RTT is there long before ping_interval.
        assert wait_until(lambda: client.ask({"cmd": "snapshot"})["tunnels"][0]["rtt"], 5) < 1

        def row(reader):
            answer = reader.ask({"cmd": "streams", "filter": str(tunnel.echo.port)})
            assert answer["total"] == 1, answer
            return answer["streams"][0]
        # The client's counts settle when the echo's last byte was taken.
        wait_until(lambda: row(client)["bytes_down"] == len(payload), 5)
        mine = row(client)
        assert (mine["bytes_up"], mine["bytes_down"], mine["state"]) == (
            len(payload), len(payload), "open")
        assert mine["app"] == "127.0.0.1:%d" % app.getsockname()[1] and mine["user"] is None
        theirs = row(server)
        assert (theirs["bytes_up"], theirs["bytes_down"]) == (len(payload), len(payload))
        assert theirs["user"] == "tester"
        assert theirs["resolved"] == "127.0.0.1:%d" % tunnel.echo.port
        users = server.ask({"cmd": "snapshot"})["users"]
        assert [(u["user"], u["streams"], u["bytes_up"]) for u in users] == [
            ("tester", 1, len(payload))]

        # Closed by the operator: the app sees its end; the bytes stay in the totals.
        assert client.ask({"cmd": "close_stream", "stream": mine["id"]})["type"] == "ok"
        app.settimeout(5)
        with pytest.raises(OSError):
            while app.recv(65536):
                pass
            raise OSError("closed")
        wait_until(lambda: client.ask({"cmd": "snapshot"})["totals"]["streams"] == 0, 5)
        totals = client.ask({"cmd": "snapshot"})["totals"]
        assert totals["bytes_up"] == len(payload) and totals["streams_total"] == 1
        wait_until(lambda: server.ask({"cmd": "snapshot"})["totals"]["streams"] == 0, 5)
        assert server.ask({"cmd": "snapshot"})["totals"]["bytes_down"] == len(payload)
        gone = client.ask({"cmd": "close_stream", "stream": mine["id"]})
        assert (gone["type"], gone["error"]) == ("error", "not_found")
    finally:
        app.close()
        client.close()
        server.close()


def test_bad_requests_get_errors_and_the_connection_stays(tunnel):
    reader = Reader(tunnel.client_sock)
    try:
        for line, code in ((b"{nope\n", "bad_json"), (b'{"cmd": "fly"}\n', "unknown_command"),
                           (b"x" * 70_000 + b"\n", "too_long"),
                           (b'{"v": 9, "cmd": "snapshot"}\n', "unsupported_version"),
                           (b'{"cmd": "streams", "sort": "colour"}\n', "bad_request"),
                           (b'{"cmd": "disconnect_user", "user": "x"}\n', "bad_request")):
            answer = reader.ask(line)
            assert (answer["type"], answer["error"]) == ("error", code), answer
        assert reader.ask({"cmd": "snapshot"})["type"] == "snapshot"
    finally:
        reader.close()


def test_logs_disconnect_user_and_reload(tunnel):
    server = Reader(tunnel.server_sock)
    try:
        records = server.ask({"cmd": "logs", "limit": 500})["records"]
        assert any("tunnel open" in r["message"] for r in records)
        assert server.ask({"cmd": "logs", "level": "ERROR"})["records"] == []
        assert server.ask({"cmd": "disconnect_user", "user": "nobody"})["error"] == "not_found"
        answer = server.ask({"cmd": "disconnect_user", "user": "tester"})
        assert (answer["type"], answer["tunnels"]) == ("ok", 1)
        # The client dials again by itself.
        first = tunnel.client.tunnel.session
        wait_until(lambda: tunnel.client.tunnel.live_session() not in (None, first), 10)
        assert server.ask({"cmd": "reload"})["type"] == "ok"
        client = Reader(tunnel.client_sock)
        assert client.ask({"cmd": "snapshot"})["tunnels"][0]["reconnects"] == 1
        client.close()
    finally:
        server.close()


def test_subscribers_get_a_snapshot_a_second_and_log_records(tunnel):
    reader = Reader(tunnel.server_sock)
    try:
        reader.send({"cmd": "subscribe", "streams": True, "logs": 5})
        first = reader.read()
        assert first["type"] == "log" and 0 < len(first["records"]) <= 5
        assert reader.read_type("snapshot")["streams"] == []
        app = socks_connect(tunnel.proxy, "127.0.0.1", tunnel.echo.port)
        echo_once(app, b"x" * 1000)
        started = time.monotonic()
        snap = reader.read_type("snapshot")
        assert time.monotonic() - started < 2.5
        wait_until(lambda: reader.read_type("snapshot")["totals"]["streams"] == 1, 5)
        assert reader.ask({"cmd": "unsubscribe"})["type"] in ("ok", "snapshot", "log")
        app.close()
        assert snap["role"] == "server"
    finally:
        reader.close()


def test_a_subscriber_that_does_not_read_is_dropped_and_traffic_flows(tunnel, monkeypatch):
    monkeypatch.setattr(control_server, "MAX_QUEUED", 256 * 1024)
    apps = [socks_connect(tunnel.proxy, "127.0.0.1", tunnel.echo.port) for _ in range(200)]
    stuck = Reader(tunnel.server_sock)
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.send({"cmd": "subscribe", "streams": True})
    control = tunnel.server.monitoring.control
    worst = 0.0
    deadline = time.monotonic() + 30
    while len(control.connections) and time.monotonic() < deadline:
        started = time.monotonic()
        assert echo_once(apps[0], b"ping") == b"ping"
        worst = max(worst, time.monotonic() - started)
        gevent.sleep(0.05)
    assert not control.connections, "the stuck reader was not dropped"
    assert worst < 0.5, worst
    for app in apps:
        app.close()
    stuck.close()


def test_fifty_subscribers_and_the_tunnel_keeps_forwarding(tunnel):
    readers = [Reader(tunnel.client_sock) for _ in range(50)]
    app = socks_connect(tunnel.proxy, "127.0.0.1", tunnel.echo.port)
    try:
        for reader in readers:
            reader.send({"cmd": "subscribe", "streams": True})
        for reader in readers:
            assert reader.read_type("snapshot")["role"] == "client"
        worst, started = 0.0, time.monotonic()
        while time.monotonic() - started < 2.5:
            t0 = time.monotonic()
            assert echo_once(app, b"x" * 100) == b"x" * 100
            worst = max(worst, time.monotonic() - t0)
            gevent.sleep(0.01)
        for reader in readers:          # each got the ticks of those seconds
            assert reader.read_type("snapshot")["totals"]["streams"] == 1
        assert worst < 0.5, worst
    finally:
        app.close()
        for reader in readers:
            reader.close()


def test_a_live_socket_is_not_taken_over_and_a_stale_one_is(tmp_path):
    path = str(tmp_path / "x.sock")
    first = control_server.bind_unix(path)
    try:
        with pytest.raises(Exception, match="in use by another afb daemon"):
            control_server.bind_unix(path)
    finally:
        first.close()
    second = control_server.bind_unix(path)      # the file was left: replaced
    assert oct(os.stat(path).st_mode & 0o777) == "0o660"
    second.close()


def test_errors_are_counted_by_kind(tunnel):
    import ssl

    from tests.support import free_port

    client, server = Reader(tunnel.client_sock), Reader(tunnel.server_sock)
    try:
        before = (client.ask({"cmd": "snapshot"})["errors"],
                  server.ask({"cmd": "snapshot"})["errors"])
        closed_port = free_port()
        for port in (closed_port, tunnel.setup.server_port):   # refused; the server itself
            with pytest.raises(OSError):
                socks_connect(tunnel.proxy, "127.0.0.1", port).recv(1)
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with context.wrap_socket(socket.create_connection(
                ("127.0.0.1", tunnel.setup.server_port))) as probe:   # a visitor: the decoy
            probe.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert probe.recv(100).startswith(b"HTTP/1.1 200")

        def grew(reader, old):
            new = reader.ask({"cmd": "snapshot"})["errors"]
            return {kind: new[kind] - old[kind] for kind in new if new[kind] != old[kind]}
        # Both daemons run in this process and share its counters (a daemon has a
        # process of its own otherwise): each refusal counts on the server, which
        # refused, and on the client, which was told.  A refusal is no reset.
        wait_until(lambda: grew(server, before[1]).get("decoy_answers"), 5)
        expected = {"connect_refused": 2, "acl_refusals": 2, "decoy_answers": 1}
        assert grew(server, before[1]) == grew(client, before[0]) == expected
    finally:
        client.close()
        server.close()
