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
"""

import logging

import gevent

from afb.codec import httpproxy, socks5
from afb.errors import CommandNotSupported, ProxyAuthFailed, SocksError
from afb.transport.sockets import close_socket

log = logging.getLogger(__name__)

#: Largest single read during the handshake.
READ_SIZE = 8192


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
                 "on_auth_failure", "parser", "done", "_watcher", "_timer")

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

    def start(self):
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
        for watcher in (self._watcher, self._timer):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self._watcher = self._timer = None
