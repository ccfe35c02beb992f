"""A listening socket that accepts from the event loop, without greenlets.

gevent's ``StreamServer`` wraps every accepted connection in a gevent socket
(two watchers made, and torn down again on close) and starts a greenlet for
it.  For a proxy that hands each connection to callback-driven code (the
SOCKS5 handshake, then a :class:`~afb.transport.relay.SocketRelay`) both are
overhead on every new stream: :class:`Acceptor` calls ``on_accept(sock,
address)`` in the accept callback itself, with a plain, non-blocking socket.
"""

import errno
import logging
import socket
import time

import gevent

from afb.transport.sockets import PlainSocket

log = logging.getLogger(__name__)

#: Connections taken per readiness callback (others wait for the next one).
MAX_ACCEPT = 64
#: After running out of descriptors or memory, accepting pauses this long.
PAUSE_AFTER_ERROR = 0.1
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_PEER_ERRORS = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR)


class Acceptor:
    """Listen on ``address`` and pass each new connection to ``on_accept``."""

    def __init__(self, address, on_accept, backlog=4096):
        self.listen_address = address
        self.on_accept = on_accept
        self.backlog = backlog
        self.sock = None
        self._watcher = None
        self._pause = None
        self._last_warning = 0.0

    @property
    def address(self):
        """The bound ``(host, port)`` (after :meth:`start`)."""
        return self.sock.getsockname()[:2]

    def start(self):
        host, port = self.listen_address
        family, kind, proto, _name, sockaddr = socket.getaddrinfo(
            host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
        sock = PlainSocket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(self.backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        loop = gevent.get_hub().loop
        self._watcher = loop.io(sock.fileno(), 1)
        self._pause = loop.timer(PAUSE_AFTER_ERROR)
        self._watcher.start(self._accept_ready)

    def close(self):
        """Stop accepting and close the listening socket (idempotent)."""
        for watcher in (self._watcher, self._pause):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self._watcher = self._pause = None
        if self.sock is not None:
            self.sock.close()

    def _accept_ready(self):
        listener = self.sock
        family, kind, proto = listener.family, listener.type, listener.proto
        for _ in range(MAX_ACCEPT):
            try:
                # _accept() rather than accept(): in a monkey-patched process
                # accept() would wrap the descriptor in a gevent socket.
                fd, address = listener._accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _PEER_ERRORS:
                    continue
                self._accept_failed(exc)
                return
            conn = PlainSocket(family, kind, proto, fileno=fd)
            try:
                conn.setblocking(False)
                self.on_accept(conn, address)
            except Exception:       # a bug in the handler must not stop the listener
                log.exception("handling a new connection from %s failed", address)
                conn.close()

    def _accept_failed(self, exc):
        now = time.monotonic()
        if now - self._last_warning > 1.0:
            self._last_warning = now
            pausing = exc.errno in _RESOURCE_ERRORS
            log.warning("accept failed: %s%s", exc,
                        "; pausing new connections briefly" if pausing else "")
        if exc.errno in _RESOURCE_ERRORS and self._watcher is not None:
            self._watcher.stop()
            self._pause.start(self._resume)

    def _resume(self):
        if self._watcher is not None:
            self._watcher.start(self._accept_ready)
