"""The server's listening socket, shared with its successor during a restart (SO_REUSEPORT).

A restart that stops the old server before the new one listens leaves a
moment in which nobody listens: clients' dials are refused, and they back
off.  With SO_REUSEPORT a new ``afb server`` listens on the same port while
the old one still runs; on SIGTERM the old one closes its listener and sends
GOAWAY, and clients dial the new one at once.  Measured with
``bench/restart`` (a new SOCKS5 connection every 20-50 ms through a client,
12 restarts): no connection lost, the longest wait 14 ms; stopping first,
then starting, the waits were 0.5 s.

The kernel lets only sockets of the same user share a port, and splits new
connections between them.  Connections it queued for a listener that then
closes without accepting them are reset (unless ``net.ipv4.tcp_migrate_req``
is 1, Linux 5.14+: then they move to the other listener).
"""

import errno
import logging
import socket

from gevent.socket import socket as GeventSocket

log = logging.getLogger(__name__)


def reuse_port_listener(address, backlog, family):
    """A listening socket on ``address`` with SO_REUSEADDR and SO_REUSEPORT.

    If another socket already listens there with SO_REUSEPORT (an afb server
    being replaced), the kernel splits new connections between both until
    that one closes: fine during a restart, a mistake otherwise, so it is
    said in one warning (a first bind without SO_REUSEPORT finds out).
    Errors are gevent's: the OSError of bind() with the address added.
    """
    shared = False
    if address[1]:
        probe = socket.socket(family)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            shared = exc.errno == errno.EADDRINUSE
        finally:
            probe.close()
    sock = GeventSocket(family)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if getattr(exc, "strerror", None) is not None:
            exc.strerror += ": " + repr(address)
        raise
    sock.setblocking(0)
    if shared:
        log.warning("another process listens on port %d too (SO_REUSEPORT): new connections "
                    "are shared with it until it stops; right while an old afb server drains "
                    "after a restart, a mistake otherwise", address[1])
    return sock


__all__ = ["reuse_port_listener"]
