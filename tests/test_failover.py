"""Several servers and several WebSockets per server (issue 14, parts 1 and 2): real
``afb server`` and ``afb client`` processes on loopback, curl through the client."""

import logging
import os
import signal
import statistics
import time

import gevent
import pytest

from tests.multi_server import HttpOk, Relay, Servers, active_server, curl_ok, until_ok
from tests.support import Daemon, recv_exact, socks_connect, wait_log, wait_port, wait_until

log = logging.getLogger(__name__)
#: Kills of the active server in the failover test (bench/failover does 20).
KILLS = 5


@pytest.fixture
def target():
    server = HttpOk()
    yield server
    server.close()


@pytest.fixture
def servers(setup):
    group = Servers(setup)
    yield group
    group.stop_all()


@pytest.fixture
def clients():
    started = []
    yield started
    for daemon in started:
        daemon.stop(signal.SIGKILL)


def _start_client(setup, conf, tmp_path, clients):
    client = Daemon("client", conf, str(tmp_path / ("client-%d.log" % len(clients))))
    clients.append(client)
    wait_port(setup.proxy_port)
    return client


def _active(setup, name, limit):
    return wait_until(lambda: (active_server(setup) or {}).get("name") == name, limit)


def test_kill_9_of_the_active_server_moves_new_streams_within_2_s_and_back(
        setup, servers, target, tmp_path, clients):
    for name in servers.names:
        servers.start(name, str(tmp_path))
    client = _start_client(setup, servers.client_conf(), tmp_path, clients)
    wait_log(client, "tunnel up to %s" % servers.url("a"))
    assert until_ok(setup.proxy_port, target.url) is not None
    assert _active(setup, "a", 10)
    gaps, returns = [], []
    for _round in range(KILLS):
        killed = time.monotonic()
        servers.kill("a")
        gap = until_ok(setup.proxy_port, target.url, limit=10)
        assert gap is not None, client.output()[-2000:]
        gaps.append(time.monotonic() - killed)
        assert (active_server(setup) or {}).get("name") == "b"
        servers.start("a", str(tmp_path))
        back = time.monotonic()
        assert _active(setup, "a", 15), client.output()[-2000:]   # up 3 s, then back
        returns.append(time.monotonic() - back)
        assert curl_ok(setup.proxy_port, target.url)
    log.warning("failover after kill -9: median %.3f s, max %.3f s; back to the first "
                "%.2f-%.2f s after it listened", statistics.median(gaps), max(gaps),
                min(returns), max(returns))
    assert max(gaps) < 2.0, gaps
    assert all(2.5 < r < 10 for r in returns), returns
    out = client.output()
    assert out.count("server a is down") == KILLS
    assert out.count("server a is up again: new streams go back to it") == KILLS
    assert "Traceback" not in out
    snapshot = active_server(setup)
    assert snapshot["switches"] == 2 * KILLS and snapshot["servers"] == 2


def test_without_return_to_preferred_it_stays_on_the_second(setup, servers, target, tmp_path,
                                                            clients):
    for name in servers.names:
        servers.start(name, str(tmp_path))
    conf = servers.client_conf(client="return_to_preferred = no\n")
    _start_client(setup, conf, tmp_path, clients)
    assert until_ok(setup.proxy_port, target.url) is not None and _active(setup, "a", 10)
    servers.kill("a")
    assert until_ok(setup.proxy_port, target.url, limit=5) < 2.0
    servers.start("a", str(tmp_path))
    gevent.sleep(4.5)                      # past RETURN_AFTER: it would have gone back
    assert active_server(setup)["name"] == "b"


def test_streams_opened_while_no_server_is_up_wait_for_the_first_that_comes(
        setup, servers, target, tmp_path, clients):
    servers.start("b", str(tmp_path))
    _start_client(setup, servers.client_conf(), tmp_path, clients)
    assert until_ok(setup.proxy_port, target.url) is not None    # a is not up: b serves
    assert active_server(setup)["name"] == "b"
    servers.kill("b")
    gevent.sleep(0.3)
    waiting = gevent.spawn(curl_ok, setup.proxy_port, target.url, 8.0)
    gevent.sleep(1.0)                      # the stream waits (open_timeout 5 s) ...
    servers.start("a", str(tmp_path))      # ... for the first server back
    assert waiting.get(timeout=10)


def test_lowest_rtt_picks_the_server_that_answers_faster(setup, servers, target, tmp_path,
                                                         clients):
    for name in servers.names:
        servers.start(name, str(tmp_path))
    slow = Relay(servers.ports["a"], delay=0.05)         # a: +100 ms round trip
    try:
        urls = {"a": servers.url("a", slow.port), "b": servers.url("b")}
        conf = servers.client_conf(urls, client="strategy = lowest-rtt\n")
        client = _start_client(setup, conf, tmp_path, clients)
        wait_log(client, "tunnel up to %s" % urls["a"])
        assert until_ok(setup.proxy_port, target.url) is not None
        assert _active(setup, "b", 5), active_server(setup)
        for _ in range(5):
            assert curl_ok(setup.proxy_port, target.url)
        assert active_server(setup)["name"] == "b" and active_server(setup)["switches"] <= 1
        assert "Traceback" not in client.output()
    finally:
        slow.close()


def test_a_pool_of_two_tunnels_loses_only_the_streams_of_the_one_that_dies(
        setup, echo, tmp_path, clients):
    servers = Servers(setup, names=("a",))
    servers.start("a", str(tmp_path))
    relay = Relay(servers.ports["a"])
    try:
        # Without resumption: with it, the cut tunnel's streams would go on on a new
        # WebSocket (tests/test_resume_process.py).
        conf = servers.client_conf({"a": servers.url("a", relay.port)},
                                   tunnel="tunnels = 2\nresume_grace = 0\n")
        client = _start_client(setup, conf, tmp_path, clients)
        assert wait_until(lambda: client.output().count("tunnel up to") == 2, 10)
        assert wait_until(lambda: len(relay.pairs) == 2, 5)
        proxy = ("127.0.0.1", setup.proxy_port)
        held = []
        for number in range(4):                  # least loaded: two on each tunnel
            sock = socks_connect(proxy, "127.0.0.1", echo.port, timeout=5)
            sock.sendall(b"%d" % number)
            assert recv_exact(sock, 1) == b"%d" % number
            held.append(sock)
        snap = _tunnels(setup)
        assert sorted(t["streams"] for t in snap) == [2, 2], snap
        relay.cut(0)                             # one WebSocket dies, its server lives
        alive, dead = 0, 0
        for number, sock in enumerate(held):
            try:
                sock.sendall(b"again%d" % number)
                assert recv_exact(sock, 6) == b"again%d" % number
                alive += 1
            except (OSError, EOFError):
                dead += 1
        assert (alive, dead) == (2, 2)
        sock = socks_connect(proxy, "127.0.0.1", echo.port, timeout=5)   # new ones still go
        sock.sendall(b"new")
        assert recv_exact(sock, 3) == b"new"
        for sock in held:
            sock.close()
        assert "Traceback" not in client.output()
    finally:
        servers.stop_all()
        relay.close()


def _tunnels(setup):
    from tests.support import ask

    return [t for t in ask(os.path.join(setup.dir, "client.sock"),
                           {"v": 1, "cmd": "snapshot"})["tunnels"] if t["state"] == "open"]


def test_sighup_adds_a_server_and_a_tunnel_then_drops_one(setup, servers, target, tmp_path,
                                                           clients):
    for name in servers.names:
        servers.start(name, str(tmp_path))
    conf = servers.client_conf({"a": servers.url("a")})
    client = _start_client(setup, conf, tmp_path, clients)
    assert until_ok(setup.proxy_port, target.url) is not None
    servers.client_conf(tunnel="tunnels = 2\n", path=conf)            # a and b, 2 each
    client.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: client.output().count("tunnel up to") == 4, 10), \
        client.output()[-2000:]
    assert "SIGHUP: [servers] b changed: opening a new tunnel" in client.output()
    assert active_server(setup)["servers"] == 2
    assert sorted(t["peer"] for t in _tunnels(setup)) == sorted([servers.url("a")] * 2
                                                                + [servers.url("b")] * 2)
    servers.kill("a")
    assert until_ok(setup.proxy_port, target.url, limit=5) < 2.0
    servers.client_conf({"b": servers.url("b")}, path=conf)           # a no longer listed
    client.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "server a is no longer listed" in client.output(), 10)
    assert wait_until(lambda: active_server(setup)["servers"] == 1, 5)
    assert curl_ok(setup.proxy_port, target.url)
    assert "Traceback" not in client.output()


def test_goaway_of_the_active_server_sends_new_streams_on_while_old_ones_finish(
        setup, servers, target, echo, tmp_path, clients):
    for name in servers.names:
        servers.start(name, str(tmp_path))
    _start_client(setup, servers.client_conf(), tmp_path, clients)
    assert until_ok(setup.proxy_port, target.url) is not None and _active(setup, "a", 10)
    held = socks_connect(("127.0.0.1", setup.proxy_port), "127.0.0.1", echo.port, timeout=5)
    held.sendall(b"old")
    assert recv_exact(held, 3) == b"old"
    servers.daemons["a"].proc.send_signal(signal.SIGTERM)     # GOAWAY, drains 5 s
    assert until_ok(setup.proxy_port, target.url, limit=5) < 2.0
    assert active_server(setup)["name"] == "b"
    held.sendall(b"still")                                    # finishes where it is
    assert recv_exact(held, 5) == b"still"
    held.close()
    assert servers.daemons["a"].proc.wait(10) == 0
