"""SOCKS5 UDP ASSOCIATE with `afb server` and `afb client` as real processes.

A flood of datagrams at a destination that never reads must not grow the
daemons' memory beyond their bounds (the tunnel's budget, the bounded
queues): what does not fit is dropped, and the drops show in the control
socket's ``udp`` counters.
"""

import json
import os
import socket
import time

import psutil

from afb.codec.socks5_udp import build_udp_datagram
from tests.support import Setup, running
from tests.udp_support import DNS_ANSWER, RawUdpClient, TinyDns, dns_query, parse_dns_a

FLOOD = 40000
SIZE = 1200


def ask(path, request):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    sock.sendall(json.dumps(request).encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    return json.loads(data)


def _peaks(peaks, procs):
    return [max(peak, p.memory_info().rss) for peak, p in zip(peaks, procs, strict=True)]


def test_flood_of_datagrams_does_not_grow_memory(tmp_path):
    setup = Setup(tmp_path, client_extra="max_buffer = 1M\n[udp]\nmax_queue = 32\n")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink.bind(("127.0.0.1", 0))
    dns = TinyDns()
    with running("server", setup, tmp_path / "server.log") as server, \
            running("client", setup, tmp_path / "client.log") as client:
        app = RawUdpClient(("127.0.0.1", setup.proxy_port), timeout=10)
        assert app.reply == 0
        app.send("127.0.0.1", dns.port, dns_query("warm.up", 1))
        assert parse_dns_a(app.recv()[2]) == (1, DNS_ANSWER)
        procs = [psutil.Process(client.proc.pid), psutil.Process(server.proc.pid)]
        before = [p.memory_info().rss for p in procs]
        datagram = build_udp_datagram("127.0.0.1", sink.getsockname()[1], os.urandom(SIZE))
        started = time.monotonic()
        peaks = list(before)
        for index in range(FLOOD):
            try:
                app.udp.sendto(datagram, app.relay)
            except OSError:
                pass
            if index % 2000 == 0:
                peaks = _peaks(peaks, procs)
        elapsed = time.monotonic() - started
        time.sleep(1.0)
        peaks = _peaks(peaks, procs)
        growth = [peak - base for peak, base in zip(peaks, before, strict=True)]
        print("flood of %d x %d bytes in %.2f s; RSS growth client %d, server %d bytes"
              % (FLOOD, SIZE, elapsed, growth[0], growth[1]))
        # 48 MB went at the relay: each daemon may grow by its bounds, not by the flood.
        assert growth[0] < 16 * 1024 * 1024 and growth[1] < 16 * 1024 * 1024, growth
        counters = ask(str(tmp_path / "client.sock"), {"cmd": "snapshot"})["udp"]
        server_counters = ask(str(tmp_path / "server.sock"), {"cmd": "snapshot"})["udp"]
        print("client udp counters %r; server %r" % (counters, server_counters))
        assert counters["datagrams_up"] > 1 and counters["associations"] == 1
        assert server_counters["datagrams_up"] > 1
        # Still usable after the flood.
        app.udp.settimeout(10)
        app.send("127.0.0.1", dns.port, dns_query("after.flood", 2))
        while True:
            host, port, data = app.recv()
            if port == dns.port:
                break
        assert parse_dns_a(data) == (2, DNS_ANSWER)
        app.close()
    sink.close()
    dns.stop()
