"""Open TCP connections to destinations, under the destination ACL (server side).

``Dialer.dial(host, port)``:

1. ``acl.check_name`` -- name deny rules apply before any DNS traffic;
2. resolve (IP literals need no lookup);
3. ``acl.check_address`` on every resolved address; refused ones are skipped,
   and if all are refused the first refusal (NotAllowed, 0x02) is raised
   without any connect attempt;
4. connect to the allowed addresses one after the other, in resolver order,
   within one overall ``connect_timeout`` shared between them (an attempt
   gets the remaining time divided by the addresses left, at least 2 s), so
   a black-holed IPv6 address cannot eat the whole budget;
5. the first success wins and is returned with TCP_NODELAY set.

Connect errors map to afb.errors (SOCKS5 reply codes): ECONNREFUSED ->
ConnectionRefused (0x05); ENETUNREACH, ENETDOWN, EADDRNOTAVAIL, EAFNOSUPPORT
-> NetworkUnreachable (0x03); EHOSTUNREACH, EHOSTDOWN -> HostUnreachable
(0x04); a timeout or ETIMEDOUT -> TimedOut (0x06); anything else ->
DestinationError (0x01).  When every address fails, the most telling error is
raised (refused > timed out > host unreachable > other > network
unreachable; the last one on a tie): a dual-stack host whose IPv6 route is
missing but whose IPv4 port is closed reports "connection refused".
"""

import collections
import errno
import functools
import ipaddress
import logging
import os
import socket
import time

import gevent.socket

from afb.errors import (
    ConnectionRefused,
    DestinationError,
    HostUnreachable,
    NetworkUnreachable,
    NotAllowed,
    TimedOut,
)
from afb.policy.acl import DestinationAcl, format_destination
from afb.transport.sockets import PlainSocket, set_nodelay

__all__ = ["Dialer", "connect_error", "socket_error"]

log = logging.getLogger(__name__)

#: Shortest slice of the connect budget one address gets when several remain.
MIN_ATTEMPT_TIMEOUT = 2.0

_NETWORK_ERRNOS = {errno.ENETUNREACH, errno.ENETDOWN, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}
_HOST_ERRNOS = {errno.EHOSTUNREACH, errno.EHOSTDOWN}

# Which failure to report when several addresses failed (higher wins).
_RANK = {ConnectionRefused: 5, TimedOut: 4, HostUnreachable: 3, DestinationError: 2,
         NetworkUnreachable: 1}

_STAT_NAMES = {
    ConnectionRefused: "refused",
    TimedOut: "timed_out",
    HostUnreachable: "host_unreachable",
    NetworkUnreachable: "network_unreachable",
    DestinationError: "failed",
    NotAllowed: "not_allowed",
}


def _errno_of(exc):
    if exc.errno is not None:
        return exc.errno
    # OSError(errno.X) with a single argument leaves .errno unset.
    if len(exc.args) == 1 and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def connect_error(exc, where, timeout=None):
    """The afb error for a connect() failure ``exc`` towards ``where``."""
    if isinstance(exc, socket.timeout):  # TimeoutError; errno None for socket timeouts
        code = _errno_of(exc)
        if code in (None, errno.ETIMEDOUT):
            after = " after %gs" % round(timeout, 1) if timeout is not None else ""
            return TimedOut("cannot connect to %s: timed out%s" % (where, after))
    code = _errno_of(exc)
    if code in (errno.EMFILE, errno.ENFILE):
        return socket_error(exc, where)
    if code == errno.ETIMEDOUT:
        cls = TimedOut
    elif code == errno.ECONNREFUSED:
        cls = ConnectionRefused
    elif code in _NETWORK_ERRNOS:
        cls = NetworkUnreachable
    elif code in _HOST_ERRNOS:
        cls = HostUnreachable
    else:
        cls = DestinationError
    if exc.strerror:
        reason = exc.strerror
    elif code is not None:
        reason = os.strerror(code)
    else:
        reason = str(exc) or exc.__class__.__name__
    reason = reason[:1].lower() + reason[1:]
    if code is not None and cls is DestinationError:
        reason = "%s (%s)" % (reason, errno.errorcode.get(code, code))
    return cls("cannot connect to %s: %s" % (where, reason))


def socket_error(exc, where):
    """The afb error for a failed ``socket()`` (out of descriptors or memory): 0x01."""
    code = _errno_of(exc)
    reason = os.strerror(code) if code is not None else str(exc)
    if code in (errno.EMFILE, errno.ENFILE):
        reason = "the server is out of descriptors (%s)" % errno.errorcode[code]
    return DestinationError("cannot connect to %s: %s" % (where, reason[:1].lower() + reason[1:]))


def _settled():
    """The ``cancel`` of a dial that has ended already."""


def _default_connect(family, sockaddr, timeout, recv_buffer=0):
    sock = gevent.socket.socket(family, socket.SOCK_STREAM)
    try:
        set_recv_buffer(sock, recv_buffer)
        sock.settimeout(timeout)
        sock.connect(sockaddr)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


def set_recv_buffer(sock, size):
    """Fix the socket's receive buffer at ``size`` bytes (0: the kernel autotunes it).

    Before ``connect()``, so that the window scale is chosen for it.  The
    kernel books twice ``size`` for the data and its overhead; a fixed buffer
    bounds what a destination can park in the kernel while its stream is
    paused (autotuned ones grow to ``net.ipv4.tcp_rmem``'s maximum when the
    stream was fast), and caps one stream's download at about ``size`` per
    round trip to the destination.
    """
    if size:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class Dialer:
    """Connect to ``host:port`` for a tunnel stream; see the module doc.

    ``connect_fn(family, sockaddr, timeout)`` returns a connected socket or
    raises OSError / socket.timeout (injectable for tests).  ``dial_stats``
    counts dials, attempts (connect calls), connected, skipped (addresses
    refused by the ACL) and the failure outcomes not_allowed, refused,
    timed_out, host_unreachable, network_unreachable, failed, and unresolved
    (resolver failures, a subset of host_unreachable).
    """

    def __init__(self, resolver, acl=None, connect_timeout=10, connect_fn=None,
                 clock=time.monotonic, recv_buffer=0):
        self.resolver = resolver
        self.acl = acl if acl is not None else DestinationAcl()
        self.connect_timeout = connect_timeout
        self.recv_buffer = recv_buffer      # [tunnel] socket_buffer; see set_recv_buffer
        self._connect = connect_fn or functools.partial(_default_connect, recv_buffer=recv_buffer)
        self._clock = clock
        self.dial_stats = collections.Counter()

    def dial(self, host, port):
        self.dial_stats["dials"] += 1
        try:
            sock = self._dial(host, int(port))
        except DestinationError as exc:
            self.dial_stats[_STAT_NAMES.get(type(exc), "failed")] += 1
            log.debug("%s", exc)
            raise
        self.dial_stats["connected"] += 1
        return sock

    def _dial(self, host, port):
        self.acl.check_name(host, port)
        try:
            addrs = self.resolver.resolve(host, port)
        except HostUnreachable:
            self.dial_stats["unresolved"] += 1  # also counted as host_unreachable
            raise

        allowed, refusals = [], []
        for family, sockaddr in addrs:
            try:
                self.acl.check_address(sockaddr[0], port, host)
            except NotAllowed as exc:
                self.dial_stats["skipped"] += 1
                log.debug("skipping: %s", exc)
                refusals.append(exc)
                continue
            allowed.append((family, sockaddr))
        if not allowed:
            if refusals:
                raise refusals[0]
            raise HostUnreachable("cannot resolve %s: no address" % host)

        deadline = None if self.connect_timeout is None else self._clock() + self.connect_timeout
        best, tried = None, 0
        for index, (family, sockaddr) in enumerate(allowed):
            where = self._where(host, port, sockaddr[0])
            timeout = None
            if deadline is not None:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                left = len(allowed) - index
                timeout = min(remaining, max(remaining / left, MIN_ATTEMPT_TIMEOUT))
            self.dial_stats["attempts"] += 1
            tried += 1
            try:
                sock = self._connect(family, sockaddr, timeout)
            except OSError as exc:  # socket.timeout is an OSError too
                error = connect_error(exc, where, timeout)
                log.debug("%s", error)
                if best is None or _RANK.get(type(error), 0) >= _RANK.get(type(best), 0):
                    best = error
                continue
            set_nodelay(sock)
            log.debug("connected to %s", where)
            return sock

        if best is None:  # the budget ran out before the first attempt
            best = TimedOut("cannot connect to %s: timed out after %gs"
                            % (format_destination(host, port), self.connect_timeout))
        if tried > 1:
            best = type(best)("%s (%d addresses tried)" % (best, tried))
        raise best

    def dial_nowait(self, host, port, on_done):
        """Start a connect to an IP literal without blocking; False for names.

        New streams to addresses (what browsers and ``socks5`` clients mostly
        ask for) then cost no greenlet: ``on_done(sock, error)`` runs at once
        when the connect completed at once (a nearby destination), else from
        the event loop, with ``error`` a DestinationError (the socket is
        closed then).  ACL refusals raise NotAllowed at once.  For host names
        this returns False and starts nothing: use :meth:`dial` in a greenlet
        (DNS may block).  The socket is a plain (not gevent) socket.

        Returns a ``cancel()`` callable: it stops a connect still in progress
        and closes its socket (``on_done`` is then never called), so a stream
        reset while it dials holds no descriptor (a no-op once settled).
        Out of descriptors (EMFILE, ENFILE) fails this dial only, with
        DestinationError (SOCKS 0x01).
        """
        literal = _ip_literal(host)
        if literal is None:
            return False
        ip, family = literal
        port = int(port)
        self.dial_stats["dials"] += 1
        try:
            self.acl.check_address(ip, port, host)   # name rules never match a literal
        except NotAllowed:
            self.dial_stats["not_allowed"] += 1
            raise
        # A plain socket: the relay drives it with its own watchers, so the
        # two that a gevent socket makes (and drops again) would be waste.
        try:
            sock = PlainSocket(family, socket.SOCK_STREAM)
        except OSError as exc:
            self.dial_stats["no_socket"] += 1
            on_done(None, socket_error(exc, self._where(host, port, ip)))
            return _settled
        sock.setblocking(False)
        set_recv_buffer(sock, self.recv_buffer)
        self.dial_stats["attempts"] += 1
        code = sock.connect_ex((ip, port))
        if code not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            error = connect_error(OSError(code, os.strerror(code)), self._where(host, port, ip))
            self._dialled(sock, error, on_done)
            return _settled
        if code == 0 or _connected_now(sock):
            # A nearby destination often has answered the SYN already: go on
            # now rather than an event-loop iteration later.
            self._dialled(sock, None, on_done)
            return _settled
        loop = gevent.get_hub().loop
        watcher = loop.io(sock.fileno(), 2)       # writable: connected, or failed
        timer = loop.timer(self.connect_timeout)
        settled = []

        def stop():
            if settled:
                return False
            settled.append(True)
            for w in (watcher, timer):
                w.stop()
                w.close()
            return True

        def finish(error):
            if stop():
                self._dialled(sock, error, on_done)

        def cancel():
            if stop():
                self.dial_stats["cancelled"] += 1
                sock.close()

        def writable():
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            finish(None if err == 0 else connect_error(
                OSError(err, os.strerror(err)), self._where(host, port, ip)))

        def expired():
            finish(connect_error(socket.timeout("timed out"), self._where(host, port, ip),
                                 self.connect_timeout))

        watcher.start(writable)
        timer.start(expired)
        return cancel

    def _dialled(self, sock, error, on_done):
        if error is None:
            set_nodelay(sock)
            self.dial_stats["connected"] += 1
        else:
            sock.close()
            self.dial_stats[_STAT_NAMES.get(type(error), "failed")] += 1
            log.debug("%s", error)
        on_done(None if error else sock, error)

    @staticmethod
    def _where(host, port, ip):
        dest = format_destination(host, port)
        if host.strip("[]") != ip:
            dest = "%s (%s)" % (dest, ip)
        return dest


def _ip_literal(host):
    """``(address, family)`` for an IPv4 or IPv6 literal (brackets allowed), else None."""
    try:
        socket.inet_pton(socket.AF_INET, host)
        return host, socket.AF_INET
    except (OSError, ValueError, UnicodeError):
        pass
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return str(ip), socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _connected_now(sock):
    """Whether a non-blocking connect in progress has completed (not failed)."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True
