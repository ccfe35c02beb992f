"""A server restart leaves no gap (issue 10, item 5): real processes on loopback.

The new ``afb server`` listens on the same port (SO_REUSEPORT) before the old
one gets SIGTERM; the old one closes its listener at once and sends GOAWAY;
the client dials the new one at once while the old tunnel drains.  And a
client whose server dies comes back quickly, every time.
"""

import logging
import signal
import socket
import time

import gevent
import pytest

from afb.codec import frames
from afb.transport.listen_socket import reuse_port_listener
from tests.steady_load import SteadyLoad, replace_server, shipped_reconnect
from tests.support import (
    Daemon,
    InProcessTunnel,
    recv_exact,
    socks_connect,
    wait_log,
    wait_port,
    wait_until,
)


@pytest.fixture
def daemons():
    started = []
    yield started
    for daemon in started:
        daemon.stop(signal.SIGKILL)


def test_a_server_replaced_on_its_port_loses_no_connection_and_delays_none(
        setup, echo, tmp_path, daemons):
    shipped_reconnect(setup)
    server = Daemon("server", setup.server_conf, str(tmp_path / "server-0.log"))
    daemons.append(server)
    wait_port(setup.server_port)
    client = Daemon("client", setup.client_conf, str(tmp_path / "client.log"))
    daemons.append(client)
    wait_port(setup.proxy_port)
    wait_log(client, "tunnel up")
    load = SteadyLoad(("127.0.0.1", setup.proxy_port), echo.port).start()
    gevent.sleep(0.5)                                      # load before the first restart
    for number in (1, 2):
        server = replace_server(server, setup.server_conf,
                                str(tmp_path / ("server-%d.log" % number)), setup.server_port)
        daemons.append(server)
        gevent.sleep(1.0)                                  # load on the new server (and old drains)
    load.stop()
    count, lost, worst = load.summary()
    assert count > 50
    assert lost == [], lost[:3]
    assert worst < 1.0, worst
    out = client.output()
    assert out.count("tunnel up to") == 3 and "cannot open the tunnel" not in out
    assert "another process listens on port %d too" % setup.server_port in server.output()


def _echo_works(proxy, port):
    try:
        sock = socks_connect(proxy, "127.0.0.1", port, timeout=2)
        try:
            sock.sendall(b"up")
            return recv_exact(sock, 2) == b"up"
        finally:
            sock.close()
    except (OSError, EOFError):
        return False


def test_a_client_whose_server_dies_comes_back_quickly_every_time(setup, echo, tmp_path,
                                                                  daemons):
    """Backoff reset: the client (reconnect_min 0.05 s, reconnect_max 30 s)
    starts 2.5 s before its server, so its backoff grows to 3-6 s; each tunnel
    after that is up a few seconds (healthy), so each crash of the server
    starts from reconnect_min again (before: only a tunnel up 10 s reset it,
    and the gaps were 2.8 to 22 s)."""
    shipped_reconnect(setup)
    with open(setup.client_conf, "a") as handle:           # [tunnel] is the last section
        handle.write("reconnect_min = 0.05\n")
    proxy = ("127.0.0.1", setup.proxy_port)
    client = Daemon("client", setup.client_conf, str(tmp_path / "client.log"))
    daemons.append(client)
    wait_port(setup.proxy_port)
    gevent.sleep(2.5)                                      # no server yet: the backoff grows
    gaps = []
    for number in range(3):
        server = Daemon("server", setup.server_conf, str(tmp_path / ("server-%d.log" % number)))
        daemons.append(server)
        wait_log(server, "listening on")
        listening = time.monotonic()
        assert wait_until(lambda: _echo_works(proxy, echo.port), 40), "no echo after 40 s"
        gaps.append(time.monotonic() - listening)
        if number < 2:
            gevent.sleep(3.2)                              # up a few seconds: a healthy tunnel
            server.stop(signal.SIGKILL)                    # no GOAWAY: a crash
    assert max(gaps[1:]) < 1.0, gaps


def test_streams_opened_while_goaway_is_on_the_wire_are_served(setup, echo, caplog):
    """An OPEN that crossed the server's GOAWAY is served, not refused: on a
    link with a 100 ms round trip that is every stream of the last 100 ms."""
    caplog.set_level(logging.INFO)
    with InProcessTunnel(setup) as tunnel:
        client_session = tunnel.client.tunnel.session
        server_session = next(iter(tunnel.server.sessions))
        server_session.goaway("server is restarting")     # queued, not yet read
        stream = client_session.open_stream(frames.CMD_CONNECT, "127.0.0.1", echo.port, b"x")
        stream.wait_open(5)                                # before: "server is shutting down"
        # the client read the GOAWAY: a new tunnel at once, the old one drains
        new = tunnel.client.tunnel.get_session(2)
        assert new is not client_session and client_session.draining
        assert not client_session.closed and tunnel.client.tunnel.connects == 2
        sock = socks_connect(tunnel.proxy, "127.0.0.1", echo.port)
        sock.sendall(b"new")
        assert recv_exact(sock, 3) == b"new"
        sock.close()
        assert len(new.streams) + len(client_session.streams) >= 1


def test_reuse_port_shares_a_port_and_says_so(caplog):
    caplog.set_level(logging.WARNING, logger="afb.transport.listen_socket")
    first = reuse_port_listener(("127.0.0.1", 0), 16, socket.AF_INET)
    port = first.getsockname()[1]
    try:
        first.close()
        first = reuse_port_listener(("127.0.0.1", port), 16, socket.AF_INET)
        assert not caplog.records
        second = reuse_port_listener(("127.0.0.1", port), 16, socket.AF_INET)
        second.close()
        assert [r.getMessage() for r in caplog.records] == [
            "another process listens on port %d too (SO_REUSEPORT): new connections are "
            "shared with it until it stops; right while an old afb server drains after a "
            "restart, a mistake otherwise" % port]
        plain = socket.socket()
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError):            # without SO_REUSEPORT: address in use
            plain.bind(("127.0.0.1", port))
        plain.close()
    finally:
        first.close()


def test_a_port_held_without_reuse_port_still_fails_to_bind(caplog):
    caplog.set_level(logging.WARNING, logger="afb.transport.listen_socket")
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    try:
        with pytest.raises(OSError) as info:
            reuse_port_listener(other.getsockname(), 16, socket.AF_INET)
        assert "127.0.0.1" in str(info.value) and not caplog.records
    finally:
        other.close()
