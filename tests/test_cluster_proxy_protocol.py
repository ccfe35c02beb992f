"""TLS passthrough with PROXY protocol v2 (issue 14): a real haproxy with ``send-proxy-v2``.

HAProxy connects to the nodes from 127.0.0.9 (``source``; the nodes' only
trusted proxy), the afb client from 127.0.0.1, a prober from 127.0.0.3 and
another client from 127.0.0.4.  The nodes see each one's own address: in
the tunnel's log line and on the control socket, and a prober's bad tokens
ban the prober on every node it reached, never HAProxy, so everyone else
still gets in.  HAProxy's health checks go to the metrics port (``check
port``) and carry no header: the nodes stay up.  Everything on 127.0.0.0/8.
"""

import json
import os
import socket
import time

import pytest

from tests.cluster import HAPROXY_SOURCE, Cluster, haproxy_available, new_stream
from tests.support import EchoTarget, wait_until
from tests.test_proxy_protocol_process import SWITCHING, status, upgrade

pytestmark = pytest.mark.skipif(not haproxy_available(),
                                reason="haproxy is not installed (make installs it)")


def _snapshot(node):
    path = os.path.join(os.path.dirname(node.conf), "%s.sock" % node.name)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(b'{"v": 1, "cmd": "snapshot", "id": 1}\n')
        buf = b""
        while b"\n" not in buf:
            data = sock.recv(65536)
            assert data, "control socket closed"
            buf += data
    return json.loads(buf.split(b"\n", 1)[0])


def test_nodes_see_each_client_and_ban_only_the_prober(tmp_path):
    echo = EchoTarget()
    # roundrobin: the prober's 6 connections go to n1, n2, n1, ... -> 3 failures on each
    cluster = Cluster(tmp_path, nodes=2, balance="roundrobin", proxy_protocol=True,
                      access="max_auth_failures = 3\n")
    try:
        cluster.start()
        assert new_stream(cluster.proxy, echo.port, time.monotonic() + 15)
        holder = cluster.holder()
        assert wait_until(lambda: "tester@127.0.0.1: tunnel open" in holder.output(), 5)
        peers = [t.get("peer") for t in _snapshot(holder).get("tunnels", [])]
        assert peers and all(str(p).startswith("127.0.0.1") for p in peers), peers

        port, setup = cluster.haproxy.port, cluster.setup
        bad, good = upgrade(setup, "not.a.token"), upgrade(setup, setup.token)
        for _ in range(6):
            assert status(port, "127.0.0.3", request=bad) != SWITCHING
        for node in cluster.nodes:
            assert wait_until(lambda n=node: "client 127.0.0.3 banned" in n.output(), 5), \
                node.output()[-2000:]
        for _ in range(2):      # banned on both nodes, even with a good token
            assert status(port, "127.0.0.3", request=good) != SWITCHING
        for source in ("127.0.0.4", "127.0.0.4", "127.0.0.1", "127.0.0.1"):    # others: in
            assert status(port, source, request=good) == SWITCHING, source
        assert new_stream(cluster.proxy, echo.port, time.monotonic() + 5)
        assert all(cluster.haproxy.states()[n.name].startswith("UP") for n in cluster.nodes)
    finally:
        cluster.stop()
        echo.close()
    for node in cluster.nodes:
        out = node.output()
        assert HAPROXY_SOURCE not in out, [x for x in out.splitlines() if HAPROXY_SOURCE in x]
        refused = [line for line in out.splitlines() if "refused WebSocket upgrade" in line]
        assert refused and all("from 127.0.0.3:" in line for line in refused), refused
        assert "tester@127.0.0.4" in out
        assert "Traceback" not in out


def test_the_shipped_passthrough_backend_sends_proxy_v2():
    from tests.support import ROOT

    text = open(ROOT + "/conf/haproxy.cfg").read()
    backend = text.split("\nbackend afb_nodes_tls", 1)[1].split("\nbackend ", 1)[0]
    servers = [line for line in backend.splitlines() if line.strip().startswith("server ")]
    assert servers and all(line.rstrip().endswith("send-proxy-v2") for line in servers)
    assert "proxy_protocol = on" in backend
