"""SOCKS5 UDP ASSOCIATE with `afb server` and `afb client` as real processes.

A flood of datagrams while the server is stopped (SIGSTOP: the tunnel takes
nothing) must not grow the client's memory beyond its bounds: the tunnel's
``max_buffer`` fills, then datagrams are dropped and counted
(``dropped_queue_full`` in the control socket's ``udp`` counters), and once
the server runs again the association still carries datagrams.
"""

import os
import signal
import socket
import time

import psutil

from afb.codec.socks5_udp import build_udp_datagram
from tests.support import Setup, ask, running, wait_until
from tests.udp_support import DNS_ANSWER, RawUdpClient, TinyDns, dns_query, parse_dns_a

FLOOD = 20000
SIZE = 8000




def _query(app, dns, ident, tries=20):
    """Ask until answered (0.5 s apart), as a DNS client does: UDP may drop."""
    app.udp.settimeout(0.5)
    for _ in range(tries):
        app.send("127.0.0.1", dns.port, dns_query("q%d.test" % ident, ident))
        try:
            while True:
                _host, port, data = app.recv()
                if port == dns.port and parse_dns_a(data)[0] == ident:
                    return parse_dns_a(data)
        except socket.timeout:
            continue
    raise AssertionError("no answer to query %d in %d tries" % (ident, tries))


def test_flood_while_the_tunnel_is_stuck_stays_within_the_budget(tmp_path):
    setup = Setup(tmp_path, client_extra="max_buffer = 1M\n")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink.bind(("127.0.0.1", 0))
    dns = TinyDns()
    with running("server", setup, tmp_path / "server.log") as server, \
            running("client", setup, tmp_path / "client.log") as client:
        app = RawUdpClient(("127.0.0.1", setup.proxy_port), timeout=10)
        assert app.reply == 0
        assert _query(app, dns, 1) == (1, DNS_ANSWER)
        proc = psutil.Process(client.proc.pid)
        before = peak = proc.memory_info().rss
        datagram = build_udp_datagram("127.0.0.1", sink.getsockname()[1], os.urandom(SIZE))
        server.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            for index in range(FLOOD):
                try:
                    app.udp.sendto(datagram, app.relay)
                except OSError:
                    pass
                if index % 100 == 0:
                    time.sleep(0.002)          # let the client read most of them
                if index % 1000 == 0:
                    peak = max(peak, proc.memory_info().rss)
            elapsed = time.monotonic() - started
            time.sleep(0.5)
            peak = max(peak, proc.memory_info().rss)
            counters = ask(str(tmp_path / "client.sock"), {"cmd": "snapshot"})["udp"]
        finally:
            server.proc.send_signal(signal.SIGCONT)
        print("flood of %d x %d bytes in %.2f s with the server stopped: client RSS +%d "
              "bytes (peak); client udp counters %r"
              % (FLOOD, SIZE, elapsed, peak - before, counters))
        # 160 MB went at the relay; the client holds its budget (1M) and the kernel's
        # socket buffers, not the flood.
        assert peak - before < 16 * 1024 * 1024, peak - before
        assert counters["dropped_queue_full"] > 0, counters
        assert counters["datagrams_up"] > 1 and counters["associations"] == 1
        # The server runs again: once it has taken the backlog, the association works.
        assert _query(app, dns, 2) == (2, DNS_ANSWER)
        assert wait_until(lambda: ask(str(tmp_path / "server.sock"), {"cmd": "snapshot"})
                          ["udp"]["datagrams_up"] > 2, 10)
        app.close()
    sink.close()
    dns.stop()
