"""Issue 14, part 3: two `afb server` processes sharing one real redis-server.

Real parts only: redis-server (tests/redis_support.py, its own process on a
loopback port), `afb server` and `afb client` processes, `afb token revoke`
and `afb report` as commands, PySocks streams to an echo target.  No HAProxy:
each client names its server.
"""

import base64
import json
import os
import socket
import time

import pytest

from tests import redis_support
from tests.support import (
    Daemon,
    Setup,
    free_port,
    recv_exact,
    socks_connect,
    wait_log,
    wait_port,
    wait_until,
)
from tests.test_cli_tokens import afb

# A real redis-server (tests/redis_support.py), shared by the module's tests.
redis_server = redis_support.redis_server
clean_redis = redis_support.clean_redis
pytestmark = pytest.mark.timeout(120)


class Cluster:
    """Servers sharing ``redis``, one client per server, all of user "tester"."""

    def __init__(self, tmp_path, redis, nodes=2, server_keys="", tunnel_keys="", access_keys=""):
        self.setup = Setup(tmp_path, tls=False, ttl=3600)
        self.dir = self.setup.dir
        with open(self.setup.server_conf) as handle:
            base = handle.read()
        with open(self.setup.client_conf) as handle:
            client_base = handle.read()
        self.servers, self.clients, self.server_confs, self.proxies, self.ports = [], [], [], [], []
        for i in range(nodes):
            port, proxy = (self.setup.server_port, self.setup.proxy_port) if i == 0 else \
                (free_port(), free_port())
            text = base.replace("listen = 127.0.0.1:%d" % self.setup.server_port,
                                "listen = 127.0.0.1:%d" % port)
            text = text.replace("control_socket = server.sock", "control_socket = s%d.sock" % i)
            text = text.replace("state_dir = state", "state_dir = state%d" % i)
            text = text.replace("[server]\n", "[server]\nstate = %s\nreport_flush = 0.5\n%s"
                                % (redis.url, server_keys), 1)
            text = text.replace("[auth]\n", "[auth]\nrevocation_poll = 5\n", 1)
            text += "[tunnel]\n%s[access]\n%s" % (tunnel_keys, access_keys)
            conf = os.path.join(self.dir, "server%d.conf" % i)
            with open(conf, "w") as handle:
                handle.write(text)
            client = client_base.replace(":%d/tunnel" % self.setup.server_port,
                                         ":%d/tunnel" % port)
            client = client.replace("listen = 127.0.0.1:%d" % self.setup.proxy_port,
                                    "listen = 127.0.0.1:%d" % proxy)
            client = client.replace("control_socket = client.sock",
                                    "control_socket = c%d.sock" % i)
            client_conf = os.path.join(self.dir, "client%d.conf" % i)
            with open(client_conf, "w") as handle:
                handle.write(client)
            self.server_confs.append(conf)
            self.ports.append(port)
            self.proxies.append(("127.0.0.1", proxy))
            self.servers.append(Daemon("server", conf, os.path.join(self.dir, "server%d.log" % i)))
            wait_port(port)
            self.clients.append(Daemon("client", client_conf,
                                       os.path.join(self.dir, "client%d.log" % i)))
        for i, daemon in enumerate(self.clients):
            wait_port(self.proxies[i][1])
            wait_log(daemon, "tunnel up to")

    def stop(self):
        for daemon in self.clients + self.servers:
            daemon.stop()


@pytest.fixture
def cluster_of(tmp_path, clean_redis):
    made = []

    def make(**kwargs):
        made.append(Cluster(tmp_path, clean_redis, **kwargs))
        return made[-1]

    yield make
    for cluster in made:
        cluster.stop()


def echo_once(sock, data=b"ping"):
    sock.sendall(data)
    return recv_exact(sock, len(data))


def upgrade_status(port, token, timeout=10):
    """The HTTP status a WebSocket upgrade with ``token`` gets from the server on ``port``."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(("GET /tunnel HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                      "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n"
                      % (key, token)).encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1]) if head else None


def closed_within(sock, timeout):
    """Seconds until ``sock`` (a stream through a tunnel) was cut, or None."""
    started = time.monotonic()
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(4096):
                break
    except OSError:
        pass
    spent = time.monotonic() - started
    return spent if spent < timeout else None


def test_a_revocation_cuts_live_tunnels_on_both_nodes_within_a_second(cluster_of, echo):
    cluster = cluster_of()
    socks = [socks_connect(proxy, "127.0.0.1", echo.port) for proxy in cluster.proxies]
    assert [echo_once(s) for s in socks] == [b"ping", b"ping"]
    started = time.monotonic()
    result = afb("token", "revoke", "--sub", "tester", "-c", cluster.server_confs[1],
                 "--reason", "left")
    revoked = time.monotonic()
    assert result.returncode == 0, result.stderr
    assert "within a second" in result.stderr
    cut = [closed_within(s, 3) for s in socks]
    assert all(c is not None for c in cut), cut
    after = time.monotonic() - revoked
    print("both tunnels cut %.3f s after afb token revoke returned (%.3f s after it started)"
          % (after, time.monotonic() - started))
    assert after < 1.0, after      # the poll is 5 s here: the push did it
    for daemon in cluster.servers:
        assert wait_log(daemon, "user tester revoked (left); closing the tunnel")
    # the revoked token gets the decoy on both nodes
    assert [upgrade_status(port, cluster.setup.token) for port in cluster.ports] == [404, 404]


def test_the_per_user_stream_limit_holds_across_nodes(cluster_of, echo):
    cluster = cluster_of(tunnel_keys="max_streams_per_user = 4\n")
    first = [socks_connect(cluster.proxies[0], "127.0.0.1", echo.port) for _ in range(3)]
    assert all(echo_once(s) == b"ping" for s in first)
    second = socks_connect(cluster.proxies[1], "127.0.0.1", echo.port)
    assert echo_once(second) == b"ping"             # 4 of 4
    for proxy in cluster.proxies:       # (fast_open: the refusal is a reset of the stream)
        assert not _opens(proxy, echo.port)
    assert wait_log(cluster.servers[1], "too many streams on all servers (5, limit 4)")
    first.pop().close()                     # node 0 tells at its next heartbeat (1 s)
    assert wait_until(lambda: _opens(cluster.proxies[1], echo.port), 5)
    for s in first + [second]:
        s.close()


def _opens(proxy, port):
    """Whether a new stream through ``proxy`` works (a refusal: SOCKS error or reset)."""
    try:
        sock = socks_connect(proxy, "127.0.0.1", port, timeout=5)
    except Exception:  # noqa: BLE001 - PySocks' errors
        return False
    try:
        return echo_once(sock) == b"ping"
    except (OSError, EOFError):
        return False
    finally:
        sock.close()


def test_bans_are_shared(cluster_of):
    cluster = cluster_of(access_keys="max_auth_failures = 3\nban_time = 30\n")
    for _ in range(3):
        assert upgrade_status(cluster.ports[0], "not.a.token") == 404
    assert wait_log(cluster.servers[0], "banned for 30 s after 3 failures")
    # the good token from the same address is refused by the other node too
    assert upgrade_status(cluster.ports[1], cluster.setup.token) == 404
    assert wait_log(cluster.servers[1], "is banned for")


def test_usage_from_both_nodes_adds_up_in_afb_report(cluster_of, echo):
    cluster = cluster_of()
    sizes = (300000, 200000)
    for proxy, size in zip(cluster.proxies, sizes, strict=True):
        sock = socks_connect(proxy, "127.0.0.1", echo.port)
        assert echo_once(sock, b"x" * size) == b"x" * size
        sock.close()

    def totals():
        result = afb("report", "--format", "json", "-c", cluster.server_confs[0])
        assert result.returncode == 0, result.stderr
        rows = [r for r in json.loads(result.stdout) if r["user"] == "tester"]
        return sum(r["bytes_up"] for r in rows), sum(r["bytes_down"] for r in rows)

    assert wait_until(lambda: totals() == (sum(sizes), sum(sizes)), 10), totals()


@pytest.mark.parametrize("mode", ["fail-closed", "fail-open"])
def test_redis_stopped_mid_test(cluster_of, echo, clean_redis, mode):
    cluster = cluster_of(nodes=1, server_keys="state_unavailable = %s\n" % mode)
    port, token = cluster.ports[0], cluster.setup.token
    live = socks_connect(cluster.proxies[0], "127.0.0.1", echo.port)
    assert echo_once(live) == b"ping"
    clean_redis.stop()
    server = cluster.servers[0]
    assert wait_log(server, "unreachable")
    assert wait_log(server, "alert=state_store: the shared state store (Redis) is unreachable")
    assert echo_once(live, b"still") == b"still"               # the live tunnel works
    fresh = socks_connect(cluster.proxies[0], "127.0.0.1", echo.port)   # new streams too
    assert echo_once(fresh) == b"ping"
    expected = 503 if mode == "fail-closed" else 101
    assert [upgrade_status(port, token) for _ in range(3)] == [expected] * 3
    clean_redis.start()
    assert wait_log(server, "reachable again")
    assert upgrade_status(port, token) == 101
    assert echo_once(live, b"after") == b"after"
    log = server.output()
    assert log.count("unreachable:") == 1 and log.count("reachable again") == 1
    if mode == "fail-closed":
        assert log.count("refused with HTTP 503 ([server] state_unavailable") == 1
    # subscribed again: a revocation in the new Redis reaches the live tunnel
    assert afb("token", "revoke", "--sub", "tester", "-c", cluster.server_confs[0]).returncode == 0
    revoked = time.monotonic()
    assert closed_within(live, 3) is not None and time.monotonic() - revoked < 1.0
    fresh.close()
    live.close()


def test_a_redis_that_stops_answering_freezes_no_tunnel(cluster_of, echo, clean_redis):
    """SIGSTOP: connections to Redis hang; calls wait state_timeout in their greenlet only."""
    import gevent

    cluster = cluster_of(nodes=1, server_keys="state_timeout = 1\n")
    port, token, server = cluster.ports[0], cluster.setup.token, cluster.servers[0]
    live = socks_connect(cluster.proxies[0], "127.0.0.1", echo.port)
    assert echo_once(live) == b"ping"
    clean_redis.pause()
    try:
        upgrades = gevent.spawn(lambda: [upgrade_status(port, token) for _ in range(3)])
        worst, deadline = 0.0, time.monotonic() + 2.5
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert echo_once(live, b"tick") == b"tick"
            worst = max(worst, time.monotonic() - started)
            gevent.sleep(0.02)
        assert upgrades.get(timeout=10)[-1] == 503
        assert "unreachable: no answer within [server] state_timeout" in server.output()
        print("worst echo while Redis is stopped: %.3f s" % worst)
        assert worst < 0.3, worst       # a frozen hub would show the 1 s timeout here
    finally:
        clean_redis.resume()
    assert wait_log(server, "reachable again")
    assert upgrade_status(port, token) == 101
    live.close()


def test_a_server_started_while_redis_is_down_recovers_by_itself(tmp_path, clean_redis):
    """Redis does not answer at the server's start: 503, then, once it answers, the
    tunnel and the per-user limits that could not be read at start."""
    from afb.state_redis import RedisStore

    store = RedisStore(clean_redis.url)
    store.set_user_limits("tester", rate_down=1e6)
    store.close()
    setup = Setup(tmp_path, tls=False)
    with open(setup.server_conf) as handle:
        text = handle.read().replace("[server]\n", "[server]\nstate = %s\nstate_timeout = 0.3\n"
                                     % clean_redis.url, 1)
    with open(setup.server_conf, "w") as handle:
        handle.write(text)
    clean_redis.pause()
    server = Daemon("server", setup.server_conf, str(tmp_path / "server.log"))
    try:
        wait_port(setup.server_port)
        wait_log(server, "unreachable")
        assert upgrade_status(setup.server_port, setup.token) == 503
        clean_redis.resume()
        wait_log(server, "per-user limits read from the state store: 1 users")
        assert upgrade_status(setup.server_port, setup.token) == 101
    finally:
        clean_redis.resume()
        server.stop()
    assert server.output().count("unreachable:") == 1
