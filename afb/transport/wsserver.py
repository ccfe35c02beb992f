"""The tunnel's WebSocket server: gevent.pywsgi + gevent-websocket, hardened.

:func:`make_server` returns a ``WSGIServer`` that upgrades exactly one kind of
request — a well-formed RFC 6455 upgrade (GET, HTTP/1.1, version 13, a valid
16-byte key) on the tunnel path that ``authorize(environ)`` accepts — and hands
the resulting :class:`~afb.transport.wsconn.WsConnection` to
``on_tunnel(ws, principal, environ)`` in the connection's greenlet.  Every
other request is answered by a small static web site (:class:`DecoyApp`),
byte for byte as a plain request for that method and path would be.

What this fixes in gevent-websocket's ``WebSocketHandler`` (which the handler
still subclasses, for the pywsgi plumbing):

* the 101 was sent before the application could refuse: here ``authorize``
  runs first and a refusal never upgrades;
* a malformed ``Sec-WebSocket-Key`` raised ``binascii.Error`` (HTTP 500), other
  bad upgrades got tell-tale 400/426 answers: here they all get the decoy;
* its frame reader unmasked byte by byte in Python, had no frame or message
  size limit, mangled close codes and reasons, and raised
  ``ConcurrentObjectUseError`` on concurrent sends: the connection is a
  :class:`WsConnection` on the raw socket instead;
* bytes the client pipelined after the upgrade request sat in pywsgi's
  buffered reader and were lost: they are handed over as ``initial``;
* a client could hold a connection forever without finishing its TLS
  handshake or its request: both now have a deadline.
"""

import base64
import binascii
import errno
import hashlib
import logging
import socket
import time

from gevent import GreenletExit, Timeout
from gevent.pywsgi import WSGIHandler, WSGIServer
from geventwebsocket.handler import WebSocketHandler

from afb.errors import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, AfbError, AuthError
from afb.transport.decoy import (MAX_DISCARD, SERVER_HEADER, DecoyApp, header_tokens,
                                 http_date, raw_error_response)
from afb.transport.wsconn import WsConnection

log = logging.getLogger(__name__)

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
class _HttpReader:
    """Minimal buffered reader for pywsgi whose buffer can be drained.

    pywsgi normally reads through ``sock.makefile()``, whose buffer cannot be
    inspected; bytes a client sends right after its upgrade request would be
    lost in it.  This reader offers what pywsgi and http.client need
    (``readline``, ``read``, ``closed``) plus :meth:`drain`.
    """

    CHUNK = 16384

    def __init__(self, sock):
        self._sock = sock
        self._buf = bytearray()
        self.closed = False

    def _more(self):
        data = self._sock.recv(self.CHUNK)
        if not data:
            return False
        self._buf += data
        return True

    def readline(self, limit=-1):
        limit = -1 if limit is None else limit
        while True:
            end = len(self._buf) if limit < 0 else min(limit, len(self._buf))
            i = self._buf.find(b"\n", 0, end)
            if i >= 0:
                return self._take(i + 1)
            if 0 <= limit <= len(self._buf):
                return self._take(limit)
            if not self._more():
                return self._take(len(self._buf))

    def read(self, size=-1):
        if size is None or size < 0:
            while self._more():
                pass
            return self._take(len(self._buf))
        while len(self._buf) < size and self._more():
            pass
        return self._take(min(size, len(self._buf)))

    def _take(self, n):
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def drain(self):
        """Whatever is buffered and not yet consumed."""
        return self._take(len(self._buf))

    def close(self):
        self.closed = True


class _Deadline(Exception):
    """The handshake deadline (TLS + HTTP request) expired."""


class _Settings:
    __slots__ = ("on_tunnel", "authorize", "path", "max_message", "handshake_timeout")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


class TunnelHandler(WebSocketHandler):
    """pywsgi handler: decoy for everything, upgrade for the one right request."""

    def __init__(self, sock, address, server, rfile=None):
        super().__init__(sock, address, server, rfile=_HttpReader(sock))
        self._t0 = time.monotonic()
        self._deadline = None
        self._first_request = True

    # --- request reading under a deadline ----------------------------------

    def handle(self):
        try:
            self.socket.settimeout(self.server.afb.handshake_timeout)
        except OSError:
            return
        try:
            super().handle()
        except _Deadline:  # pragma: no cover - caught below; belt and braces
            pass

    def handle_one_request(self):
        budget = self.server.afb.handshake_timeout
        if self._first_request:
            budget -= time.monotonic() - self._t0
            self._first_request = False
        if budget <= 0:
            return None
        self._deadline = Timeout.start_new(budget, _Deadline)
        try:
            result = super().handle_one_request()
        except _Deadline:
            log.debug("handshake timeout for %s", self._peer())
            return None
        finally:
            self._deadline.close()
            self._deadline = None
        if isinstance(result, tuple):
            # pywsgi's own bare error answers -> nginx-looking ones.
            code = 414 if str(result[0]).startswith("414") else 400
            return result[0], raw_error_response(code)
        return result

    def _handle_client_error(self, ex):
        if isinstance(ex, (_Deadline, OSError)):
            log.debug("dropping %s while reading its request: %s",
                      self._peer(), ex or type(ex).__name__)
            return None
        log.debug("bad HTTP request from %s: %s", self._peer(), ex)
        return ("400", raw_error_response(400))

    def log_request(self):
        # pywsgi's access log (server.log; a no-op unless make_server got log=);
        # not gevent-websocket's logger.
        WSGIHandler.log_request(self)

    def _peer(self):
        addr = self.client_address
        return addr[0] if isinstance(addr, tuple) else (addr or "?")

    # --- the decision ------------------------------------------------------

    def run_application(self):
        if self._deadline is not None:
            self._deadline.cancel()
        env = self.environ
        st = self.server.afb
        attempt = ("websocket" in env.get("HTTP_UPGRADE", "").lower()
                   or "HTTP_SEC_WEBSOCKET_KEY" in env)
        if not attempt:
            return self._decoy()
        key, reason = self._check_upgrade(env, st.path)
        principal = None
        if reason is None:
            try:
                principal = st.authorize(env)
            except AuthError as exc:
                reason = "not authorized (%s)" % (exc or "no reason")
            except Exception:  # noqa: BLE001 - a bug in authorize must not leak out
                log.exception("authorize() failed")
                reason = "authorize() failed"
        if reason is not None:
            log.info("refused WebSocket upgrade from %s: %s", self._peer(), reason)
            return self._decoy()
        self._upgrade(key, principal)

    def _check_upgrade(self, env, path):
        """``(key, None)`` for a valid upgrade request, else ``(None, reason)``."""
        method = env.get("REQUEST_METHOD", "")
        if method != "GET":
            return None, "method %.16r" % method
        if env.get("PATH_INFO") != path:
            return None, "wrong path %.64r" % env.get("PATH_INFO")
        if self.request_version != "HTTP/1.1":
            return None, "HTTP version %.16r" % self.request_version
        if "websocket" not in header_tokens(env.get("HTTP_UPGRADE", "")):
            return None, "no 'Upgrade: websocket'"
        if "upgrade" not in header_tokens(env.get("HTTP_CONNECTION", "")):
            return None, "no 'Connection: upgrade'"
        version = env.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip()
        if version != "13":
            return None, "unsupported Sec-WebSocket-Version %.16r" % version
        key = env.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
        try:
            raw = base64.b64decode(key.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeError):
            raw = b""
        if len(raw) != 16:
            return None, "malformed Sec-WebSocket-Key"
        return key, None

    def _decoy(self):
        body_len = self.content_length or 0
        chunked = "chunked" in self.environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if body_len > MAX_DISCARD or chunked:
            # Do not read a big body just to throw it away: answer and close.
            self.close_connection = True
            self.wsgi_input._chunked_input_error = True  # makes _discard() a no-op
        return WSGIHandler.run_application(self)

    def _upgrade(self, key, principal):
        st = self.server.afb
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest())
        response = ("HTTP/1.1 101 Switching Protocols\r\nServer: %s\r\nDate: %s\r\n"
                    "Connection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                    % (SERVER_HEADER, http_date(time.time()), accept.decode("ascii")))
        self.status = b"101 Switching Protocols"
        self._orig_status = "101 Switching Protocols"
        self.code = 101
        self.headers_sent = True
        self.connection_upgraded = True
        self.close_connection = True
        sock = self.socket
        try:
            sock.sendall(response.encode("latin-1"))
        except OSError as exc:
            log.debug("upgrade answer to %s failed: %s", self._peer(), exc)
            return
        self.response_length = len(response)
        initial = self.rfile.drain()
        sock.settimeout(None)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        ws = WsConnection(sock, client=False, max_message=st.max_message, initial=initial,
                          peer=self.client_address)
        try:
            st.on_tunnel(ws, principal, self.environ)
        except GreenletExit:
            ws.close(CLOSE_GOING_AWAY, "server shutting down")
            raise
        except AfbError as exc:
            log.info("tunnel from %s ended: %s", self._peer(), exc)
            ws.close(exc.close_code, str(exc))
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, None):
                log.info("tunnel from %s lost: %s", self._peer(), exc)
        except Exception:  # noqa: BLE001
            log.exception("tunnel handler for %s failed", self._peer())
            ws.close(CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            ws.close()


#: Listen backlog: bursts of new connections must not overflow it (the kernel
#: caps it at net.core.somaxconn).
LISTEN_BACKLOG = 4096


class TunnelServer(WSGIServer):
    """WSGIServer whose TLS handshake is bounded by the handshake timeout."""

    handler_class = TunnelHandler
    afb = None  # _Settings, set by make_server

    def wrap_socket_and_handle(self, client_socket, address):
        limit = self.afb.handshake_timeout
        t0 = time.monotonic()
        _nodelay(client_socket)
        try:
            client_socket.settimeout(limit)
            with Timeout(limit, _Deadline):
                ssl_socket = self.wrap_socket(client_socket, **self.ssl_args)
        except (_Deadline, OSError, ValueError) as exc:
            log.debug("TLS handshake with %s failed: %s",
                      address[0] if isinstance(address, tuple) else address,
                      exc or type(exc).__name__)
            try:
                client_socket.close()
            except OSError:
                pass
            return None
        try:
            return self.handle(ssl_socket, address, t0)
        finally:
            try:
                ssl_socket.close()
            except OSError:
                pass

    def handle(self, sock, address, t0=None):  # pylint:disable=arguments-differ
        if t0 is None:      # plain ws://: not done in wrap_socket_and_handle
            _nodelay(sock)
        handler = self.handler_class(sock, address, self)
        if t0 is not None:
            handler._t0 = t0
        handler.handle()


def _nodelay(sock):
    """TCP_NODELAY from the start, like nginx: without it a response written in two
    pieces waits for the peer's delayed ACK (~40 ms), on the decoy site too."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def make_server(listen, on_tunnel, *, authorize, path="/", ssl_context=None, decoy_dir=None,
                max_message=1 << 20, handshake_timeout=10, log=None):
    """A (not yet started) WSGIServer for the tunnel on *listen* = (host, port).

    *log* is pywsgi's access log (None: none; a Logger: one line per request
    at INFO).  Errors go to the ``afb.transport.wsserver`` logger.
    """
    host, port = listen[0], listen[1]
    ssl_kw = {"ssl_context": ssl_context} if ssl_context is not None else {}
    server = TunnelServer(
        (host, port), DecoyApp(decoy_dir), backlog=LISTEN_BACKLOG, log=log,
        error_log=logging.getLogger(__name__),
        environ={"SERVER_NAME": str(host), "SERVER_SOFTWARE": SERVER_HEADER}, **ssl_kw)
    server.afb = _Settings(on_tunnel=on_tunnel, authorize=authorize, path=path,
                           max_message=max_message, handshake_timeout=float(handshake_timeout))
    return server


__all__ = ["make_server", "DecoyApp", "TunnelHandler", "TunnelServer"]
