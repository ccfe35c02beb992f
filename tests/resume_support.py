"""Helpers of tests/test_resume*.py: a relay the tests cut, and apps that check every byte."""

import hashlib
import socket
import struct
import time

import gevent
from gevent.server import StreamServer

from tests.multi_server import Relay
from tests.support import recv_exact, socks_connect


class CuttableRelay(Relay):
    """A relay (tests/multi_server.py) on a fixed port that a test cuts altogether:
    :meth:`cut_all` resets every connection (RST) and stops listening (redials are
    refused meanwhile), :meth:`restore` listens again on the same port; ``target``
    may change in between (another server)."""

    def __init__(self, port, listen_port):     # not Relay.__init__: it binds port 0
        self.target = port
        self.delay = 0.0
        self.pairs = []
        self.frozen = set()
        self.port = listen_port
        self.server = None
        self.restore()

    def restore(self):
        self.server = StreamServer(("127.0.0.1", self.port), self._handle)
        self.server.start()

    def cut_all(self):
        self.server.close()
        pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                except OSError:
                    pass

    def freeze(self):
        """The connections open now carry nothing more, and are not closed either (a
        path that went silent: the client moved to another network); new ones work."""
        for pair in self.pairs:
            self.frozen.update(pair)

    def _pump(self, source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data or source in self.frozen:
                    break
                sink.sendall(data)
        except OSError:
            pass
        if source in self.frozen:
            gevent.sleep(3600)          # silent, open, until cut_all() or the end

    def close(self):
        self.cut_all()


class SlowDownload:
    """Through the SOCKS proxy to a HashTarget: uploads ``up`` bytes and downloads ``down``
    bytes, reading at most ``rate`` bytes/s, so that the transfer spans the cuts."""

    def __init__(self, proxy, target, up, down, rate):
        self.proxy, self.target = proxy, target
        self.up, self.down, self.rate = up, down, rate
        self.ident = hashlib.sha256(str(time.monotonic()).encode()).digest()[:16]
        self.error = None
        self.digests = None
        self.greenlet = gevent.spawn(self._run)

    def _run(self):
        from tests.support import send_pattern

        try:
            sock = socks_connect(self.proxy, "127.0.0.1", self.target.port, timeout=60)
            sock.sendall(self.target.HEAD.pack(self.ident, self.up, self.down))
            sender = gevent.spawn(send_pattern, sock, self.target.pattern, self.up, b"up")
            digest = hashlib.sha256()
            got = 0
            started = time.monotonic()
            while got < self.down:
                data = sock.recv(min(65536, self.down - got))
                if not data:
                    raise EOFError("download ended after %d of %d bytes" % (got, self.down))
                digest.update(data)
                got += len(data)
                ahead = got / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    gevent.sleep(ahead)
            self.digests = (sender.get(), digest.hexdigest())
            sock.close()
        except (OSError, EOFError) as exc:      # the test reports it
            self.error = exc


class Chatter:
    """An interactive app: a numbered line every ``interval`` s to an echo target, each
    answer checked; ``stalls`` are the round trips slower than usual (the cuts)."""

    def __init__(self, proxy, port, interval=0.02):
        self.proxy, self.port, self.interval = proxy, port, interval
        self.sent = 0
        self.error = None
        self.round_trips = []           # (when sent, seconds)
        self._stop = False
        self.greenlet = gevent.spawn(self._run)

    def _run(self):
        try:
            sock = socks_connect(self.proxy, "127.0.0.1", self.port, timeout=60)
            while not self._stop:
                line = b"line %08d\n" % self.sent
                started = time.monotonic()
                sock.sendall(line)
                if recv_exact(sock, len(line)) != line:
                    raise AssertionError("echo of line %d differs" % self.sent)
                self.round_trips.append((started, time.monotonic() - started))
                self.sent += 1
                gevent.sleep(self.interval)
            sock.close()
        except (OSError, EOFError, AssertionError) as exc:
            self.error = exc

    def stop(self):
        self._stop = True
        self.greenlet.join(30)

    def slowest_after(self, moment):
        """The longest round trip that began at or after ``moment`` s (monotonic)... and
        ended the stall a cut made: the time to recover."""
        return max((rtt for started, rtt in self.round_trips if started >= moment - 1.0),
                   default=0.0)
