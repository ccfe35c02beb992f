"""Limits: streams per user, idle streams, local handshake time; each refusal is clear."""

import time

import gevent

from tests.support import (
    InProcessTunnel,
    Setup,
    recv_exact,
    socks_connect,
    socks_open,
    wait_until,
)


def test_streams_per_user_are_limited_and_the_excess_gets_a_socks_failure(tmp_path, echo):
    setup = Setup(tmp_path, fast_open=False,
                  server_extra="[tunnel]\nmax_streams_per_user = 2\n")
    with InProcessTunnel(setup) as running:
        first, code1 = socks_open(running.proxy, echo.port)
        second, code2 = socks_open(running.proxy, echo.port)
        third, code3 = socks_open(running.proxy, echo.port)
        assert (code1, code2, code3) == (0, 0, 1)
        first.sendall(b"ok")
        assert recv_exact(first, 2) == b"ok"          # the admitted streams are untouched
        for sock in (first, second, third):
            sock.close()
        user = running.server.users.get("tester")
        assert wait_until(lambda: user.streams == 0, 5), user.streams    # the server let go
        fourth, code4 = socks_open(running.proxy, echo.port)  # room again
        assert code4 == 0
        fourth.close()


def test_idle_streams_are_closed_and_busy_ones_are_not(tmp_path, echo):
    setup = Setup(tmp_path, server_extra="[tunnel]\nidle_timeout = 0.6\n")
    with InProcessTunnel(setup) as running:
        idle = socks_connect(running.proxy, "127.0.0.1", echo.port)
        busy = socks_connect(running.proxy, "127.0.0.1", echo.port)
        idle.sendall(b"x")
        assert recv_exact(idle, 1) == b"x"
        started = time.monotonic()
        while time.monotonic() - started < 2.0:
            busy.sendall(b"y")
            assert recv_exact(busy, 1) == b"y"
            gevent.sleep(0.1)                   # a byte every 0.1 s: never idle 0.6 s
        try:
            assert idle.recv(1) == b""
        except ConnectionResetError:
            pass
        busy.close()
        idle.close()
