"""``kill -9`` of the node holding a client's tunnel behind HAProxy (issue 14, part 4).

Three real ``afb server`` nodes behind a real haproxy in TLS passthrough
(tests/cluster.py), one real ``afb client`` with the shipped backoff pointed
at HAProxy.  The node holding the tunnel is killed with SIGKILL (no GOAWAY,
no close: the kernel's RST only); a new stream (SOCKS5 + echo) started at
that moment must succeed within 2 s, through HAProxy, on another node.  The
killed node is started again and HAProxy takes it back before the next kill.
"""

import statistics

import pytest

from tests.cluster import Cluster, failovers, haproxy_available
from tests.support import wait_until

pytestmark = pytest.mark.skipif(not haproxy_available(),
                                reason="haproxy is not installed (make installs it)")

KILLS = 6


@pytest.fixture
def cluster(tmp_path):
    running = Cluster(tmp_path, nodes=3)
    try:
        yield running.start()
    finally:
        running.stop()


def test_kill_9_of_the_tunnels_node_new_streams_succeed_within_2_s(cluster, echo):
    waits = failovers(cluster, echo.port, KILLS)
    assert None not in waits, "no new stream within 10 s of a kill: %s" % waits
    print("\nnew stream after kill -9 of the tunnel's node: median %.3f s, max %.3f s (%s)"
          % (statistics.median(waits), max(waits), ", ".join("%.3f" % w for w in waits)))
    assert max(waits) < 2.0, waits
    # Every failover went through HAProxy to a node that was up: one tunnel, on one node.
    assert wait_until(lambda: sum(node.tunnels() for node in cluster.nodes) == 1, 5)
