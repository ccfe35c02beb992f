"""The tunnel's WebSocket upgrade, and :func:`make_server`, which puts the front door around it.

:func:`make_server` returns a (not yet started) :class:`FrontDoor` that
upgrades exactly one kind of request -- a well-formed RFC 6455 upgrade (GET,
HTTP/1.1, version 13, a valid 16-byte key) on the tunnel path that
``authorize(environ)`` accepts -- and hands the resulting
:class:`~afb.transport.wsconn.WsConnection` to ``on_tunnel(ws, principal,
environ)`` in the connection's greenlet.  Every other request goes to the
decoy: ``[decoy] upstream`` (a real web server, bytes unchanged) or the
built-in nginx look-alike.

Why the decision is made here on a raw head and not by gevent.pywsgi +
gevent-websocket (used before): a request pywsgi's parser refuses must still
reach the upstream unchanged; pywsgi's own answers (bare 400/414, 500 for a
bad ``Sec-WebSocket-Key``, 426) gave the server away; the 101 went out before
the application could refuse; bytes pipelined after the upgrade request were
lost in its reader (here they are ``initial`` of the WsConnection).

Timing: ``authorize`` (source lists, ban, token parse and signature) runs for
*every* WebSocket-looking request whatever its path, and the path is judged
afterwards, so the secret path costs no extra work that a prober could time
(measured before: 120-250 us more than a wrong path).  Refusals are logged
through a :class:`~afb.ratelog.LogLimiter` keyed by source address: a few
lines, then one summary line per minute.
"""

import base64
import binascii
import errno
import hashlib
import logging
import time

from gevent import GreenletExit

from afb.config_values import parse_hostport
from afb.errors import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, AfbError, AuthError
from afb.policy.access import parse_networks
from afb.ratelog import LogLimiter
from afb.transport.admission import Admission
from afb.transport.decoy import SERVER_HEADER, Decoy, error_response, http_date
from afb.transport.decoy_upstream import Upstream
from afb.transport.front_door import FrontDoor
from afb.transport.proxy_header import ProxyHeaderReader
from afb.transport.wsconn import WsConnection

log = logging.getLogger(__name__)

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Listen backlog: bursts of new connections must not overflow it (the kernel
#: caps it at net.core.somaxconn).
LISTEN_BACKLOG = 4096


def wants_websocket(head):
    """Whether a request looks like a WebSocket upgrade (then it costs an authorize)."""
    return "websocket" in (head.get("upgrade") or "").lower() or \
        head.get("sec-websocket-key") is not None


def check_upgrade(head, path):
    """``(key, None)`` for a valid upgrade request on *path*, else ``(None, reason)``."""
    if head.method != "GET":
        return None, "method %.16r" % head.method
    if head.uri.partition("?")[0] != path:
        return None, "wrong path %.64r" % head.uri.partition("?")[0]
    if head.version != (1, 1):
        return None, "HTTP version %d.%d" % head.version
    if "websocket" not in head.tokens("upgrade"):
        return None, "no 'Upgrade: websocket'"
    if "upgrade" not in head.tokens("connection"):
        return None, "no 'Connection: upgrade'"
    version = (head.get("sec-websocket-version") or "").strip()
    if version != "13":
        return None, "unsupported Sec-WebSocket-Version %.16r" % version
    key = (head.get("sec-websocket-key") or "").strip()
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeError):
        raw = b""
    if len(raw) != 16:
        return None, "malformed Sec-WebSocket-Key"
    return key, None


def _tls_version(conn):
    """A refusal reason for a TLS connection older than 1.3 (tunnels need 1.3), or None."""
    version = getattr(conn, "version", None)
    if version is None:
        return None
    name = version()
    return None if name in (None, "TLSv1.3") else "TLS version %s" % name


class TunnelUpgrade:
    """``upgrade(conn, head, leftover, address, release)``: True once it served a tunnel."""

    def __init__(self, on_tunnel, authorize, path, max_message, limiter):
        self.on_tunnel = on_tunnel
        self.authorize = authorize
        self.path = path
        self.max_message = max_message
        self.limiter = limiter

    def __call__(self, conn, head, leftover, address, release):
        if not wants_websocket(head):
            return False
        ip = address[0] if isinstance(address, tuple) else str(address)
        env = head.environ(ip)
        if isinstance(address, tuple) and len(address) > 1:
            env["REMOTE_PORT"] = str(address[1])
        principal, reason, status = None, None, None
        try:
            principal = self.authorize(env)
        except AuthError as exc:
            reason = "not authorized (%s)" % (exc or "no reason")
            status = exc.http_status
        except Exception:  # noqa: BLE001 - a bug in authorize must not leak out
            log.exception("authorize() failed")
            reason = "authorize() failed"
        key, bad = check_upgrade(head, self.path)
        reason = bad or _tls_version(conn) or reason
        if status == 503 and reason is not bad and not _tls_version(conn):
            # A valid token while the shared state store is down (fail-closed):
            # "try again later", not the decoy (the client retries by itself).
            release()
            conn.sendall(error_response(503, head=head)[0])
            return True
        if reason is not None:
            self.limiter.info(ip, "refused WebSocket upgrade",
                              "refused WebSocket upgrade from %s: %s", ip, reason,
                              extra={"event": "upgrade_refused", "peer": ip})
            return False
        release()
        self._serve(conn, key, principal, env, leftover, address)
        return True

    def _serve(self, sock, key, principal, environ, initial, address):
        peer = address[0] if isinstance(address, tuple) else address
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest())
        response = ("HTTP/1.1 101 Switching Protocols\r\nServer: %s\r\nDate: %s\r\n"
                    "Connection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                    % (SERVER_HEADER, http_date(time.time()), accept.decode("ascii")))
        try:
            sock.sendall(response.encode("latin-1"))
        except OSError as exc:
            log.debug("upgrade answer to %s failed: %s", peer, exc)
            return
        sock.settimeout(None)
        ws = WsConnection(sock, client=False, max_message=self.max_message, initial=initial,
                          peer=address)
        try:
            self.on_tunnel(ws, principal, environ)
        except GreenletExit:
            ws.close(CLOSE_GOING_AWAY, "server shutting down")
            raise
        except AfbError as exc:
            log.info("tunnel from %s ended: %s", peer, exc)
            ws.close(exc.close_code, str(exc))
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, None):
                log.info("tunnel from %s lost: %s", peer, exc)
        except Exception:  # noqa: BLE001
            log.exception("tunnel handler for %s failed", peer)
            ws.close(CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            ws.close()


def front_door_options(cfg):
    """make_server's keyword arguments from a server config's [decoy] and [access]."""
    decoy, access = cfg["decoy"], cfg["access"]
    return dict(proxy_protocol=cfg["server"]["proxy_protocol"],
                decoy_dir=decoy["dir"] or None, upstream=decoy["upstream"] or None,
                upstream_tls=decoy["upstream_tls"],
                upstream_proxy_protocol=decoy["upstream_proxy_protocol"],
                header_timeout=decoy["header_timeout"],
                keepalive_timeout=decoy["keepalive_timeout"],
                max_pending_per_source=access["max_pending_per_source"],
                max_pending_per_proxy=access["max_pending_per_proxy"],
                trusted_proxies=access["trusted_proxies"],
                descriptor_high_water=access["descriptor_high_water"],
                max_pending=access["max_pending"])


def make_server(listen, on_tunnel, *, authorize, path="/", ssl_context=None, decoy_dir=None,
                max_message=1 << 20, header_timeout=60.0, keepalive_timeout=75.0, upstream=None,
                upstream_tls=True, upstream_proxy_protocol=False, max_pending_per_source=32,
                max_pending_per_proxy=1024, trusted_proxies=(), descriptor_high_water=0.8,
                log_interval=60.0, log_burst=5, fd_limit=None, handshake_timeout=None,
                reuse_port=True, proxy_protocol=False, max_pending=4096):
    """A (not yet started) :class:`FrontDoor` for the tunnel on *listen* = (host, port).

    *upstream*: ``"host:port"`` of a real web server that gets every
    connection that is not a tunnel (None: the built-in decoy).  Errors and
    refusals go to the ``afb.transport.wsserver`` logger, rate-limited per
    source (*log_burst* lines per *log_interval* seconds, then a summary).
    *handshake_timeout* is the old name of *header_timeout* (the deadline for
    TLS and the request head), kept for callers that still pass it.
    *reuse_port*: listen with SO_REUSEPORT (a new server may listen on the
    port while this one drains).  *proxy_protocol*: peers in
    *trusted_proxies* must start with a PROXY header, whose client address
    counts from then on (:mod:`afb.transport.proxy_header`).  *max_pending*: most
    connections not yet tunnels at once (:mod:`afb.transport.admission`).
    """
    if handshake_timeout is not None:
        header_timeout = handshake_timeout
    limiter = LogLimiter(log, interval=log_interval, burst=log_burst)
    proxies = parse_networks(trusted_proxies)
    admission = Admission(max_pending_per_source, max_pending_per_proxy, proxies,
                          descriptor_high_water, fd_limit=fd_limit, max_pending=max_pending)
    splice = None
    if upstream:
        splice = Upstream(parse_hostport(upstream) if isinstance(upstream, str) else upstream,
                          tls=upstream_tls, proxy_protocol=upstream_proxy_protocol,
                          limiter=limiter)
    upgrade = TunnelUpgrade(on_tunnel, authorize, path, max_message, limiter)
    server = FrontDoor(
        (listen[0], listen[1]), upgrade=upgrade, decoy=Decoy(decoy_dir), limiter=limiter,
        admission=admission, wrap_socket=ssl_context.wrap_socket if ssl_context else None,
        upstream=splice, header_timeout=header_timeout, keepalive_timeout=keepalive_timeout,
        backlog=LISTEN_BACKLOG, reuse_port=reuse_port,
        proxy_header=ProxyHeaderReader(proxies, limiter) if proxy_protocol else None)
    return server


__all__ = ["make_server", "front_door_options", "check_upgrade", "TunnelUpgrade", "GUID"]


def masked_path(path):
    """The tunnel path as the log shows it: its first 4 characters, then an ellipsis.

    The path is a secret (every other path gets the decoy), and logs travel
    further than the config: journald, support requests, screenshots.
    """
    return path if len(path) <= 4 else path[:4] + "\u2026"
