"""Socket odds and ends every part of the transport uses: plain sockets, no delay, closing.

:data:`PlainSocket` is the standard library's socket class even in a
monkey-patched process: the sockets afb drives with its own watchers
(accepted by the acceptor, dialled by ``dial_nowait``, relayed by
:class:`~afb.transport.relay.SocketRelay`) need no gevent wrapper, no
watchers of its own and no costly gevent close.
"""

import socket
import struct

from gevent.monkey import get_original

__all__ = ["PlainSocket", "close_socket", "peer_name", "set_nodelay"]

PlainSocket = get_original("socket", "socket")
_LINGER_ABORT = struct.pack("ii", 1, 0)


def set_nodelay(sock):
    """TCP_NODELAY, as on every socket afb writes to: without it a message written in
    two pieces waits for the peer's delayed ACK (~40 ms); not TCP: nothing to do."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def close_socket(sock, abort=False):
    """Close ``sock`` (errors ignored); with ``abort`` the peer sees a reset, not a clean EOF."""
    if abort:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
        except OSError:
            pass
    try:
        sock.close()
    except OSError:
        pass


def peer_name(sock, default="socket"):
    """``host:port`` of the peer (IPv6 in brackets), or ``default`` when there is none."""
    try:
        host, port = sock.getpeername()[:2]
    except (OSError, TypeError, ValueError):
        return default
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
