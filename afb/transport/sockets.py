"""Socket odds and ends every part of the transport uses: plain sockets, no delay, closing.

:data:`PlainSocket` is the standard library's socket class even in a
monkey-patched process: the sockets afb drives with its own watchers
(accepted by the acceptor, dialled by ``dial_nowait``, relayed by
:class:`~afb.transport.relay.SocketRelay`) need no gevent wrapper, no
watchers of its own and no costly gevent close.
"""

import fcntl
import socket
import struct

from gevent.monkey import get_original

__all__ = ["PlainSocket", "TUNNEL_NOTSENT_LOWAT", "close_socket", "peer_name",
           "set_nodelay", "set_notsent_lowat", "unsent_bytes"]

PlainSocket = get_original("socket", "socket")
_LINGER_ABORT = struct.pack("ii", 1, 0)
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
_SIOCOUTQNSD = 0x894B
_INT = bytes(4)

#: TCP_NOTSENT_LOWAT of a tunnel's socket while its writer paces (a slow link,
#: :mod:`afb.transport.frame_writer`), both ends.  The kernel keeps at
#: most about this much unsent data below the writer's scheduler (without it
#: the send buffer autotunes to megabytes, and an echo queued behind a bulk
#: download waited for all of it: +100 ms on a 20 Mbit/s link); what is
#: refused waits in the scheduler, where an interactive stream can still
#: pass it.  Sent-but-unacknowledged data is not limited by it, so a far
#: peer still gets a full congestion window.  HTTP/2 servers use 16-64 KiB
#: (h2o, nginx guides: 16 KiB); see bench/latency_under_load.
TUNNEL_NOTSENT_LOWAT = 16 * 1024


def set_nodelay(sock):
    """TCP_NODELAY, as on every socket afb writes to: without it a message written in
    two pieces waits for the peer's delayed ACK (~40 ms); not TCP: nothing to do."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def set_notsent_lowat(sock, size=TUNNEL_NOTSENT_LOWAT):
    """TCP_NOTSENT_LOWAT on ``sock`` (a TLS socket too), 0: the system's default (no
    mark, as net.ipv4.tcp_notsent_lowat ships); not TCP, old kernel: nothing to do."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, size)
    except (OSError, AttributeError):
        pass


def unsent_bytes(sock):
    """Bytes the kernel holds for ``sock`` and has not sent yet (SIOCOUTQNSD), 0 if unknown."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQNSD, _INT))[0]
    except (OSError, ValueError):
        return 0


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
