"""HAProxy terminating TLS in front of the nodes, E2E inside (issue 14, part 6).

The second way of conf/haproxy.cfg, for real: haproxy in ``mode http`` holds
the certificate (the nodes', so the client's pin holds), forwards the
WebSocket upgrade to two ``afb server`` nodes on plain ``ws://`` with
X-Forwarded-For, ``timeout tunnel`` for the WebSocket once it is up; the
client's E2E channel runs through it.  A download goes through byte-exact,
and the node holding the tunnel is stopped (SIGTERM) in the middle of one:
it finishes on the draining node while new streams go to the other.
"""

import hashlib
import signal
import subprocess
import time

import gevent
import pytest

from tests.cluster import Cluster, haproxy_available, new_stream
from tests.support import wait_until

pytestmark = pytest.mark.skipif(not haproxy_available(),
                                reason="haproxy is not installed (make installs it)")


def _curl(proxy_port, url, rate=None):
    argv = ["curl", "-sS", "--max-time", "60", "--socks5-hostname", "127.0.0.1:%d" % proxy_port,
            url]
    if rate:
        argv[1:1] = ["--limit-rate", rate]
    done = subprocess.run(argv, capture_output=True, timeout=90)
    return done.returncode, hashlib.sha256(done.stdout).hexdigest(), done.stderr


def test_through_haproxy_terminating_tls_with_e2e_inside(tmp_path, http_target, echo):
    url, blob = http_target
    size = 3 * 1024 * 1024
    expected = hashlib.sha256(blob[:size]).hexdigest()
    cluster = Cluster(tmp_path, nodes=2, mode="http", drain_timeout=20)
    try:
        cluster.start()
        port = cluster.setup.proxy_port
        assert _curl(port, "%s/%d" % (url, size))[:2] == (0, expected)
        holder = cluster.holder()
        # The node takes E2E tunnels only: this one runs the E2E channel through HAProxy.
        assert "mode = required" in open(holder.conf).read()
        slow = gevent.spawn(_curl, port, "%s/%d" % (url, size), "1M")       # ~3 s
        time.sleep(1.0)
        holder.send(signal.SIGTERM)
        assert new_stream(cluster.proxy, echo.port, time.monotonic() + 2) is not None
        assert slow.get(timeout=30)[:2] == (0, expected)
        assert holder.wait_exit(25) == 0
        assert wait_until(lambda: cluster.holder() is not holder, 5)
    finally:
        cluster.stop()
    assert "drain timeout" not in holder.output()
