"""The server's side of a SOCKS5 UDP association: datagrams to and from destinations.

An OPEN with ``CMD_UDP_ASSOCIATE`` makes a :class:`UdpAssociation` (the
stream counts as one against ``max_streams`` and ``max_streams_per_user``,
so a user cannot hold more associations than streams).  Each DATAGRAM the
client sends names a destination:

1. an IP literal goes out at once; a name is first checked against the
   ACL's name rules, then resolved (:mod:`afb.transport.resolver`, cached,
   in a greenlet: the reader never blocks) while its datagrams wait, at
   most ``[udp] max_queue`` of them per association;
2. the resolved address is checked against the destination ACL
   (:meth:`~afb.policy.acl.DestinationAcl.check_address`), so a name that
   resolves to 127.0.0.1 is refused like the literal: a refused datagram is
   dropped and counted (``dropped_acl``), with a rate-limited log line;
3. it leaves from an unconnected UDP socket of its address family (made on
   first use, at most one per family), and the destination joins the
   association's *peers*: the only endpoints whose datagrams come back.  The
   set is small (:data:`MAX_PEERS`, the least recently used forgotten), so a
   client cannot make it grow, and a stranger that learnt the socket's port
   cannot inject datagrams (``dropped_source``).

Datagrams back go to the client as DATAGRAM frames carrying their source
address, charged to the tunnel's ``down`` budget and dropped when it is
spent (:func:`~afb.transport.udp_common.send_to_tunnel`).  The user's
bandwidth limits (``[qos]``, :mod:`afb.transport.shaper`) police datagrams
both ways: one that finds the user's bucket empty is dropped
(``dropped_rate``), as a router polices UDP, since there is no sender to
slow down.  The association
ends with the stream (the client's FIN or RST, the tunnel's end) or after
``[udp] idle_timeout`` seconds without a datagram (then FIN to the client,
which closes the app's control connection).
"""

import ipaddress
import logging
import socket
from collections import OrderedDict

from afb.codec import frames
from afb.errors import AfbError, HostUnreachable, NotAllowed
from afb.monitor.counters import count_udp
from afb.ratelog import LogLimiter
from afb.transport.sockets import PlainSocket
from afb.transport.udp_common import DatagramSink, DatagramSocket, IdleTimer, send_to_tunnel

__all__ = ["UdpAssociation", "MAX_PEERS"]

log = logging.getLogger(__name__)

#: Destinations an association remembers as allowed to answer (least recently
#: used first out): DNS, QUIC, a game or a call talk to a handful.
MAX_PEERS = 256
#: Refused or unresolvable datagrams: a few lines per tunnel a minute.
_refused_log = LogLimiter(log, interval=60.0, burst=5)


def _literal(host):
    """``(ip, family)`` of an IP literal, else None."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return str(ip), socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _within_rate(shaper, size):
    """Whether the user's ``shaper`` lets ``size`` bytes through now (then spent), else
    the datagram is dropped and counted."""
    if shaper is None or not shaper.limited:
        return True
    if shaper.ready(size) < size:
        count_udp("dropped_rate")
        return False
    shaper.spend(size)
    return True


class UdpAssociation(DatagramSink):
    """One association on the server (see the module doc)."""

    def __init__(self, session, stream, resolver, acl, settings):
        """``acl()``: the destination ACL in force (it changes with the host's addresses)."""
        self.session = session
        self.stream = stream
        self.resolver = resolver
        self.acl = acl
        self.max_queue = settings.max_queue
        self.label = "%s: udp %d" % (session.label, stream.id)
        self.sockets = {}               # family -> DatagramSocket
        self.peers = OrderedDict()      # (ip, port) -> None, least recently used first
        self.pending = {}               # name -> [(port, data)] waiting for its lookup
        self.pending_count = 0
        self.idle = IdleTimer(settings.idle_timeout, self._idle)
        self.closed = False
        user = session.user          # its rate limits (None: none)
        self.shape_down = getattr(user, "shape_down", None)
        self.shape_up = getattr(user, "shape_up", None)

    def __repr__(self):
        return "<UdpAssociation %s>" % self.label

    def start(self):
        count_udp("associations")
        self.stream.attach(self)

    # --- client -> destinations ------------------------------------------------------

    def on_datagram(self, payload):
        if self.closed:
            count_udp("dropped_no_association")
            return
        try:
            host, port, data = frames.parse_datagram(payload)
        except AfbError as exc:
            count_udp("dropped_malformed")
            _refused_log.info(self.session.label, "bad DATAGRAM", "%s: bad DATAGRAM: %s",
                              self.label, exc)
            return
        self.stream.bytes_in += len(data)
        self.idle.touch()
        if not _within_rate(self.shape_up, len(data)):
            return
        literal = _literal(host)
        if literal is not None:
            self._send(literal[0], literal[1], port, host, data)
            return
        try:
            self.acl().check_name(host, port)
        except NotAllowed as exc:
            self._refused(host, port, exc)
            return
        if self.pending_count >= self.max_queue:
            count_udp("dropped_queue_full")
            return
        waiting = self.pending.get(host)
        self.pending_count += 1
        if waiting is not None:
            waiting.append((port, bytes(data)))
            return
        self.pending[host] = [(port, bytes(data))]
        self.session.tasks.spawn(self._resolve, host)

    def _resolve(self, host):
        """In a greenlet: look ``host`` up, then send what waited for it."""
        error, addrs = None, ()
        try:
            addrs = self.resolver.resolve(host, 0)
        except HostUnreachable as exc:
            error = exc
        waiting = self.pending.pop(host, ())
        self.pending_count -= len(waiting)
        if self.closed:
            return
        for port, data in waiting:
            if error is not None:
                count_udp("send_errors")
                _refused_log.info(self.session.label, "UDP name not resolved", "%s: UDP "
                                  "datagram to %s:%d dropped: %s", self.label, host, port, error)
                continue
            self._send_resolved(host, port, addrs, data)

    def _send_resolved(self, host, port, addrs, data):
        """To the first of ``addrs`` the ACL allows (in resolver order)."""
        refusal = None
        acl = self.acl()
        for family, sockaddr in addrs:
            try:
                acl.check_address(sockaddr[0], port, host)
            except NotAllowed as exc:
                refusal = refusal or exc
                continue
            self._send(sockaddr[0], family, port, host, data, checked=True)
            return
        self._refused(host, port, refusal or HostUnreachable("no address for %s" % host))

    def _send(self, ip, family, port, host, data, checked=False):
        if not checked:
            try:
                self.acl().check_address(ip, port, host)
            except NotAllowed as exc:
                self._refused(host, port, exc)
                return
        sock = self.sockets.get(family)
        if sock is None:
            try:
                sock = self.sockets[family] = DatagramSocket(
                    PlainSocket(family, socket.SOCK_DGRAM), self._from_destination,
                    self.max_queue)
            except OSError as exc:          # out of descriptors
                count_udp("send_errors")
                _refused_log.warning(self.session.label, "no UDP socket", "%s: cannot make "
                                     "a UDP socket: %s", self.label, exc)
                return
            sock.start()
        address = (ip, port) if family == socket.AF_INET else (ip, port, 0, 0)
        if not sock.send(data, address):
            return
        count_udp("datagrams_up")
        peers, key = self.peers, (ip, port)
        if key in peers:
            peers.move_to_end(key)
        else:
            peers[key] = None
            if len(peers) > MAX_PEERS:
                peers.popitem(last=False)

    def _refused(self, host, port, exc):
        count_udp("dropped_acl" if isinstance(exc, NotAllowed) else "send_errors")
        _refused_log.info(self.session.label, "UDP datagram refused", "%s: UDP datagram to "
                          "%s:%d refused: %s", self.label, host, port, exc,
                          extra={"event": "udp_refused", "user": self.session.claims.get("sub")})

    # --- destinations -> client ------------------------------------------------------

    def _from_destination(self, data, address):
        key = (address[0], address[1])
        if key not in self.peers:
            count_udp("dropped_source")
            return
        self.idle.touch()
        if _within_rate(self.shape_down, len(data)):
            send_to_tunnel(self.stream, key[0], key[1], data, "datagrams_down")

    # --- the end ----------------------------------------------------------------------

    def _idle(self, seconds):
        self.close("idle for %.0f s ([udp] idle_timeout)" % seconds)

    def close(self, reason=""):
        """Close the sockets; FIN to the client unless the stream was reset."""
        if self.closed:
            return
        self.closed = True
        self.idle.stop()
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        self.pending.clear()
        self.pending_count = 0
        self.peers.clear()
        if self.stream.reset_error is None:
            self.stream.close_write()
        log.debug("%s: UDP association ended: %s", self.label, reason or "closed")
