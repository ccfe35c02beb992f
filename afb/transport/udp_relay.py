"""The client's UDP relay: one SOCKS5 UDP association of one local app (RFC 1928, section 7).

After a UDP ASSOCIATE request the local proxy opens a tunnel stream with
``CMD_UDP_ASSOCIATE``, binds a UDP socket next to itself
(:func:`bind_next_to`: the address the app reached the proxy at, an
ephemeral port) and tells the app that address.  A :class:`UdpRelay` then
moves datagrams between that socket and the stream's DATAGRAM frames:

* only the associating app may use the relay: a datagram must come from the
  TCP control connection's peer address, and from the port the request
  named (or, if it named 0, the port of the first datagram); any other is
  dropped and counted (``dropped_source``);
* a fragment (FRAG != 0) is dropped and counted (``dropped_fragment``):
  reassembly is optional in the RFC, and a piece sent as a whole datagram
  would be wrong data;
* the association ends when the TCP control connection closes (the RFC's
  rule), when the server ends it, when the tunnel goes, or after
  ``[udp] idle_timeout`` seconds without a datagram either way; the relay
  socket is closed and the stream ends with FIN.

No greenlet: libev watchers on the UDP socket and the control connection,
as :class:`~afb.transport.relay.SocketRelay` does for TCP.
"""

import logging
import socket

import gevent

from afb.codec import frames
from afb.codec.socks5_udp import build_udp_header, parse_udp_header
from afb.errors import AfbError
from afb.monitor.counters import count_udp
from afb.ratelog import LogLimiter
from afb.transport.sockets import PlainSocket, close_socket
from afb.transport.udp_common import (
    DatagramSink,
    DatagramSocket,
    IdleTimer,
    plain_ip,
    send_to_tunnel,
)

__all__ = ["UdpRelay", "bind_next_to"]

log = logging.getLogger(__name__)

#: Datagrams from strangers or with fragments: a few lines per app a minute.
_dropped_log = LogLimiter(log, interval=60.0, burst=3)


def bind_next_to(control):
    """A UDP socket on the address the app reached the proxy at (``control``'s local
    address), an ephemeral port: the BND.ADDR/BND.PORT of the reply."""
    host = plain_ip(control.getsockname()[0])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = PlainSocket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, 0))
    except OSError:
        sock.close()
        raise
    return sock


class UdpRelay(DatagramSink):
    """One association: the app's datagrams to the stream, the stream's to the app."""

    def __init__(self, control, client_ip, udp_sock, stream, settings, on_close=None, label=""):
        """``control``: the SOCKS5 TCP connection (a plain socket), from ``client_ip``
        (the only address that may use the relay); ``udp_sock``: the
        bound relay socket; ``stream``: the association's, opened with the request's
        address (its port, if not 0, is the only one the app may send from);
        ``on_close(relay)``: called once when the association ends."""
        self.control = control
        self.stream = stream
        self.label = label or "udp %d" % stream.id
        self.client_ip = plain_ip(client_ip)
        self.client_port = stream.port or None      # the port the request named
        self.client_address = None                  # where datagrams go back to
        self.udp = DatagramSocket(udp_sock, self._from_app, settings.max_queue)
        self.idle = IdleTimer(settings.idle_timeout, self._idle)
        self.on_close = on_close
        self.closed = False
        self.close_reason = ""
        self._control = gevent.get_hub().loop.io(control.fileno(), 1)

    def __repr__(self):
        return "<UdpRelay %s stream %d>" % (self.label, self.stream.id)

    @property
    def address(self):
        """(host, port) of the relay socket: what the reply tells the app."""
        return self.udp.sock.getsockname()[:2]

    def start(self):
        count_udp("associations")
        self.stream.attach(self)        # a reset that came first closes us at once
        if self.closed:
            return
        self.udp.start()
        self._control.start(self._control_readable)

    # --- app -> tunnel ----------------------------------------------------------------

    def _from_app(self, data, address):
        ip, port = plain_ip(address[0]), address[1]
        if ip != self.client_ip or (self.client_port is not None and port != self.client_port):
            count_udp("dropped_source")
            _dropped_log.info(self.label, "UDP datagram from a stranger", "%s: UDP datagram "
                              "from %s:%d dropped: only %s may use this association",
                              self.label, ip, port, self.client_ip)
            return
        if self.client_address is None:
            self.client_port = port
            self.client_address = address[:2]
        try:
            packet = parse_udp_header(data)
        except AfbError as exc:
            count_udp("dropped_malformed")
            _dropped_log.info(self.label, "bad UDP datagram", "%s: %s", self.label, exc)
            return
        if packet.frag:
            count_udp("dropped_fragment")
            _dropped_log.info(self.label, "UDP fragment", "%s: UDP fragment (FRAG %d) dropped: "
                              "fragmentation is not supported", self.label, packet.frag)
            return
        self.idle.touch()
        send_to_tunnel(self.stream, packet.host, packet.port, packet.data, "datagrams_up")

    # --- tunnel -> app ---------------------------------------------------------------

    def on_datagram(self, payload):
        """A DATAGRAM from the server: its source address and data, to the app."""
        if self.closed:
            count_udp("dropped_no_association")
            return
        try:
            host, port, data = frames.parse_datagram(payload)
            header = build_udp_header(host, port)
        except AfbError as exc:
            count_udp("dropped_malformed")
            _dropped_log.info(self.label, "bad DATAGRAM", "%s: bad DATAGRAM from the server: "
                              "%s", self.label, exc)
            return
        if self.client_address is None:     # the app has not sent yet: nowhere to go
            count_udp("dropped_no_association")
            return
        self.stream.bytes_in += len(data)
        self.idle.touch()
        if self.udp.send(header + data, self.client_address):
            count_udp("datagrams_down")

    # --- the end ----------------------------------------------------------------------

    def _control_readable(self):
        try:
            data = self.control.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close("TCP control connection: %s" % exc)
            return
        if not data:
            self.close("the app closed the TCP control connection")
        # Anything the app sends on it means nothing (RFC 1928): read and forgotten.

    def _idle(self, seconds):
        self.close("idle for %.0f s ([udp] idle_timeout)" % seconds)

    def close(self, reason=""):
        """End the association: relay socket and control connection closed, FIN sent."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.idle.stop()
        self._control.stop()
        self._control.close()
        self.udp.close()
        close_socket(self.control)
        stream = self.stream
        if stream.reset_error is None:
            stream.close_write()
        log.info("%s: UDP association ended: %s", self.label, reason or "closed")
        if self.on_close is not None:
            self.on_close(self)
