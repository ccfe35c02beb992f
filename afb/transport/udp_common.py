"""What both ends of a SOCKS5 UDP association share: settings, the socket, the sink.

An association (RFC 1928, section 7) is a tunnel stream opened with
``CMD_UDP_ASSOCIATE``; its datagrams travel as DATAGRAM frames on that
stream (:mod:`afb.codec.frames`).  The client side is
:mod:`afb.transport.udp_relay`, the server side
:mod:`afb.transport.udp_association`; both drive their UDP sockets with a
:class:`DatagramSocket` and hang on their stream as a :class:`DatagramSink`.

UDP may drop, never grow: every queue here is bounded, and a datagram that
finds it full is dropped and counted (:data:`afb.monitor.counters.UDP`).
Towards the tunnel the queue is the session's writer, bounded by the
tunnel's ``down`` budget: a datagram that finds the budget spent is dropped
(stream credit does not apply to datagrams, or one slow association would
stall behind a window meant for bytes that must all arrive).  Towards a UDP
socket, what the kernel does not take at once (EAGAIN: its send buffer is
full) waits in a queue of at most ``max_queue`` datagrams and
:data:`MAX_QUEUE_BYTES` bytes.
"""

import errno
import logging
from collections import deque
from dataclasses import dataclass

import gevent

from afb.codec import frames
from afb.errors import AfbError
from afb.monitor.counters import count_udp
from afb.transport.sockets import close_socket

log = logging.getLogger(__name__)

#: The largest UDP payload (IPv4: 65,535 - 8 - 20); a read takes one whole.
MAX_DATAGRAM = 65535
#: Datagrams read per wake-up of a socket's watcher before the loop serves
#: the others (libev's watchers are level-triggered: the rest are read next
#: iteration), so a flood on one association cannot starve the tunnel.
READ_BURST = 64
#: Bytes at most in one socket's send queue, whatever ``max_queue`` says.
MAX_QUEUE_BYTES = 256 * 1024
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


@dataclass(frozen=True)
class UdpSettings:
    """The ``[udp]`` section: on or off, idle timeout, the queue bound."""

    enabled: bool = True
    idle_timeout: float = 120.0
    max_queue: int = 64


def udp_settings(section=None):
    """:class:`UdpSettings` from a config's ``[udp]`` section (None: the defaults)."""
    if not section:
        return UdpSettings()
    defaults = UdpSettings()
    return UdpSettings(enabled=section.get("enabled", defaults.enabled),
                       idle_timeout=section.get("idle_timeout", defaults.idle_timeout),
                       max_queue=section.get("max_queue", defaults.max_queue))


class DatagramSocket:
    """A non-blocking UDP socket driven by two libev watchers, with a bounded send queue.

    ``on_datagram(data, address)`` runs in the event loop for each datagram
    read (must not block).  :meth:`send` returns True when the datagram was
    sent or queued, False when it was dropped (counted here).
    """

    __slots__ = ("sock", "on_datagram", "max_queue", "queue", "queued_bytes", "closed",
                 "_reader", "_writer")

    def __init__(self, sock, on_datagram, max_queue):
        sock.setblocking(False)
        self.sock = sock
        self.on_datagram = on_datagram
        self.max_queue = max_queue
        self.queue = deque()
        self.queued_bytes = 0
        self.closed = False
        loop = gevent.get_hub().loop
        self._reader = loop.io(sock.fileno(), 1)
        self._writer = None

    def start(self):
        self._reader.start(self._readable)

    def _readable(self):
        recvfrom = self.sock.recvfrom
        for _ in range(READ_BURST):
            if self.closed:
                return
            try:
                data, address = recvfrom(MAX_DATAGRAM)
            except OSError as exc:
                if exc.errno not in _AGAIN:
                    # An ICMP error queued on the socket (a port unreachable of
                    # an earlier send): it concerns one datagram, not this one.
                    log.debug("UDP receive: %s", exc)
                    continue
                return
            self.on_datagram(data, address)

    def send(self, data, address):
        if self.closed:
            return False
        if not self.queue:
            try:
                self.sock.sendto(data, address)
                return True
            except OSError as exc:
                if exc.errno not in _AGAIN:
                    count_udp("send_errors")
                    log.debug("UDP send to %s: %s", address[0], exc)
                    return False
        if len(self.queue) >= self.max_queue or self.queued_bytes + len(data) > MAX_QUEUE_BYTES:
            count_udp("dropped_queue_full")
            return False
        self.queue.append((bytes(data), address))
        self.queued_bytes += len(data)
        if self._writer is None:
            self._writer = gevent.get_hub().loop.io(self.sock.fileno(), 2)
        if not self._writer.active:
            self._writer.start(self._writable)
        return True

    def _writable(self):
        queue = self.queue
        while queue and not self.closed:
            data, address = queue[0]
            try:
                self.sock.sendto(data, address)
            except OSError as exc:
                if exc.errno in _AGAIN:
                    return
                count_udp("send_errors")
                log.debug("UDP send to %s: %s", address[0], exc)
            queue.popleft()
            self.queued_bytes -= len(data)
        if self._writer is not None:
            self._writer.stop()

    def close(self):
        if self.closed:
            return
        self.closed = True
        for watcher in (self._reader, self._writer):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self.queue.clear()
        self.queued_bytes = 0
        close_socket(self.sock)


class DatagramSink:
    """What an association is to its stream: a sink that takes datagrams, not bytes.

    The stream's reader hands DATAGRAM payloads to :meth:`on_datagram`
    (through the session's hook); its end, either way, to :meth:`close`.
    Subclasses set ``stream`` and define ``on_datagram`` and ``close``.
    """

    out_bytes = 0          # no byte stream waits here (Stream.buffered reads it)

    def deliver(self, payload):
        """DATA on an association: not part of the protocol; ignored."""
        log.debug("%r: %d bytes of DATA on a UDP association ignored", self, len(payload))

    def credit_available(self):
        """Stream credit does not apply to datagrams."""

    def remote_eof(self):
        self.close("the peer ended the association")

    def abort(self, error):
        self.close(str(error))


class IdleTimer:
    """Calls ``on_idle(seconds)`` once nothing moved for ``timeout`` seconds.

    ``touch()`` is one attribute store per datagram; a repeating libev timer
    looks at it four times a timeout (as the tunnel's idle sweeper does).
    """

    __slots__ = ("timeout", "last", "on_idle", "_timer", "_clock")

    def __init__(self, timeout, on_idle):
        loop = gevent.get_hub().loop
        self.timeout = timeout
        self.on_idle = on_idle
        self._clock = loop.now
        self.last = self._clock()
        self._timer = None
        if timeout > 0:
            interval = max(0.05, min(timeout / 4.0, 30.0))
            self._timer = loop.timer(interval, interval)
            self._timer.start(self._check)

    def touch(self):
        self.last = self._clock()

    def _check(self):
        idle = self._clock() - self.last
        if idle >= self.timeout:
            self.stop()
            self.on_idle(idle)

    def stop(self):
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None


def send_to_tunnel(stream, host, port, data, kind):
    """Queue one datagram for the peer as a DATAGRAM frame of ``stream``; False: dropped.

    Dropped (and counted) when the association is over, the address cannot
    be encoded, the frame would not fit the peer's largest message, or the
    tunnel's ``down`` budget is spent; ``kind`` is what a sent one counts as
    (``datagrams_up`` on the client, ``datagrams_down`` on the server).
    """
    session = stream.session
    if stream.reset_error is not None or stream.local_fin or session.closed:
        count_udp("dropped_no_association")
        return False
    try:
        payload = frames.datagram_payload(host, port, data)
    except AfbError:
        count_udp("dropped_malformed")
        return False
    if len(payload) + frames.HEADER_SIZE > session.writer.batch_limit:
        count_udp("dropped_too_big")
        return False
    if session.down.exhausted:
        count_udp("dropped_queue_full")
        return False
    session.queue(stream.id, frames.DATAGRAM, payload)
    stream.bytes_out += len(data)
    count_udp(kind)
    return True


def plain_ip(ip):
    """``ip`` without an IPv4-mapped prefix or a scope id (``::ffff:127.0.0.1`` -> 127.0.0.1)."""
    ip = ip.partition("%")[0]
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip
