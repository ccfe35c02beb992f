"""A steady stream of new connections through ``afb client``, and server restarts under it.

Used by the restart tests and by ``bench/restart``.  Everything talks to
127.0.0.1 only and is bounded in time.

* :class:`SteadyLoad` -- every 20-50 ms a new SOCKS5 connection to an echo
  target through the proxy, a few bytes echoed, closed; each one's wait
  (connect to echo back) and failure is recorded.
* :func:`replace_server` -- start a new ``afb server`` on the same port, wait
  until it listens, then SIGTERM the old one (a restart without a gap), or
  the other way round (``stop_first``: stop, then start).
* :func:`shipped_reconnect` -- the test client config with the shipped
  reconnect backoff (0.5 s to 30 s) instead of the tests' 0.05 to 0.5 s.
"""

import random
import re
import signal
import socket
import struct
import time

import gevent

from tests.support import Daemon, recv_exact, wait_log, wait_port

#: Seconds one connection may take before it counts as lost.
CONNECTION_TIMEOUT = 10.0


class SteadyLoad:
    """New connections through ``proxy`` to ``127.0.0.1:echo_port``, one every 20-50 ms."""

    def __init__(self, proxy, echo_port, interval=(0.02, 0.05), timeout=CONNECTION_TIMEOUT):
        self.proxy = proxy
        self.timeout = timeout
        self.echo_port = echo_port
        self.interval = interval
        self.results = []          # (started, seconds, error or None)
        self._loop = None
        self._running = []

    def start(self):
        self._loop = gevent.spawn(self._run)
        return self

    def _run(self):
        while True:
            self._running.append(gevent.spawn(self._one))
            gevent.sleep(random.uniform(*self.interval))      # the load's pace

    def _one(self):
        started = time.monotonic()
        error = None
        try:
            sock = socket.create_connection(self.proxy, timeout=self.timeout)
            try:
                sock.sendall(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01"
                             + struct.pack("!H", self.echo_port) + b"ping")
                head = recv_exact(sock, 12)
                if head[:3] != b"\x05\x00\x05" or head[3] != 0:
                    raise OSError("SOCKS5 reply %r" % head[:4])
                reply = recv_exact(sock, 4)
                if reply != b"ping":
                    raise OSError("bad echo %r" % reply)
            finally:
                sock.close()
        except (OSError, EOFError) as exc:
            error = "%s: %s" % (type(exc).__name__, exc)
        self.results.append((started, time.monotonic() - started, error))

    def stop(self):
        """Stop starting connections, let the running ones end; -> the results."""
        self._loop.kill()
        gevent.joinall(self._running, timeout=self.timeout + 1)
        return self.results

    def summary(self, since=0.0, until=float("inf")):
        """``(count, lost, worst wait in s)`` of the connections started in [since, until)."""
        picked = [r for r in self.results if since <= r[0] < until]
        lost = [r for r in picked if r[2] is not None]
        worst = max((r[1] for r in picked), default=0.0)
        return len(picked), lost, worst


def replace_server(old, conf, log_path, port, stop_first=False):
    """A new ``afb server -c conf`` in place of ``old``; -> the new Daemon.

    Default: the new one starts and listens on the same port (SO_REUSEPORT)
    before the old one gets SIGTERM.  ``stop_first``: SIGTERM the old one,
    wait for its exit, then start the new one.
    """
    if stop_first:
        old.stop(signal.SIGTERM, timeout=30)
    new = Daemon("server", conf, log_path)
    if stop_first:
        wait_port(port)
    wait_log(new, "listening on")
    if not stop_first:
        old.stop(signal.SIGTERM, timeout=30)
    return new


def shipped_reconnect(setup):
    """Drop the tests' reconnect_min/max from ``setup``'s client config: the defaults apply."""
    with open(setup.client_conf) as handle:
        text = handle.read()
    text = re.sub(r"(?m)^reconnect_(min|max) = .*\n", "", text)
    with open(setup.client_conf, "w") as handle:
        handle.write(text)
