"""``kill -9`` of the node holding a client's tunnel behind HAProxy (issue 14, part 4).

Three real ``afb server`` nodes behind a real haproxy in TLS passthrough
(tests/cluster.py), one real ``afb client`` with the shipped backoff pointed
at HAProxy.  The node holding the tunnel is killed with SIGKILL (no GOAWAY,
no close: the kernel's RST only); a new stream (SOCKS5 + echo) started at
that moment must succeed within 2 s, through HAProxy, on another node.  The
killed node is started again and HAProxy takes it back before the next kill.
"""

import signal
import statistics
import time

import pytest

from tests.cluster import Cluster, haproxy_available
from tests.support import recv_exact, socks_connect, wait_until

pytestmark = pytest.mark.skipif(not haproxy_available(),
                                reason="haproxy is not installed (make installs it)")

KILLS = 6
#: The client's backoff starts again from reconnect_min only after a tunnel up this
#: long (afb/transport/tunnel_client.py HEALTHY_AFTER): a node dying after a while.
SETTLE = 3.2


@pytest.fixture
def cluster(tmp_path):
    running = Cluster(tmp_path, nodes=3)
    try:
        yield running.start()
    finally:
        running.stop()


def _new_stream(proxy, port, deadline):
    """One SOCKS5 stream + echo through ``proxy``, retried until it works; -> when it did."""
    while time.monotonic() < deadline:
        try:
            sock = socks_connect(proxy, "127.0.0.1", port, timeout=deadline - time.monotonic())
            try:
                sock.sendall(b"ping")
                assert recv_exact(sock, 4) == b"ping"
            finally:
                sock.close()
            return time.monotonic()
        except OSError:
            time.sleep(0.02)
    return None


def test_kill_9_of_the_tunnels_node_new_streams_succeed_within_2_s(cluster, echo):
    waits = []
    for _ in range(KILLS):
        holder = cluster.holder()
        time.sleep(SETTLE)
        assert _new_stream(cluster.proxy, echo.port, time.monotonic() + 5)
        killed = time.monotonic()
        holder.send(signal.SIGKILL)
        done = _new_stream(cluster.proxy, echo.port, killed + 10)
        assert done is not None, "no new stream within 10 s of the kill"
        waits.append(done - killed)
        holder.wait_exit(5)
        assert cluster.holder() is not holder
        holder.start()
        cluster.wait_up([holder])
    print("\nnew stream after kill -9 of the tunnel's node: median %.3f s, max %.3f s (%s)"
          % (statistics.median(waits), max(waits), ", ".join("%.3f" % w for w in waits)))
    assert max(waits) < 2.0, waits
    # Every failover went through HAProxy to a node that was up: no stream refused.
    assert wait_until(lambda: sum(node.tunnels() for node in cluster.nodes) == 1, 5)
