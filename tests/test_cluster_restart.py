"""A rolling restart behind HAProxy loses no download (issue 14, part 4).

Three real ``afb server`` nodes behind a real haproxy (TLS passthrough,
tests/cluster.py), one ``afb client`` pointed at HAProxy, a plain HTTP
server in its own process serving one random file.  50 curl downloads run
at once through the client's SOCKS port, each rate-limited so that it lasts
a few seconds (well inside the nodes' ``drain_timeout``), and each worker
starts the next as one ends, until the restart is over.  Each node in turn
(the tunnel's first) gets SIGTERM: it closes its listener and says 503 on
/health at once, sends GOAWAY, the client dials a new tunnel that HAProxy
gives to another node, the old tunnel's downloads finish on it, the node
exits, and it is started again.  Every download must end complete and
byte-exact (sha256).
"""

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time

import gevent
import pytest

from tests.cluster import Cluster, haproxy_available
from tests.support import free_port, wait_port, wait_until

pytestmark = pytest.mark.skipif(not haproxy_available(),
                                reason="haproxy is not installed (make installs it)")

DOWNLOADS = 50
SIZE = 2 * 1024 * 1024
#: Per download: 2 MiB at 512 KiB/s is 4 s; 50 of them 25 MiB/s together.
RATE = "512K"
DRAIN = 25.0


def _download(proxy_port, url, path):
    """curl through the SOCKS port; -> (exit code, HTTP status, sha256 of what came, seconds)."""
    started = time.monotonic()
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "--limit-rate", RATE, "--socks5-hostname",
         "127.0.0.1:%d" % proxy_port, "-o", path, "-w", "%{http_code}", url],
        capture_output=True, text=True, timeout=90)
    digest = None
    if os.path.exists(path):
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        os.unlink(path)
    return done.returncode, done.stdout.strip(), digest, time.monotonic() - started, done.stderr


def test_a_rolling_restart_completes_every_download_byte_exact(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    blob = os.urandom(SIZE)
    (www / "blob").write_bytes(blob)
    expected = hashlib.sha256(blob).hexdigest()
    port = free_port()
    http = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                             "--directory", str(www), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cluster = Cluster(tmp_path, nodes=3, drain_timeout=DRAIN)
    results, restarts = [], []
    stop = []
    try:
        wait_port(port)
        cluster.start()
        url = "http://127.0.0.1:%d/blob" % port

        def worker(number):
            round_ = 0
            while not stop or round_ == 0:
                path = str(tmp_path / ("dl-%d-%d" % (number, round_)))
                results.append(_download(cluster.setup.proxy_port, url, path))
                round_ += 1

        workers = [gevent.spawn(worker, n) for n in range(DOWNLOADS)]
        time.sleep(2.0)                 # all 50 under way
        first = cluster.holder()
        for node in [first] + [n for n in cluster.nodes if n is not first]:
            streams = _streams(node)
            asked = time.monotonic()
            node.send(signal.SIGTERM)
            if streams:     # draining: the listener closed at once, /health 503 (HAProxy: down)
                assert wait_until(lambda node=node: node.get("/health")[0] == 503, 1.0)
                assert not _accepts(node.port)
            code = node.wait_exit(DRAIN + 15)
            restarts.append((node.name, streams, time.monotonic() - asked, code))
            node.start()
            cluster.wait_up([node])
            time.sleep(1.0)
        stop.append(True)
        gevent.joinall(workers, timeout=120)
        assert all(w.dead for w in workers)
    finally:
        stop.append(True)
        cluster.stop()
        http.terminate()
        http.wait(10)
    print("\nrestarts (node, streams open at SIGTERM, seconds to exit, exit code): %s"
          % restarts)
    print("downloads: %d, seconds each: median %.1f, max %.1f" % (
        len(results), sorted(r[3] for r in results)[len(results) // 2],
        max(r[3] for r in results)))
    bad = [r for r in results if r[:3] != (0, "200", expected)]
    assert not bad, bad[:5]
    assert len(results) >= DOWNLOADS
    assert all(code == 0 for _name, _streams, _took, code in restarts), restarts
    assert restarts[0][1] > 0, "the first node drained no stream: %s" % restarts
    drained = [node for node in cluster.nodes if "drain timeout" in node.output()]
    assert not drained, "a node closed streams at its drain timeout"


def _streams(node):
    status, text = node.get("/metrics")
    for line in (text or "").splitlines():
        if line.startswith("afb_streams_open "):
            return int(float(line.split()[1]))
    return 0


def _accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False
