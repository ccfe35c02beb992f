"""Splice a connection that is not a tunnel to a real local web server (``[decoy] upstream``).

This is what Xray's and trojan's fallbacks do: imitation always trails the
real thing, so every connection that is not a valid tunnel goes, bytes
unchanged, to nginx (caddy, apache) on loopback, which then answers
everything, timing included.

Why the upstream is reached over TLS (``upstream_tls = yes``, the
default): nginx builds absolute redirects from the scheme and port it was
reached on.  Decrypted bytes sent to a plain port made it answer ``GET /dir``
with ``Location: http://host:8080/dir/``; over TLS to a loopback ``listen
127.0.0.1:8443 ssl`` with ``port_in_redirect off`` it answers
``https://host/dir/``, as nginx on 443 does (tests/test_probe_suite.py
checks all 48 probes alike).  afb re-encrypts on loopback without
verifying (the upstream is ours).  Plain HTTP sent to afb's TLS port is
spliced raw to that same TLS port, so nginx itself answers ``400 The plain
HTTP request was sent to HTTPS port``.

No afb timeout cuts a spliced connection before the upstream would: the
only limit is ``SAFETY_IDLE`` seconds without a byte either way.  Each
direction moves at most one 64 KiB buffer at a time (a slow reader stops the
other side), and an end-of-file is passed on as a half-close.  An upstream
that cannot be reached gives one rate-limited log line, and the caller falls
back to the built-in decoy: a site that answers like nginx is less
remarkable than one that resets every connection.
"""

import logging
import socket
import ssl as _stdssl
import time

import gevent
from gevent import ssl as _gssl

from afb.codec.proxy_protocol import proxy_v1_header
from afb.transport.sockets import set_nodelay

log = logging.getLogger(__name__)

#: Seconds without a byte in either direction before a splice is closed (nginx's own
#: limits are 60-75 s, so it always closes first).
SAFETY_IDLE = 900.0
CHUNK = 65536
CONNECT_TIMEOUT = 5.0


def _client_context():
    ctx = _gssl.SSLContext(_stdssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = _stdssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Upstream:
    """Where and how to splice: ``(host, port)``, TLS or not, PROXY protocol or not."""

    def __init__(self, address, tls=True, proxy_protocol=False, limiter=None):
        self.address = address
        self.tls = tls
        self.proxy_protocol = proxy_protocol
        self.limiter = limiter
        self._ctx = _client_context() if tls else None

    def connect(self, client_sock, peer, tls=None):
        """A connected (and, for TLS, handshaken) upstream socket, or None (logged)."""
        try:
            sock = socket.create_connection(self.address, timeout=CONNECT_TIMEOUT)
            set_nodelay(sock)
            if self.proxy_protocol:
                sock.sendall(proxy_v1_header(peer, _local(client_sock)))
            if self.tls if tls is None else tls:
                sock = self._ctx.wrap_socket(sock)
        except (OSError, ValueError) as exc:
            if self.limiter is not None:
                self.limiter.warning("upstream", "decoy upstream unreachable",
                                     "decoy upstream %s:%d unreachable (%s); the built-in "
                                     "decoy answers instead", self.address[0], self.address[1],
                                     exc or type(exc).__name__)
            return None
        return sock

    def splice(self, client, upstream, initial=b""):
        """Move bytes both ways until both ends are done; closes neither socket."""
        last = [time.monotonic()]
        if initial:
            upstream.sendall(initial)
        back = gevent.spawn(_pump, upstream, client, last, True)
        try:
            _pump(client, upstream, last, False)
            back.join()
        finally:
            back.kill(block=True)


def _local(sock):
    try:
        return sock.getsockname()
    except OSError:
        return ("0.0.0.0", 0)


def _pump(src, dst, last, notify):
    """src -> dst until EOF (then half-close dst, with a TLS close_notify first if
    *notify*: nginx sends one when it closes) or an error (then shut both)."""
    src.settimeout(60.0)
    try:
        while True:
            try:
                data = src.recv(CHUNK)
            except socket.timeout:
                if time.monotonic() - last[0] > SAFETY_IDLE:
                    raise
                continue
            if not data:
                _half_close(dst, notify)
                return
            last[0] = time.monotonic()
            dst.sendall(data)
    except (OSError, ValueError):
        for sock in (src, dst):
            try:
                _raw(sock).shutdown(socket.SHUT_RDWR)
            except (OSError, ValueError):
                pass


def _raw(sock):
    """The TCP socket under a TLS one: a FIN there ends the stream without dropping TLS state."""
    return getattr(sock, "_sock", None) or sock if hasattr(sock, "_sslobj") else sock


def _half_close(sock, notify):
    try:
        if notify and getattr(sock, "_sslobj", None) is not None:
            try:
                sock._sslobj.shutdown()     # close_notify (not waiting for the peer's)
            except (OSError, ValueError):
                pass
        _raw(sock).shutdown(socket.SHUT_WR)
    except (OSError, ValueError, AttributeError):
        pass


__all__ = ["Upstream", "SAFETY_IDLE"]
