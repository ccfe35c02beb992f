"""A long-running client refreshes its token over the tunnel before it expires."""

import os
import time

import gevent

from afb.policy.client_token import token_times
from tests.support import InProcessTunnel, Setup, recv_exact, socks_connect, wait_until


def _echo_for(proxy, port, seconds):
    sock = socks_connect(proxy, "127.0.0.1", port)
    end = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < end:
        sock.sendall(b"tick")
        assert recv_exact(sock, 4) == b"tick"
        rounds += 1
        gevent.sleep(0.05)             # paced: the echo runs on while the token ages
    sock.close()
    return rounds


def test_token_expiring_during_the_test_is_refreshed_and_the_tunnel_stays_up(tmp_path, echo):
    setup = Setup(tmp_path, ttl=3, leeway=0)
    first = setup.token
    with InProcessTunnel(setup) as running:
        assert _echo_for(running.proxy, echo.port, 5.0) > 20      # well past the first expiry
        stored = open(os.path.join(setup.dir, "client.token")).read().strip()
        assert stored != first
        assert token_times(stored)[1] > token_times(first)[1]
        assert os.stat(os.path.join(setup.dir, "client.token")).st_mode & 0o777 == 0o600
        assert running.client.tunnel.connects == 1                # never dropped
        session = next(iter(running.server.sessions))
        assert session.claims["sub"] == "tester" and session.claims["exp"] > time.time()


def test_without_refresh_the_server_closes_the_tunnel_when_the_token_expires(tmp_path, echo):
    setup = Setup(tmp_path, ttl=2, leeway=0)
    os.remove(os.path.join(setup.dir, "jwt.key"))                 # the server cannot issue any
    with InProcessTunnel(setup) as running:
        session = next(iter(running.server.sessions))
        session.done.wait(6)
        assert session.close_reason == "token expired"
        tunnel = running.client.tunnel
        # the client's reconnect with the expired token is refused
        assert wait_until(lambda: "refused the tunnel (HTTP 404)" in tunnel.last_error, 10), \
            tunnel.last_error
