"""WebSocket client: TCP (optionally through a proxy), TLS + pin, HTTP upgrade.

:func:`connect` returns a :class:`~afb.transport.wsconn.WsConnection` ready for
binary messages.  The upgrade request and its answer are the sans-IO
:mod:`afb.codec.ws_upgrade`; bytes that follow the answer's head in the
same read are handed to the connection (``initial``), not lost.

Errors: ``OSError`` for network failures (including proxy errors and
timeouts), :class:`TlsError` for TLS and pin failures (an untrusted
certificate says what to set: :func:`afb.transport.tls.untrusted`),
:class:`UpgradeRefused` (an AuthError with the HTTP ``status``) when the
server answers the upgrade with anything but 101, :class:`ProtocolError` for
a malformed 101 answer.
"""

import socket
import ssl
from urllib.parse import urlsplit

from afb.codec.ws_upgrade import UpgradeResponse, check_accept, upgrade_request
from afb.errors import ProtocolError, TlsError, UpgradeRefused
from afb.transport import tls
from afb.transport.sockets import set_nodelay
from afb.transport.wsconn import WsConnection

_PROXY_SCHEMES = {
    # scheme: (PySocks proxy type name, resolve names at the proxy)
    "socks5": ("SOCKS5", False),
    "socks5h": ("SOCKS5", True),
    "http": ("HTTP", True),
}


def parse_ws_url(url):
    """``(secure, host, port, resource)`` of a ws:// or wss:// URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError("WebSocket URL must start with ws:// or wss://: %r" % (url,))
    host = parts.hostname
    if not host:
        raise ValueError("WebSocket URL has no host: %r" % (url,))
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError("bad port in WebSocket URL %r" % (url,)) from exc
    secure = scheme == "wss"
    if port is None:
        port = 443 if secure else 80
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return secure, host, port, resource


def _open_tcp(host, port, proxy, timeout):
    if not proxy:
        return socket.create_connection((host, port), timeout=timeout)
    import socks  # PySocks; imported late so that gevent patches it first

    p = urlsplit(proxy)
    scheme = p.scheme.lower()
    if scheme not in _PROXY_SCHEMES or not p.hostname or not p.port:
        raise ValueError("proxy must be socks5://host:port, socks5h://host:port or "
                         "http://host:port, not %r" % (proxy,))
    type_name, rdns = _PROXY_SCHEMES[scheme]
    return socks.create_connection(
        (host, port), timeout=timeout,
        proxy_type=getattr(socks, type_name), proxy_addr=p.hostname, proxy_port=p.port,
        proxy_rdns=rdns, proxy_username=p.username or None, proxy_password=p.password or None)


def _upgrade(sock, host, port, resource, secure, headers):
    """Send the upgrade request and read the answer (:mod:`afb.codec.ws_upgrade`);
    -> the bytes that came after the answer's head (the first frames, if any)."""
    request, key = upgrade_request(host, port, resource, secure, headers or {})
    sock.sendall(request)
    response = UpgradeResponse()
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                raise ConnectionResetError("connection closed during the WebSocket handshake")
            if response.feed(data):
                break
    except socket.timeout:
        raise TimeoutError("WebSocket handshake timed out: no answer to the upgrade") from None
    if response.status != 101:
        raise UpgradeRefused("server refused the WebSocket upgrade: HTTP %d" % response.status,
                             response.status)
    problem = check_accept(response, key)
    if problem:
        raise ProtocolError("bad WebSocket handshake answer: %s" % problem)
    return response.leftover


def connect(url, *, headers=None, ssl_context=None, pin=None, proxy=None, timeout=10,
            max_message=1 << 20):
    """Open a WebSocket to *url* and return a client :class:`WsConnection`."""
    secure, host, port, resource = parse_ws_url(url)
    sock = _open_tcp(host, port, proxy, timeout)
    try:
        sock.settimeout(timeout)
        set_nodelay(sock)
        if secure:
            ctx = ssl_context or tls.client_context(pin=pin)
            try:
                sock = ctx.wrap_socket(sock, server_hostname=host)
            except ssl.SSLCertVerificationError as exc:
                raise TlsError(tls.untrusted(exc, host, port, ctx)) from None
            except ssl.SSLError as exc:
                raise TlsError("TLS handshake with %s:%s failed: %s" % (host, port, exc)) from exc
            if pin:
                tls.check_pin(sock, pin)
        initial = _upgrade(sock, host, port, resource, secure, headers)
        sock.settimeout(None)
    except BaseException:
        try:
            sock.close()
        except OSError:
            pass
        raise
    return WsConnection(sock, client=True, max_message=max_message, peer=(host, port),
                        initial=initial)


__all__ = ["connect", "parse_ws_url"]
