"""Integrity under load and flow control isolation."""

import hashlib
import os
import random
import time

import gevent
import pytest

from tests.support import (
    Daemon,
    HashTarget,
    recv_exact,
    send_pattern,
    socks_connect,
    wait_port,
    wait_until,
)

PATTERN = os.urandom(8 * 1024 * 1024)


@pytest.fixture
def daemons(setup, tmp_path):
    """Real `afb server` and `afb client` processes over wss:// with the pin."""
    server = Daemon("server", setup.server_conf, str(tmp_path / "server.log"))
    client = Daemon("client", setup.client_conf, str(tmp_path / "client.log"))
    try:
        wait_port(setup.server_port)
        wait_port(setup.proxy_port)
        yield server, client
    finally:
        client.stop()
        server.stop()


def _one_stream(proxy, target, ident, up_len, down_len):
    sock = socks_connect(proxy, "127.0.0.1", target.port, timeout=120)
    try:
        sock.sendall(HashTarget.HEAD.pack(ident, up_len, down_len))
        sender = gevent.spawn(send_pattern, sock, PATTERN, up_len, ident)
        got = hashlib.sha256()
        left = down_len
        while left:
            data = sock.recv(min(left, 262144))
            assert data, "EOF with %d bytes missing" % left
            got.update(data)
            left -= len(data)
        up_hash = sender.get()
        assert sock.recv(1) == b""
        return ident, up_hash, got.hexdigest()
    finally:
        sock.close()


def test_200_concurrent_streams_up_to_4mib_each_way_arrive_intact(setup, daemons):
    target = HashTarget(PATTERN)
    rng = random.Random(1928)
    proxy = ("127.0.0.1", setup.proxy_port)
    try:
        jobs = [gevent.spawn(_one_stream, proxy, target, os.urandom(16),
                             rng.randint(0, 4 << 20), rng.randint(0, 4 << 20)) for _ in range(200)]
        gevent.joinall(jobs, timeout=240, raise_error=True)
        assert all(job.successful() for job in jobs), \
            [job.exception for job in jobs if job.exception]
        for job in jobs:
            ident, up_hash, down_hash = job.value
            server_up, server_down = target.results[ident]
            assert server_up == up_hash      # what the app sent is what the target got
            assert server_down == down_hash  # what the target sent is what the app got
    finally:
        target.close()


def _stalled(session, port):
    """A predicate: ``session``'s stream to ``port`` is out of credit and sent
    nothing since the predicate's last call."""
    last = [None]

    def stalled():
        streams = [s for s in session.streams.values() if s.port == port]
        if not streams:
            return False
        sent, last[0] = last[0], streams[0].bytes_out
        return streams[0].credit.available == 0 and sent == streams[0].bytes_out

    return stalled


def test_a_stalled_reader_costs_one_window_and_does_not_stall_other_streams(tunnel, echo):
    target = HashTarget(PATTERN)
    try:
        stalled = socks_connect(tunnel.proxy, "127.0.0.1", target.port)
        stalled.sendall(HashTarget.HEAD.pack(b"s" * 16, 0, 256 << 20))   # 256 MiB, never read
        server_session = next(iter(tunnel.server.sessions))
        client_session = tunnel.client.tunnel.session
        assert wait_until(_stalled(server_session, target.port), 30, 0.2), \
            "the server kept sending to the stalled stream"
        (server_stream,) = [s for s in server_session.streams.values() if s.port == target.port]
        client_stream = client_session.streams[server_stream.id]
        # Other streams on the same tunnel still flow, quickly.
        for _ in range(20):
            sock = socks_connect(tunnel.proxy, "127.0.0.1", echo.port)
            started = time.monotonic()
            sock.sendall(b"x" * 100)
            assert recv_exact(sock, 100) == b"x" * 100
            assert time.monotonic() - started < 1.0
            sock.close()
        # The server holds at most the client's window for the stalled stream.
        held = server_session.writer.sched.queued(server_stream.id)
        assert held <= client_stream.window.size <= client_stream.window.maximum
        assert client_stream.buffered <= client_stream.window.size
        assert server_stream.credit.available >= 0
        sent_before = server_stream.bytes_out
        gevent.sleep(0.5)                               # time to send more, if it (wrongly) did
        assert server_stream.bytes_out == sent_before   # the server stopped reading the target
        stalled.close()
    finally:
        target.close()
