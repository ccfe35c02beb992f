"""The client's local listener: SOCKS5 and HTTP proxy on one port.

The first byte tells the protocols apart (0x05: SOCKS5; a capital letter:
HTTP).  Each accepted request becomes a tunnel stream.  With ``fast_open`` the
app gets its success reply at once and its first bytes leave with the OPEN
(no round trip to the server before the request); a destination that then
fails is reported by resetting the app's connection.  Without it, the app
waits for the server's answer and gets the precise SOCKS5 reply code or HTTP
status.  An absolute-form HTTP request (``GET http://...``) always carries its
head as early data and still gets a precise status: nothing was answered yet.

With a ``users_file``, wrong credentials are answered after
:data:`AUTH_FAILURE_DELAY` and count towards a ban of the source address
(``[client] max_auth_failures`` within ``auth_failure_window`` seconds ban it
for ``ban_time``; IPv6 by /64): the proxy used to let a LAN host try 3,636
passwords a second.  A banned source's connections are closed on accept.

A SOCKS5 UDP ASSOCIATE (``[udp] enabled``) becomes a ``CMD_UDP_ASSOCIATE``
stream and a UDP relay socket next to this listener (:mod:`afb.transport.
udp_relay`); the app gets its address after OPEN_OK, or the server's code.

At most ``[client] max_pending_handshakes`` connections may be in their
handshake at once, HTTP heads included; beyond that the oldest is closed
(:class:`~afb.apps.socks_handshake.PendingHandshakes` says why).
"""

import logging

import gevent
import gevent.socket
from gevent.greenlet import Greenlet
from gevent.hub import get_hub, getcurrent

from afb.apps.socks_handshake import PendingHandshakes, ProxyHandshake, pending_limit
from afb.codec import frames, httpproxy, socks5
from afb.errors import (
    REP_GENERAL_FAILURE,
    REP_SUCCEEDED,
    AfbError,
    DestinationError,
    HttpProxyError,
    TimedOut,
    reply_reason,
)
from afb.monitor.counters import count, count_destination_error
from afb.policy.device_rules import device_key
from afb.policy.proxy_users import parse_basic
from afb.ratelog import LogLimiter
from afb.transport.acceptor import Acceptor
from afb.transport.relay import SocketRelay
from afb.transport.socket_writes import send_whole
from afb.transport.sockets import close_socket, set_nodelay
from afb.transport.udp_common import udp_settings
from afb.transport.udp_relay import UdpRelay, bind_next_to

log = logging.getLogger(__name__)

_HTTP_STATUS = {0x02: 403, 0x03: 502, 0x04: 502, 0x05: 502, 0x06: 504, 0x07: 501, 0x08: 400}

#: Refusals by a device's stream rate: a few lines per device a minute.
_refused_log = LogLimiter(log, interval=60.0, burst=5)


def _mark_priority(session, stream):
    """Ask the tunnel's scheduler to send ``stream``'s frames ahead of bulk streams
    (:meth:`afb.mux.scheduler.FairScheduler.prioritize`; the upload direction: the
    server orders the download by its own new-flow list)."""
    prioritize = getattr(getattr(getattr(session, "writer", None), "sched", None),
                         "prioritize", None)
    if prioritize is not None:
        prioritize(stream.id)


class TooManyStreams(AfbError):
    """A LAN device opens streams faster than ``[qos] max_new_streams_per_second``."""

    http_status = 429


_407_BODY = b"407 Proxy Authentication Required\n"
#: The answer to an HTTP proxy request without valid credentials (users_file set).
PROXY_AUTH_REQUIRED = (
    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
    b'Proxy-Authenticate: Basic realm="proxy", charset="UTF-8"\r\n'
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_407_BODY)) + _407_BODY


#: Seconds a wrong password waits for its refusal.
AUTH_FAILURE_DELAY = 1.0
#: Connections refused for a ban: a few lines per source a minute.
_banned_log = LogLimiter(log, interval=60.0, burst=3)

_SOCKS5_SUCCEEDED = socks5.reply(REP_SUCCEEDED)
_HTTP_ESTABLISHED = httpproxy.response(200)


def start_now(func, *args):
    """Spawn ``func(*args)`` and, from the event loop, run it at once.

    ``gevent.spawn`` starts a greenlet in the next loop iteration; a
    callback that switches into it directly saves that iteration (~30 us
    here) for the connections that need a greenlet.
    """
    greenlet = Greenlet(func, *args)
    if getcurrent() is get_hub():
        greenlet.switch()
    else:
        greenlet.start()
    return greenlet


class LocalProxy:
    """SOCKS5 + HTTP CONNECT listener feeding a :class:`TunnelClient`."""

    def __init__(self, listen, tunnel, *, fast_open=True, open_timeout=10.0,
                 handshake_timeout=10.0, authenticate=None, sources=None, throttle=None,
                 devices=None, udp=None, max_pending_handshakes=1024):
        """*authenticate*: None, or ``(user, password) -> bool`` required of every
        client (SOCKS5 method 2, HTTP ``Proxy-Authorization: Basic``); *sources*:
        None (anyone), or a :class:`~afb.policy.access.SourceAcl` of client addresses;
        *throttle*: the :class:`~afb.policy.access.AuthThrottle` of failed logins;
        *devices*: None (no limits), or the :class:`~afb.transport.devices.Devices`
        whose rates, new streams a second and priority rules each LAN device gets;
        *udp*: :class:`~afb.transport.udp_common.UdpSettings` (None: the defaults);
        *max_pending_handshakes*: see :func:`~afb.apps.socks_handshake.pending_limit`."""
        self.tunnel = tunnel
        self.sources = sources
        self.throttle = throttle if authenticate is not None else None
        self.fast_open = fast_open
        self.open_timeout = open_timeout
        self.handshake_timeout = handshake_timeout
        self.authenticate = authenticate
        self.devices = devices
        self.active = 0
        self.udp = udp if udp is not None else udp_settings()
        self.associations = set()      # the UdpRelays of live UDP associations
        self.pending = PendingHandshakes(pending_limit(max_pending_handshakes))
        # A page load opens dozens of connections at once: a deep backlog.
        self.listener = Acceptor(listen, self._accepted, backlog=4096)

    @property
    def address(self):
        return self.listener.address

    def start(self):
        self.listener.start()
        host, port = self.address
        log.info("SOCKS5 and HTTP proxy listening on %s:%d", host, port)

    def close(self):
        """Stop accepting; connections already accepted go on."""
        self.listener.close()

    # --- per connection -------------------------------------------------------
    # SOCKS5 runs from the event loop, greenlet-free, up to the relay; HTTP
    # requests and every path that may wait (no tunnel yet, fast_open off)
    # get a greenlet.

    def _accepted(self, sock, address):
        peer = "%s:%d" % address[:2]
        if self.sources is not None:
            refused = self.sources.check(address[0])
            if refused:
                count("source_refusals")
                log.warning("%s: connection refused: source %s ([client] allow_sources)",
                            peer, refused)
                close_socket(sock)
                return
        throttle = self.throttle
        authenticate, on_auth_failure = self.authenticate, None
        if throttle is not None:
            ip = address[0]
            if throttle.is_banned(ip):
                _banned_log.warning(throttle.key(ip), "connection of a banned source",
                                    "%s: connection refused: banned for %.0f s more after "
                                    "failed logins", peer, throttle.banned_for(ip))
                close_socket(sock)
                return
            # A ban that starts while this connection is open refuses even the
            # right password: guesses in flight learn nothing.
            authenticate = lambda user, password: (   # noqa: E731
                not throttle.is_banned(ip) and self.authenticate(user, password))
            on_auth_failure = lambda: self._auth_failed(ip, peer)   # noqa: E731
        set_nodelay(sock)
        ProxyHandshake(sock, peer, authenticate=authenticate,
                       timeout=self.handshake_timeout, on_socks=self._socks_request,
                       on_http=self._http_start, on_auth_failure=on_auth_failure,
                       on_udp=self._udp_request if self.udp.enabled else None).start(self.pending)

    def _auth_failed(self, ip, peer):
        """Count a failed login of ``ip``; -> the delay before its refusal."""
        count("auth_failures")
        if self.throttle.failed(ip):
            count("bans")
            log.warning("%s: banned for %.0f s after %d failed logins ([client] "
                        "max_auth_failures)", peer, self.throttle.ban_time,
                        self.throttle.max_failures)
        return AUTH_FAILURE_DELAY

    def _auth_passed(self, peer):
        if self.throttle is not None:
            self.throttle.succeeded(peer.rpartition(":")[0])

    def _socks_request(self, sock, peer, request, leftover):
        self._auth_passed(peer)
        args = (sock, peer, "socks5", request.host, request.port, leftover, request.user)
        if self.fast_open and self.tunnel.live_session() is not None:
            self._open_or_close(*args)          # nothing on this path waits
        else:
            start_now(self._open_or_close, *args)

    def _udp_request(self, sock, peer, request):
        self._auth_passed(peer)
        start_now(self._associate, sock, peer, request)

    def _associate(self, sock, peer, request):
        """UDP ASSOCIATE, in a greenlet (it waits for the server's OPEN_OK)."""
        relay = None
        try:
            relay = self._start_udp(sock, peer, request)
        except (OSError, AfbError) as exc:
            log.info("%s: UDP ASSOCIATE: %s", peer, exc)
        finally:
            if relay is None:
                close_socket(sock)

    def _start_udp(self, sock, peer, request):
        """The stream, the relay socket and the reply; -> the UdpRelay, or None."""
        udp = stream = None
        try:
            session = self.tunnel.get_session(self.open_timeout)
            udp = bind_next_to(sock)
            stream = session.open_stream(frames.CMD_UDP_ASSOCIATE, request.host, request.port)
            stream.origin = (peer, request.user)
            stream.wait_open(self.open_timeout)
        except AfbError as exc:         # no tunnel, or the server's refusal
            if udp is not None:
                close_socket(udp)
            if stream is not None and stream.reset_error is None:
                stream.reset(exc.reply, "client gave up waiting")
            self._fail(sock, "socks5", exc)
            log.info("%s: UDP ASSOCIATE refused: %s", peer, exc)
            return None
        host, port = udp.getsockname()[:2]
        relay = UdpRelay(sock, peer.rpartition(":")[0], udp, stream, self.udp,
                         on_close=self.associations.discard, label="%s udp" % peer)
        try:
            send_whole(sock, socks5.reply(REP_SUCCEEDED, host, port))
        except OSError as exc:
            relay.close("the app is gone: %s" % exc)
            return None
        self.associations.add(relay)
        relay.start()
        return relay

    def _http_start(self, sock, peer, first):
        # The HTTP head is read blocking-style in a greenlet, on a gevent socket.
        gsock = gevent.socket.socket(sock.family, sock.type, sock.proto, sock.detach())
        start_now(self._serve_http, gsock, peer, first)

    def _serve_http(self, sock, peer, first):
        me = getcurrent()
        self.pending.add(me, lambda: me.kill(block=False))   # (the kill closes it: finally)
        request = None
        try:
            with gevent.Timeout(self.handshake_timeout, TimedOut(
                    "no complete proxy request within %g s" % self.handshake_timeout)):
                request = self._http_request(sock, peer, first)
        except (OSError, AfbError) as exc:
            log.info("%s: %s", peer, exc)
        finally:
            self.pending.discard(me)
            if request is None:
                close_socket(sock)
        if request is not None:
            self._open_or_close(sock, peer, *request)

    def _open_or_close(self, sock, peer, kind, host, port, early, user=None):
        handed_off = False
        try:
            handed_off = self._open(sock, peer, kind, host, port, early, user)
        except (OSError, AfbError) as exc:
            log.info("%s: %s", peer, exc)
        finally:
            if not handed_off:
                close_socket(sock)

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
        user = None
        if self.authenticate is not None:
            given = self._http_credentials(parser.headers)
            ip = peer.rpartition(":")[0]
            banned = self.throttle is not None and self.throttle.is_banned(ip)
            if given is None or banned or not self.authenticate(*given):
                if given is not None and self.throttle is not None:
                    gevent.sleep(self._auth_failed(ip, peer))
                sock.sendall(PROXY_AUTH_REQUIRED)
                log.info("%s: HTTP proxy request refused: 407, no valid Proxy-Authorization",
                         peer)
                return None
            self._auth_passed(peer)
            user = given[0]
        if request.method == "CONNECT":
            return "connect", request.host, request.port, parser.leftover, user
        return "http", request.host, request.port, request.forward + parser.leftover, user

    @staticmethod
    def _http_credentials(headers):
        """``(user, password)`` of the Proxy-Authorization header, or None."""
        for name, value in headers:
            if name.lower() == "proxy-authorization":
                return parse_basic(value) or ("", "")
        return None

    def _open(self, sock, peer, kind, host, port, early, user=None):
        """Open a stream for the app at ``peer`` (``user``: its proxy login); -> whether
        the socket was handed to a relay."""
        devices = self.devices
        device = (user or device_key(peer.rpartition(":")[0])) if devices is not None else None
        if devices is not None and not devices.admit(device):
            count("limit_hits")
            self._fail(sock, kind, TooManyStreams(
                "%s opens too many streams (limit %g a second: [qos] "
                "max_new_streams_per_second)" % (device, devices.qos.new_streams_rate)))
            _refused_log.warning(device, "stream refused", "%s -> %s:%d: refused: more than "
                                 "%g new streams a second from %s", peer, host, port,
                                 devices.qos.new_streams_rate, device)
            return False
        try:
            session = self.tunnel.get_session(self.open_timeout)
        except AfbError as exc:
            self._fail(sock, kind, exc)
            log.warning("%s -> %s:%d: %s", peer, host, port, exc)
            return False
        optimistic = self.fast_open and kind != "http"
        if optimistic:
            # The app's reply first: it prepares its first bytes while the
            # OPEN (sent by open_stream, now) travels to the server.
            self._succeed(sock, kind)
        stream = session.open_stream(frames.CMD_CONNECT, host, port, early, wait=not optimistic)
        stream.origin = (peer, user)
        priority = devices is not None and devices.is_priority(host, port)
        if priority:
            _mark_priority(session, stream)
        if not optimistic:
            try:
                stream.wait_open(self.open_timeout)
            except DestinationError as exc:
                count_destination_error(exc)
                if stream.reset_error is None:
                    stream.reset(exc.reply, "client gave up waiting")
                self._fail(sock, kind, exc)
                log.info("%s -> %s: %s", peer, stream.target, exc)
                return False
            if kind != "http":
                self._succeed(sock, kind)
        self.active += 1
        if devices is None:
            SocketRelay(sock, stream, on_close=self._relay_closed).start()
        else:
            SocketRelay(sock, stream, on_close=self._relay_closed,
                        shapers=devices.acquire(device, stream, priority)).start()
        return True

    def _relay_closed(self, relay):
        self.active -= 1
        stream = relay.stream
        if relay.shape_read is not None and self.devices is not None:
            peer, user = stream.origin
            self.devices.release(user or device_key(peer.rpartition(":")[0]), stream)
        error = stream.reset_error
        if error is not None and stream.bytes_in == 0 and error.reply != REP_GENERAL_FAILURE:
            count_destination_error(error)      # fast_open: OPEN_FAIL came as the reset
            log.info("%s: %s", stream.target, reply_reason(error.reply))

    @staticmethod
    def _succeed(sock, kind):
        send_whole(sock, _SOCKS5_SUCCEEDED if kind == "socks5" else _HTTP_ESTABLISHED)

    @staticmethod
    def _fail(sock, kind, exc):
        try:
            if kind == "socks5":
                sock.sendall(socks5.reply(exc.reply))
            else:
                status = 429 if isinstance(exc, TooManyStreams) else \
                    _HTTP_STATUS.get(exc.reply, exc.http_status)
                sock.sendall(httpproxy.response(status, body=(str(exc) + "\n").encode()))
        except OSError:
            pass
