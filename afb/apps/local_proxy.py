"""The client's local listener: SOCKS5 and HTTP proxy on one port.

The first byte tells the protocols apart (0x05: SOCKS5; a capital letter:
HTTP).  Each accepted request becomes a tunnel stream.  With ``fast_open`` the
app gets its success reply at once and its first bytes leave with the OPEN
(no round trip to the server before the request); a destination that then
fails is reported by resetting the app's connection.  Without it, the app
waits for the server's answer and gets the precise SOCKS5 reply code or HTTP
status.  An absolute-form HTTP request (``GET http://...``) always carries its
head as early data and still gets a precise status: nothing was answered yet.
"""

import logging
import socket

import gevent
from gevent.greenlet import Greenlet
from gevent.hub import get_hub, getcurrent
from gevent.server import StreamServer

from afb.codec import frames, httpproxy, socks5
from afb.errors import (REP_GENERAL_FAILURE, REP_SUCCEEDED, AfbError, CommandNotSupported,
                        DestinationError, HttpProxyError, SocksError, TimedOut, reply_reason)
from afb.policy.proxy_users import parse_basic
from afb.transport.relay import SocketRelay, close_socket

log = logging.getLogger(__name__)

_HTTP_STATUS = {0x02: 403, 0x03: 502, 0x04: 502, 0x05: 502, 0x06: 504, 0x07: 501, 0x08: 400}

_407_BODY = b"407 Proxy Authentication Required\n"
#: The answer to an HTTP proxy request without valid credentials (users_file set).
PROXY_AUTH_REQUIRED = (
    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
    b'Proxy-Authenticate: Basic realm="proxy", charset="UTF-8"\r\n'
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_407_BODY)) + _407_BODY


def start_now(func, *args):
    """Spawn ``func(*args)`` and, from the event loop, run it at once.

    ``gevent.spawn`` starts a greenlet in the next loop iteration; an accept
    callback that switches into the handler directly saves that iteration
    (~30 us here) on every new connection.
    """
    greenlet = Greenlet(func, *args)
    if getcurrent() is get_hub():
        greenlet.switch()
    else:
        greenlet.start()
    return greenlet


class _HandOffServer(StreamServer):
    """A StreamServer that runs each handler at once (:func:`start_now`) and
    leaves closing to it: an accepted socket outlives its handler greenlet
    once a relay has taken it over."""

    def __init__(self, listener, handle, **kwargs):
        super().__init__(listener, handle, spawn=start_now, **kwargs)

    def do_close(self, sock, *args):
        pass


class LocalProxy:
    """SOCKS5 + HTTP CONNECT listener feeding a :class:`TunnelClient`."""

    def __init__(self, listen, tunnel, *, fast_open=True, open_timeout=10.0,
                 handshake_timeout=10.0, authenticate=None, sources=None):
        """*authenticate*: None, or ``(user, password) -> bool`` required of every
        client (SOCKS5 method 2, HTTP ``Proxy-Authorization: Basic``); *sources*:
        None (anyone), or a :class:`~afb.policy.access.SourceAcl` of client addresses."""
        self.tunnel = tunnel
        self.sources = sources
        self.fast_open = fast_open
        self.open_timeout = open_timeout
        self.handshake_timeout = handshake_timeout
        self.authenticate = authenticate
        self.active = 0
        # A page load opens dozens of connections at once: a deep backlog.
        self.server = _HandOffServer(listen, self._handle, backlog=4096)

    @property
    def address(self):
        return self.server.server_host, self.server.server_port

    def start(self):
        self.server.start()
        host, port = self.address
        log.info("SOCKS5 and HTTP proxy listening on %s:%d", host, port)

    def close(self):
        """Stop accepting; connections already accepted go on."""
        self.server.close()

    # --- per connection -------------------------------------------------------

    def _handle(self, sock, address):
        peer = "%s:%d" % address[:2]
        if self.sources is not None:
            refused = self.sources.check(address[0])
            if refused:
                log.warning("%s: connection refused: source %s ([client] allow_sources)",
                            peer, refused)
                close_socket(sock)
                return
        handed_off = False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            handed_off = self._serve(sock, peer)
        except (OSError, AfbError) as exc:
            log.info("%s: %s", peer, exc)
        finally:
            if not handed_off:
                close_socket(sock)

    def _serve(self, sock, peer):
        timeout = gevent.Timeout(self.handshake_timeout,
                                 TimedOut("no complete proxy request within %.0f s" % self.handshake_timeout))
        with timeout:
            first = sock.recv(8192)
            if not first:
                return False
            kind = httpproxy.sniff(first[0])
            if kind == "socks5":
                request = self._socks5_request(sock, peer, first)
            elif kind == "http":
                request = self._http_request(sock, peer, first)
            else:
                log.info("%s: not a SOCKS5 or HTTP proxy request (first byte 0x%02x)", peer, first[0])
                return False
        if request is None:
            return False
        return self._open(sock, peer, *request)

    def _socks5_request(self, sock, peer, data):
        parser = socks5.Socks5Parser(self.authenticate)
        while True:
            try:
                out, request = parser.receive(data)
            except SocksError as exc:
                response = getattr(exc, "response", b"")
                if response:
                    sock.sendall(response)
                log.info("%s: SOCKS5 refused: %s", peer, exc)
                return None
            if out:
                sock.sendall(out)
            if request is not None:
                break
            data = sock.recv(8192)
            if not data:
                return None
        if request.command != socks5.CMD_CONNECT:
            exc = CommandNotSupported("SOCKS5 command %d is not supported" % request.command)
            sock.sendall(socks5.reply(exc.reply))
            log.info("%s: SOCKS5 refused: %s", peer, exc)
            return None
        return "socks5", request.host, request.port, parser.leftover

    def _http_request(self, sock, peer, data):
        parser = httpproxy.HttpProxyParser()
        while True:
            try:
                request = parser.receive(data)
            except HttpProxyError as exc:
                sock.sendall(httpproxy.response(exc.http_status, body=(str(exc) + "\n").encode()))
                log.info("%s: HTTP proxy request refused: %s", peer, exc)
                return None
            if request is not None:
                break
            data = sock.recv(8192)
            if not data:
                return None
        if self.authenticate is not None and not self._http_authorized(parser.headers):
            sock.sendall(PROXY_AUTH_REQUIRED)
            log.info("%s: HTTP proxy request refused: 407, no valid Proxy-Authorization", peer)
            return None
        if request.method == "CONNECT":
            return "connect", request.host, request.port, parser.leftover
        return "http", request.host, request.port, request.forward + parser.leftover

    def _http_authorized(self, headers):
        for name, value in headers:
            if name.lower() == "proxy-authorization":
                credentials = parse_basic(value)
                return credentials is not None and bool(self.authenticate(*credentials))
        return False

    def _open(self, sock, peer, kind, host, port, early):
        try:
            session = self.tunnel.get_session(self.open_timeout)
        except AfbError as exc:
            self._fail(sock, kind, exc)
            log.warning("%s -> %s:%d: %s", peer, host, port, exc)
            return False
        stream = session.open_stream(frames.CMD_CONNECT, host, port, early)
        optimistic = self.fast_open and kind != "http"
        if optimistic:
            self._succeed(sock, kind)
        else:
            try:
                stream.wait_open(self.open_timeout)
            except DestinationError as exc:
                if stream.reset_error is None:
                    stream.reset(exc.reply, "client gave up waiting")
                self._fail(sock, kind, exc)
                log.info("%s -> %s: %s", peer, stream.target, exc)
                return False
            if kind != "http":
                self._succeed(sock, kind)
        self.active += 1
        SocketRelay(sock, stream, on_close=self._relay_closed).start()
        return True

    def _relay_closed(self, relay):
        self.active -= 1
        stream = relay.stream
        error = stream.reset_error
        if error is not None and stream.bytes_in == 0 and error.reply != REP_GENERAL_FAILURE:
            log.info("%s: %s", stream.target, reply_reason(error.reply))

    @staticmethod
    def _succeed(sock, kind):
        if kind == "socks5":
            sock.sendall(socks5.reply(REP_SUCCEEDED))
        else:
            sock.sendall(httpproxy.response(200))

    @staticmethod
    def _fail(sock, kind, exc):
        try:
            if kind == "socks5":
                sock.sendall(socks5.reply(exc.reply))
            else:
                status = _HTTP_STATUS.get(exc.reply, exc.http_status)
                sock.sendall(httpproxy.response(status, body=(str(exc) + "\n").encode()))
        except OSError:
            pass
