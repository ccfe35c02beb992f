"""``[server] proxy_protocol = on``: the client's address from a trusted sender's PROXY header.

Behind HAProxy in TLS passthrough every connection comes from HAProxy, so
without this the per-source pending cap, the failed-login bans, the source
lists and the logs all see one address -- every user at once.  With
``send-proxy-v2`` on HAProxy's server lines each connection starts with a
PROXY header (:mod:`afb.codec.proxy_protocol`) carrying the client's
address, read here before TLS under the front door's deadline.

Who must send one: only peers in ``[access] trusted_proxies``.  Their
connections *must* start with a header (a trusted peer without one is
closed, one rate-limited log line: HAProxy without ``send-proxy-v2``
would otherwise make every client look like HAProxy again, silently;
one that closes without sending a byte is a TCP check, logged at debug);
connections from anyone else are served as direct connections and never
read for a header, so a client on a misconfigured LAN cannot claim another
address by sending one.

The header is peeked, then exactly its own bytes are received, so the TLS
handshake that follows finds the socket as the client left it (the TLS
layer cannot be handed bytes already read): one peek and one recv per
connection, plus the parse (measured here: 5 us for a v2 IPv4 header,
21 us for a v1 IPv6 line -- next to a TLS handshake's milliseconds).  Once the header is read the
pending-connection count moves from the proxy to the client
(:class:`~afb.transport.admission.Admission`): the client's own cap
applies, and a client over it is closed like a direct one would be.
"""

import logging
import socket
import time

from afb.codec.proxy_protocol import ProxyHeaderError, ProxyHeaderParser
from afb.monitor.counters import count
from afb.policy.access import normalize_ip

log = logging.getLogger(__name__)

__all__ = ["ProxyHeaderReader"]

#: Bytes peeked at once: a v1 line (107) or a v2 header with its usual TLVs.
PEEK = 512


class ProxyHeaderReader:
    """``read(sock, address, deadline)``: the client's (host, port), or *address* itself."""

    def __init__(self, trusted, limiter):
        self.trusted = tuple(trusted)
        self.limiter = limiter

    def trusts(self, ip):
        try:
            addr = normalize_ip(ip)
        except ValueError:
            return False
        return any(addr.version == net.version and addr in net for net in self.trusted)

    def read(self, sock, address, deadline):
        """The source address of the header a trusted peer sent (*address* for
        an untrusted peer, LOCAL or UNKNOWN); ProxyHeaderError (already logged)
        or OSError when there is none."""
        ip = address[0] if isinstance(address, tuple) else str(address)
        if not self.trusts(ip):
            return address
        try:
            header = _read(sock, deadline)
        except _NothingSent:
            log.debug("connection from trusted proxy %s closed before sending anything", ip)
            raise
        except ProxyHeaderError as exc:
            count("source_refusals")
            self.limiter.warning(ip, "connection without a valid PROXY header",
                                 "connection from trusted proxy %s closed: %s (with [server] "
                                 "proxy_protocol = on, peers in trusted_proxies must send one: "
                                 "HAProxy's send-proxy-v2)", ip, exc,
                                 extra={"event": "proxy_header_refused", "peer": ip})
            raise
        if header.source is None:
            return address
        log.debug("PROXY v%d header from %s: client %s:%d", header.version, ip,
                  header.source[0], header.source[1])
        return header.source


class _NothingSent(ProxyHeaderError):
    """Connected and closed without a byte: a TCP health check, not worth a warning."""


def _read(sock, deadline):
    parser = ProxyHeaderParser()
    taken = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProxyHeaderError("no complete PROXY header before the header timeout")
        sock.settimeout(left)
        try:
            data = sock.recv(PEEK, socket.MSG_PEEK)
        except socket.timeout:
            raise ProxyHeaderError("no complete PROXY header before the header timeout") \
                from None
        if not data:
            if not taken:
                raise _NothingSent("closed before sending a PROXY header")
            raise ProxyHeaderError("closed within the PROXY header")
        fed = len(parser.buffer)
        header = parser.feed(data)
        # Everything fed is header unless the header ended in it: take only that.
        want = (header.consumed - fed) if header is not None else len(data)
        _take(sock, want)
        taken += want
        if header is not None:
            return header


def _take(sock, size):
    """Receive *size* bytes the peek showed are there (they belong to the header)."""
    while size > 0:
        got = sock.recv(size)
        if not got:
            raise ProxyHeaderError("closed within the PROXY header")
        size -= len(got)
