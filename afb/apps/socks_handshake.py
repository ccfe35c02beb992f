"""The first bytes of a local proxy connection, read from the event loop.

A :class:`ProxyHandshake` watches one freshly accepted (plain, non-blocking)
socket: it tells SOCKS5 from HTTP by the first byte, runs the SOCKS5
greeting, authentication and request through the sans-IO
:class:`~afb.codec.socks5.Socks5Parser`, and hands the parsed request on.
No greenlet and no gevent socket exist for it: a new stream costs a read
watcher and a timer, and the request is acted on in the same loop
iteration that completes it.  HTTP requests (rarer, and with heads of any
length) are handed over after the first read to a greenlet.

Every way a handshake ends that is not a request (bad first byte, SOCKS5
refusal, EOF, a read error, the handshake timeout) closes the socket and
logs one line, as the greenlet-per-connection version did.  Wrong
credentials are answered only after the delay ``on_auth_failure`` returns
(the proxy's failed-login throttle), so guessing passwords is slow.

:class:`PendingHandshakes` bounds how many connections may be in their
handshake at once (``[client] max_pending_handshakes``); a newcomer beyond
the bound closes the *oldest* one.  Measured without it: a client whose
descriptor limit was 512, held by 1,000 slow SOCKS5 greetings (one byte every
2 s), hit EMFILE, and a real app's curl waited 9-10 s each time (until
``handshake_timeout`` freed descriptors).  With it, curl took milliseconds
(tests/test_abuse_handshakes.py).  A real handshake on a LAN takes a few
milliseconds, so it is never the oldest unless hundreds of connections
arrive meanwhile; a minimum age before eviction (as the server's front door
has, for handshakes that cross the internet) would instead turn newcomers
away while the slow ones are all young.  The default bound, 1,024: one app
opening 10,000 connections at once (bench/soak --open-rate 100000) had 17
to 50 of them reset at 256, none at 1,024; a browser opens a few dozen.
"""

import logging
import resource

import gevent

from afb.codec import httpproxy, socks5
from afb.errors import CommandNotSupported, ProxyAuthFailed, SocksError
from afb.ratelog import LogLimiter
from afb.transport.sockets import close_socket

log = logging.getLogger(__name__)

#: Largest single read during the handshake.
READ_SIZE = 8192
#: Handshakes closed to make room: one line a minute, then a summary.
_evicted_log = LogLimiter(log, interval=60.0, burst=1)


def pending_limit(configured):
    """The bound on pending handshakes: ``configured`` (0: none), and never more than a
    quarter of the descriptor limit (the streams need the rest)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    share = max(16, soft // 4) if 0 < soft != resource.RLIM_INFINITY else 0
    if not configured:
        return share
    return min(configured, share) if share else configured


class PendingHandshakes:
    """The connections still in their handshake, oldest first; at most ``limit`` (0: no
    limit, see :func:`pending_limit`).  See the module doc."""

    def __init__(self, limit):
        self.limit = limit
        self.evicted = 0
        self._live = {}         # key -> abort(), in the order they came (dicts keep it)
        # Aborted but not yet discarded: a killed greenlet closes its socket when it
        # next runs, and until then its descriptor counts (measured without: 221
        # descriptors for a bound of 128 under 1,000 slow HTTP heads).
        self._dying = set()

    def __len__(self):
        return len(self._live) + len(self._dying)

    def add(self, key, abort):
        """Count ``key`` (``abort()`` ends it quietly, now or later: the key counts until
        :meth:`discard`); if full, close the oldest -- two at most, so that aborts
        still under way bring the count back down without closing every one."""
        for _ in range(2):
            if not (self.limit and len(self) >= self.limit and self._live):
                break
            oldest = next(iter(self._live))
            end = self._live.pop(oldest)
            self._dying.add(oldest)
            end()
            self.evicted += 1
            _evicted_log.warning("pending", "proxy handshakes closed to make room",
                                 "%d connections in their proxy handshake: closing the oldest "
                                 "for each new one ([client] max_pending_handshakes = %d)",
                                 self.limit, self.limit)
        self._live[key] = abort

    def discard(self, key):
        """``key`` ended (or became a stream)."""
        self._live.pop(key, None)
        self._dying.discard(key)


class ProxyHandshake:
    """One connection's proxy handshake; see the module doc.

    ``on_socks(sock, peer, request, leftover)`` gets a complete SOCKS5
    CONNECT request; ``on_udp(sock, peer, request)`` a UDP ASSOCIATE (None:
    refused with 0x07, as every other command is); ``on_http(sock,
    peer, first)`` gets the socket and the bytes read so far when they
    start an HTTP request.  Both run in the event loop
    and own the socket from then on.
    """

    __slots__ = ("sock", "peer", "authenticate", "timeout", "on_socks", "on_http", "on_udp",
                 "on_auth_failure", "parser", "done", "_watcher", "_timer", "_pending")

    def __init__(self, sock, peer, *, authenticate, timeout, on_socks, on_http,
                 on_auth_failure=None, on_udp=None):
        """``on_auth_failure()``: called on wrong credentials; returns the seconds
        to wait before the refusal is sent (0: at once)."""
        self.sock = sock
        self.peer = peer
        self.authenticate = authenticate
        self.timeout = timeout
        self.on_socks = on_socks
        self.on_http = on_http
        self.on_udp = on_udp
        self.on_auth_failure = on_auth_failure
        self.parser = None
        self.done = False
        self._watcher = None
        self._timer = None
        self._pending = None

    def start(self, pending=None):
        """Watch the socket; ``pending``: the :class:`PendingHandshakes` to count in."""
        if pending is not None:
            self._pending = pending
            pending.add(self, self.abort)
        loop = gevent.get_hub().loop
        self._timer = loop.timer(self.timeout)
        self._timer.start(self._expired)
        self._watcher = loop.io(self.sock.fileno(), 1)
        self._watcher.start(self._readable)
        self._readable()            # the greeting is often there already

    # --- events ---------------------------------------------------------------

    def _readable(self):
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail("%s" % exc)
            return
        if not data:
            self._fail(None)
            return
        if self.parser is None:
            kind = httpproxy.sniff(data[0])
            if kind == "http":
                self._end()
                self.on_http(self.sock, self.peer, data)
                return
            if kind != "socks5":
                self._fail("not a SOCKS5 or HTTP proxy request (first byte 0x%02x)" % data[0])
                return
            self.parser = socks5.Socks5Parser(self.authenticate)
        try:
            out, request = self.parser.receive(data)
        except ProxyAuthFailed as exc:
            delay = self.on_auth_failure() if self.on_auth_failure is not None else 0
            if delay <= 0:
                self._refuse(exc, exc.response)
                return
            # Answer later, reading nothing meanwhile: the handshake's timer
            # becomes the delay.
            self._watcher.stop()
            self._timer.stop()
            self._timer.close()
            self._timer = gevent.get_hub().loop.timer(delay)
            self._timer.start(self._refuse, exc, exc.response)
            return
        except SocksError as exc:
            self._refuse(exc, getattr(exc, "response", b""))
            return
        if out and not self._send(out):
            return
        if request is None:
            return
        if request.command == socks5.CMD_UDP_ASSOCIATE and self.on_udp is not None:
            self._end()
            self.on_udp(self.sock, self.peer, request)
            return
        if request.command != socks5.CMD_CONNECT:
            exc = CommandNotSupported("SOCKS5 command %d is not supported" % request.command)
            self._refuse(exc, socks5.reply(exc.reply))
            return
        self._end()
        self.on_socks(self.sock, self.peer, request, self.parser.leftover)

    def abort(self):
        """End the handshake quietly (room for a newer one)."""
        self._fail(None)

    def _expired(self):
        self._fail("no complete proxy request within %g s" % self.timeout)

    # --- helpers ----------------------------------------------------------------

    def _refuse(self, exc, response):
        """Answer a refusal (best effort: the app may be gone), log it, close."""
        if response:
            try:
                self.sock.send(response)
            except OSError:
                pass
        self._fail("SOCKS5 refused: %s" % exc)

    def _send(self, data):
        """Send a short reply whole (a fresh socket always has room); False if not."""
        try:
            if self.sock.send(data) == len(data):
                return True
            problem = "the client's socket took only part of a %d-byte reply" % len(data)
        except OSError as exc:
            problem = "%s" % exc
        self._fail(problem)
        return False

    def _fail(self, message):
        """End the handshake, log ``message`` (None: quietly), close the socket."""
        if self.done:
            return
        self._end()
        if message is not None:
            log.info("%s: %s", self.peer, message)
        close_socket(self.sock)

    def _end(self):
        self.done = True
        if self._pending is not None:
            self._pending.discard(self)
            self._pending = None
        for watcher in (self._watcher, self._timer):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self._watcher = self._timer = None
