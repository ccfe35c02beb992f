"""Three ``afb server`` nodes behind HAProxy sharing one Redis (issue 14, the tests it names).

All real: a redis-server of the test's own (tests/redis_support.py, a loopback
port), three ``afb server`` nodes with ``[server] state = redis://...`` behind
a real haproxy in TLS passthrough with leastconn (tests/cluster.py), and three
``afb client`` processes of the same user, started one after the other so
that HAProxy deals their tunnels one per node (each test checks the spread
with the nodes' ``afb_tunnels_open``).  Streams are PySocks or curl through
the clients' SOCKS ports; ``afb token revoke``, ``afb user limit`` and ``afb
report`` run as commands with one node's config.
"""

import json
import re
import subprocess
import time

import gevent
import pytest

from tests import redis_support
from tests.cluster import Cluster, haproxy_available
from tests.qos_support import HttpTarget
from tests.support import recv_exact, socks_connect, socks_open, wait_log, wait_until
from tests.test_cli_tokens import afb

pytestmark = [pytest.mark.timeout(150),
              pytest.mark.skipif(not haproxy_available(),
                                 reason="haproxy is not installed (make installs it)")]

# A real redis-server (tests/redis_support.py), shared by the module's tests.
redis_server = redis_support.redis_server
clean_redis = redis_support.clean_redis

MIB = 1024 * 1024


@pytest.fixture
def cluster_of(tmp_path, clean_redis):
    """make(**Cluster kwargs, limit=None) -> 3 nodes on ``clean_redis``, a client's
    tunnel on each; ``limit``: ``afb user limit tester --down LIMIT`` before the start."""
    made = []

    def make(limit=None, **kwargs):
        kwargs.setdefault("shipped_backoff", False)
        cluster = Cluster(tmp_path, nodes=3, state=clean_redis.url, **kwargs)
        made.append(cluster)
        if limit:       # the nodes read the per-user limits from the store at their start
            done = afb("user", "limit", "tester", "--down", str(limit), "-c",
                       cluster.nodes[0].conf)
            assert done.returncode == 0, done.stderr
        cluster.start(client=False)
        cluster.start_clients(3)
        assert cluster.spread() == {"n1": 1, "n2": 1, "n3": 1}
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def echo_once(sock, data=b"ping"):
    sock.sendall(data)
    return recv_exact(sock, len(data))


def closed_within(sock, timeout):
    """Seconds until ``sock`` (a stream through a tunnel) was cut, or None."""
    started = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass
    spent = time.monotonic() - started
    return spent if spent < timeout else None


def curl(proxy, url, *extra, timeout=40):
    """curl through a client's SOCKS port -> (exit code, bytes downloaded, seconds)."""
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "--socks5-hostname", "%s:%d" % proxy,
         "-w", "%{size_download} %{time_total}", *extra, url],
        capture_output=True, text=True, timeout=timeout)
    size, seconds = out.stdout.split()
    return out.returncode, int(size), float(seconds)


def metric(node, name, **labels):
    """One sample of a node's /metrics (0 if absent)."""
    _status, text = node.get("/metrics")
    label = ",".join('%s="%s"' % item for item in sorted(labels.items()))
    pattern = r"(?m)^%s%s (\S+)$" % (re.escape(name), re.escape("{%s}" % label) if label else "")
    found = re.search(pattern, text or "")
    return float(found.group(1)) if found else 0.0


def test_a_token_revoked_through_one_node_cuts_the_tunnels_on_every_node_within_a_second(
        cluster_of, echo):
    # The nodes' own poll is 5 s: only the pub/sub push can make it within 1 s.
    cluster = cluster_of(server_keys={"auth": "revocation_poll = 5\n"})
    socks = [socks_connect(proxy, "127.0.0.1", echo.port) for proxy in cluster.proxies]
    assert [echo_once(s) for s in socks] == [b"ping"] * 3
    started = time.monotonic()
    result = afb("token", "revoke", "--sub", "tester", "-c", cluster.nodes[1].conf,
                 "--reason", "left")
    returned = time.monotonic()
    assert result.returncode == 0, result.stderr
    cut = [closed_within(s, 3) for s in socks]
    after = time.monotonic() - returned
    print("3 tunnels on 3 nodes cut %.3f s after afb token revoke returned (%.3f s after it "
          "started)" % (after, time.monotonic() - started))
    assert all(c is not None for c in cut), cut
    assert after < 1.0, after
    for node in cluster.nodes:
        assert wait_log(node.daemon, "user tester revoked (left); closing the tunnel")
    # and no node lets the token in again: the clients stay without a tunnel
    time.sleep(1.5)
    assert cluster.spread() == {"n1": 0, "n2": 0, "n3": 0}
    for client in cluster.clients:
        assert "server refused the tunnel (HTTP 404)" in client.output()
    for sock in socks:
        sock.close()


def test_the_per_user_stream_limit_holds_across_nodes(cluster_of, echo):
    """12 opens at once, 4 through each client (a tunnel on each node), limit 4: exactly
    4 get through, the others get the single-node refusal (SOCKS5 0x01; fast_open off
    so that the reply is the server's answer)."""
    cluster = cluster_of(server_keys={"tunnel": "max_streams_per_user = 4\n"}, fast_open=False)
    opens = [gevent.spawn(socks_open, proxy, echo.port) for proxy in cluster.proxies
             for _ in range(4)]
    gevent.joinall(opens, timeout=30, raise_error=True)
    results = [job.value for job in opens]
    codes = [code for _sock, code in results]
    held = [sock for sock, code in results if code == 0]
    print("reply codes of 12 opens at once over 3 nodes:", codes)
    assert codes.count(0) == 4 and codes.count(1) == 8, codes
    assert echo.connections == 4            # only the admitted ones reached the target
    assert all(echo_once(sock) == b"ping" for sock in held)
    assert sum(metric(node, "afb_streams_open") for node in cluster.nodes) == 4
    # one more through each node, one at a time: still refused everywhere
    for proxy in cluster.proxies:
        sock, code = socks_open(proxy, echo.port)
        sock.close()
        assert code == 1
    assert any("too many streams on all servers" in node.output() for node in cluster.nodes)
    # a freed slot is seen by every node within a heartbeat (1 s)
    held.pop().close()
    for proxy in cluster.proxies:
        def opens_one(proxy=proxy):
            sock, code = socks_open(proxy, echo.port)
            if code == 0:
                held.append(sock)
                return True
            sock.close()
            return False
        assert wait_until(opens_one, 5)
        held.pop().close()
    assert echo.connections <= 4 + 3
    for sock in held:
        sock.close()


def test_a_user_rate_holds_across_nodes(cluster_of, echo):
    """``afb user limit tester --down 1 MiB``: three curls of the same user, one per
    node, for 10 s; together 1 MiB/s +-15 % (each node takes a third)."""
    cluster = cluster_of(limit=MIB)
    # a stream on each node: the user is active on all three, each node's share is set
    idle = [socks_connect(proxy, "127.0.0.1", echo.port) for proxy in cluster.proxies]

    def shares():
        return [metric(node, "afb_user_rate_limit_bytes_per_second", user="tester",
                       direction="down") for node in cluster.nodes]
    assert wait_until(lambda: all(abs(s - MIB / 3) < 1 for s in shares()), 5), shares()
    target = HttpTarget()
    try:
        url = "http://127.0.0.1:%d/%d" % (target.port, 100 * MIB)
        jobs = [gevent.spawn(curl, proxy, url, "--max-time", "10")
                for proxy in cluster.proxies]
        gevent.joinall(jobs, timeout=30, raise_error=True)
    finally:
        target.close()
    results = [job.value for job in jobs]
    total = sum(size for _code, size, _t in results)
    seconds = max(t for _code, _size, t in results)
    rate = total / seconds
    print("per node %s B; together %.0f B/s (%.3f of the 1 MiB/s limit)"
          % ([size for _c, size, _t in results], rate, rate / MIB))
    assert all(code == 28 for code, _s, _t in results), results     # the 10 s were up
    assert abs(rate - MIB) <= 0.15 * MIB, rate
    for sock in idle:
        sock.close()


def test_afb_report_adds_up_the_usage_of_every_node(cluster_of):
    cluster = cluster_of()
    sizes = (3 * MIB, 2 * MIB, MIB + 12345)
    target = HttpTarget()
    try:
        jobs = [gevent.spawn(curl, proxy, "http://127.0.0.1:%d/%d" % (target.port, size))
                for proxy, size in zip(cluster.proxies, sizes, strict=True)]
        gevent.joinall(jobs, timeout=60, raise_error=True)
    finally:
        target.close()
    assert [job.value[:2] for job in jobs] == [(0, size) for size in sizes]
    moved = [metric(node, "afb_bytes_total", direction="down") for node in cluster.nodes]
    assert all(m >= min(sizes) for m in moved), moved          # each node carried one

    def down():
        result = afb("report", "--format", "json", "-c", cluster.nodes[2].conf)
        assert result.returncode == 0, result.stderr
        return sum(r["bytes_down"] for r in json.loads(result.stdout) if r["user"] == "tester")
    assert wait_until(lambda: down() >= sum(sizes), 10), (down(), sum(sizes))
    reported = down()
    print("afb report: %d bytes down; the curls got %d; the nodes' counters %s"
          % (reported, sum(sizes), moved))
    assert sum(sizes) <= reported <= sum(sizes) * 1.01      # + the HTTP answers' heads


def test_redis_stopped_mid_test(cluster_of, clean_redis, echo):
    """Downloads on the three nodes' tunnels go on while Redis is down, new streams on
    them too; a new client's upgrade is refused (503, fail-closed) until Redis is
    back on the same port, then its tunnel comes up by itself within seconds (the
    clients have the shipped reconnect_min / reconnect_max)."""
    cluster = cluster_of(shipped_backoff=True)
    size = 6 * MIB
    target = HttpTarget()
    try:
        url = "http://127.0.0.1:%d/%d" % (target.port, size)
        # 6 MiB at 256 KiB/s: 24 s, over the whole outage
        jobs = [gevent.spawn(curl, proxy, url, "--limit-rate", "256K")
                for proxy in cluster.proxies]
        gevent.sleep(2)
        clean_redis.stop()
        for node in cluster.nodes:
            wait_log(node.daemon, "unreachable", timeout=10)
        for proxy in cluster.proxies:      # new streams on the live tunnels
            sock = socks_connect(proxy, "127.0.0.1", echo.port)
            assert echo_once(sock) == b"ping"
            sock.close()
        conf, port = cluster.client_conf(3)
        late = cluster.start_client(conf, port, "client-3")
        wait_log(late, "server answered HTTP 503", timeout=10)
        assert "tunnel up to" not in late.output()
        assert any("refused with HTTP 503 ([server] state_unavailable" in node.output()
                   for node in cluster.nodes)
        # The downloads go on (one may have ended already on a slow, loaded machine: whole).
        assert all(job.value[:2] == (0, size) for job in jobs if job.dead), \
            [job.value for job in jobs if job.dead]
        clean_redis.start()
        back = time.monotonic()
        for node in cluster.nodes:
            wait_log(node.daemon, "reachable again", timeout=10)
        reachable = time.monotonic()
        wait_log(late, "tunnel up to", timeout=45)
        up = time.monotonic()
        print("Redis back: the nodes said so after %.2f s, the new client's tunnel was up "
              "after %.2f s" % (reachable - back, up - back))
        # the shipped backoff after a 503: not reconnect_max (30 s), which it was
        assert up - back < 10, up - back
        sock = socks_connect(cluster.proxies[3], "127.0.0.1", echo.port)
        assert echo_once(sock) == b"ping"
        sock.close()
        gevent.joinall(jobs, timeout=60, raise_error=True)
    finally:
        target.close()
    assert [job.value[:2] for job in jobs] == [(0, size)] * 3
    for node in cluster.nodes:
        log = node.output()
        assert log.count("unreachable:") == 1 and log.count("reachable again") == 1, log[-2000:]
