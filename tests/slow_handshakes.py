"""Slow half-open handshakes: many connections that start a handshake and never finish it.

    python tests/slow_handshakes.py KIND --target HOST:PORT --count N
        [--sources 127.0.5.1-50] [--seconds S] [--interval I] [--rate R]

KIND is what each connection starts and then trickles, one byte every
``--interval`` seconds, never sending the byte that would complete it:

* ``socks``: a SOCKS5 greeting (``05 03 00 01 02``), for a client's local proxy;
* ``connect``: an HTTP proxy request head (``CONNECT``), for the same;
* ``tls``: a TLS ClientHello, for the server's TLS port;
* ``http``: a finished TLS handshake, then a WebSocket upgrade request head
  that never gets its blank line.

It keeps ``--count`` such connections, spread over the ``--sources``
addresses (each 127.x.y.z; ``A-B`` in the last byte is a range), and opens a
new one for every one the other end closes, at most ``--rate`` new
connections a second, as a slowloris does.  Every second it prints one JSON
line: ``held`` (connected, handshake started, not closed by the other end),
``opened``, ``closed`` (by the other end) and ``failed`` (connect errors).

Talks only to the loopback address it is given, ends after ``--seconds``
whatever happens; no gevent, one ``selectors`` loop.
"""

import argparse
import json
import selectors
import socket
import ssl
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24        # Linux: pick the port at connect(), by 4-tuple
GREETING = b"\x05\x03\x00\x01\x02"
UPGRADE = (b"GET /tunnel HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")      # no blank line
CONNECT = b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\nUser-Agent: slow\r\n"


def parse_sources(text):
    """``127.0.5.1-50,127.0.6.1`` -> the addresses (loopback only)."""
    out = []
    for part in text.split(","):
        base, _, last = part.strip().rpartition(".")
        low, _, high = last.partition("-")
        for n in range(int(low), int(high or low) + 1):
            out.append("%s.%d" % (base, n))
    if not all(addr.startswith("127.") for addr in out):
        raise SystemExit("slow_handshakes: loopback sources only")
    return out


def client_hello():
    """The bytes of a real TLS ClientHello (as Python's ssl sends it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class Conn:
    __slots__ = ("sock", "state", "sent", "next_at")

    def __init__(self, sock):
        self.sock = sock
        self.state = "connecting"        # -> (tls ->) trickling
        self.sent = 0
        self.next_at = 0.0


class Attack:
    def __init__(self, args):
        self.args = args
        host, _, port = args.target.rpartition(":")
        if not host.startswith("127."):
            raise SystemExit("slow_handshakes: loopback targets only")
        self.target = (host, int(port))
        self.sources = parse_sources(args.sources)
        self.kind = args.kind
        self.payload = {"socks": GREETING, "connect": CONNECT, "tls": client_hello(),
                        "http": UPGRADE}[args.kind]
        if args.kind == "http":
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
        self.sel = selectors.DefaultSelector()
        self.conns = set()
        self.opened = self.closed = self.failed = 0
        self.next_source = 0
        self.budget = float(args.count)      # the first --count at once

    def open_one(self):
        source = self.sources[self.next_source % len(self.sources)]
        self.next_source += 1
        sock = socket.socket()
        try:
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            sock.setblocking(False)
            sock.connect_ex(self.target)
        except OSError:
            sock.close()
            self.failed += 1
            return
        conn = Conn(sock)
        self.conns.add(conn)
        self.opened += 1
        self.sel.register(sock, selectors.EVENT_WRITE, conn)

    def drop(self, conn, by_peer):
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        self.conns.discard(conn)
        if by_peer:
            self.closed += 1
        else:
            self.failed += 1

    def ready(self, conn, now):
        try:
            if conn.state == "connecting":
                err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.drop(conn, by_peer=False)
                    return
                if self.kind == "http":
                    conn.sock = self.ctx.wrap_socket(conn.sock, server_hostname="localhost",
                                                     do_handshake_on_connect=False)
                    conn.state = "tls"
                else:
                    conn.state = "trickling"
                    self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
                    self.trickle(conn, now)
                    return
            if conn.state == "tls":
                try:
                    conn.sock.do_handshake()
                except ssl.SSLWantReadError:
                    self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
                    return
                except ssl.SSLWantWriteError:
                    self.sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
                    return
                conn.state = "trickling"
                self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
                self.trickle(conn, now)
                return
            # trickling: readable means the other end answered or closed
            data = conn.sock.recv(4096)
            if not data:
                self.drop(conn, by_peer=True)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass
        except (OSError, ValueError):
            self.drop(conn, by_peer=True)

    def trickle(self, conn, now):
        """First part at once (a header's worth), then one byte an interval; never the end."""
        if conn.sent == 0:
            first = {"socks": 1, "connect": 16, "tls": 5, "http": 16}[self.kind]
            piece = self.payload[:first]
        elif conn.sent < len(self.payload) - 1:
            piece = self.payload[conn.sent:conn.sent + 1]
        else:
            piece = b""
        if piece:
            try:
                conn.sock.send(piece)
                conn.sent += len(piece)
            except (OSError, ValueError):
                self.drop(conn, by_peer=True)
                return
        conn.next_at = now + self.args.interval

    def run(self):
        start = last_report = next_scan = last = time.monotonic()
        end = start + self.args.seconds
        while True:
            now = time.monotonic()
            if now >= end:
                break
            # new connections: at most --rate a second (a bucket of one second's worth)
            self.budget = min(self.args.rate, self.budget + self.args.rate * (now - last))
            last = now
            while len(self.conns) < self.args.count and self.budget >= 1:
                self.open_one()
                self.budget -= 1
            for key, _ in self.sel.select(0.01):
                self.ready(key.data, now)
            if now >= next_scan:            # the trickle, ten times a second
                next_scan = now + 0.1
                for conn in [c for c in self.conns if c.state == "trickling" and c.next_at <= now]:
                    self.trickle(conn, now)
            if now - last_report >= 1.0:
                last_report = now
                self.report()
        self.report()
        for conn in list(self.conns):
            conn.sock.close()

    def report(self):
        held = sum(1 for c in self.conns if c.state == "trickling")
        print(json.dumps({"held": held, "opened": self.opened, "closed": self.closed,
                          "failed": self.failed}), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("socks", "connect", "tls", "http"))
    parser.add_argument("--target", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--sources", default="127.0.0.1")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    args = parser.parse_args(argv)
    Attack(args).run()


if __name__ == "__main__":
    sys.exit(main())
