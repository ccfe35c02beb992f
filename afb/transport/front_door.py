"""The server's front door: everything between ``accept()`` and a tunnel or a decoy answer.

One :class:`FrontDoor` (a gevent ``StreamServer``) per listening port:

1. **accept** -- EMFILE/ENFILE (out of descriptors) pauses accepting for
   ``ACCEPT_PAUSE`` s with one rate-limited warning instead of gevent's
   traceback per attempt; every accepted socket passes
   :class:`~afb.transport.admission.Admission` (per-source cap, descriptor
   high-water mark, ``[access] max_pending``) *before* a greenlet is spent on
   it, else it is closed at once (past the mark or the cap the oldest pending
   connection of a crowded source goes first);
   with ``[server] proxy_protocol = on`` a peer in ``trusted_proxies`` must
   then send a PROXY header, whose client address replaces the peer's from
   here on (:mod:`afb.transport.proxy_header`);
2. **TLS** -- the first byte is peeked: not a TLS handshake record means plain
   HTTP on the TLS port, answered as nginx does (``400 The plain HTTP request
   was sent to HTTPS port``) or spliced raw to the upstream's TLS port;
3. **request head** -- read raw and parsed by :mod:`afb.codec.http_head`
   under nginx's deadline (``header_timeout``, 60 s from accept, TLS
   included, as ``client_header_timeout``);
4. **decision** -- ``upgrade(conn, head, leftover, address)`` (see
   :mod:`afb.transport.wsserver`) turns a valid tunnel request into a
   tunnel; everything else goes, with the bytes read so far, to
   ``[decoy] upstream`` or to the built-in :class:`~afb.transport.decoy.Decoy`,
   which keeps the connection like nginx (``keepalive_timeout``, 75 s).  A
   connection handed to the decoy never becomes a tunnel later.

Expected failures (a probe that disconnects during or right after TLS, a
reset, a timeout) end in at most one debug line, never a traceback.

The listening socket has SO_REUSEPORT (``reuse_port``, on by default):
see :mod:`afb.transport.listen_socket`.
"""

import errno
import logging
import socket
import time

import gevent
from gevent import Timeout
from gevent.server import StreamServer
from gevent.socket import wait_read

from afb.codec.http_head import ChunkedSkipper, HeadReader, body_length, normalize_path
from afb.codec.proxy_protocol import ProxyHeaderError
from afb.errors import HttpRequestError
from afb.monitor.counters import count
from afb.transport import tls
from afb.transport.decoy import PLAIN_HTTP_DETAIL, error_response
from afb.transport.listen_socket import reuse_port_listener
from afb.transport.sockets import close_socket, set_nodelay

log = logging.getLogger(__name__)

#: Seconds accepting pauses after EMFILE/ENFILE (descriptors may free up meanwhile).
ACCEPT_PAUSE = 0.25
#: Seconds between flushes of the rate-limited log summaries.
HOUSEKEEPING = 5.0
#: Above the descriptor high-water mark: how many of the oldest pending connections
#: are closed at once (nginx drains 32 reusable connections), and how old they must be
#: (the very oldest goes whatever its age).
EVICT_BATCH = 32
EVICT_MIN_AGE = 1.0
#: How many of the oldest pending connections the eviction looks at for a crowded source.
EVICT_SCAN = 64
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
TLS_HANDSHAKE = 0x16


class _Closed(Exception):
    """The client went away, timed out or broke TLS: nothing more to do."""


class FrontDoor(StreamServer):
    """Accepts connections and routes each to the tunnel upgrade or the decoy."""

    def __init__(self, listener, *, upgrade, decoy, limiter, admission, wrap_socket=None,
                 upstream=None, header_timeout=60.0, keepalive_timeout=75.0, reuse_port=True,
                 proxy_header=None, **kw):
        super().__init__(listener, self._serve_connection, **kw)
        self.reuse_port = reuse_port
        self.upgrade = upgrade
        self.decoy = decoy
        self.limiter = limiter
        self.admission = admission
        self.wrap_socket = wrap_socket
        self.upstream = upstream
        self.header_timeout = float(header_timeout)
        self.keepalive_timeout = float(keepalive_timeout)
        self.proxy_header = proxy_header    # a ProxyHeaderReader: [server] proxy_protocol = on
        self._housekeeper = None
        self._resume = None
        self._pending = {}      # greenlet -> (accept time, client address), oldest first
        self._dying = set()     # greenlets _evict_oldest killed that have not yet ended

    # --- accepting -------------------------------------------------------------

    def get_listener(self, address, backlog=None, family=None):
        """gevent's listener, with SO_REUSEPORT unless ``reuse_port`` is off."""
        if not self.reuse_port:
            return super().get_listener(address, backlog, family)
        return reuse_port_listener(address, backlog or self.backlog, family or socket.AF_INET)

    def start(self):
        self.admission.refresh()
        super().start()
        if self._housekeeper is None:
            self._housekeeper = gevent.spawn(self._housekeeping)

    def close(self):
        super().close()
        if self._housekeeper is not None:
            self._housekeeper.kill(block=False)
            self._housekeeper = None
        self.limiter.flush(self.limiter.clock() + self.limiter.interval)

    def stop(self, timeout=None):
        """Stop accepting and end the connections that are not tunnels (tunnels are
        the application's to drain)."""
        super().stop(timeout)
        pending, self._pending = list(self._pending), {}
        for job in pending:
            job.kill(block=False)

    def _housekeeping(self):
        while True:
            gevent.sleep(HOUSEKEEPING)
            self.limiter.flush()

    def do_read(self):
        try:
            return super().do_read()
        except OSError as exc:
            if exc.errno not in _OUT_OF_FDS:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    return None
                raise
            code = exc.errno
        self.limiter.warning("accept", "out of descriptors",
                             "out of descriptors (%s): not accepting for %.2f s",
                             errno.errorcode.get(code, code), ACCEPT_PAUSE)
        self.stop_accepting()
        if self._resume is None:      # (libev's again() would stop a one-shot timer)
            self._resume = self.loop.timer(ACCEPT_PAUSE)
            self._resume.start(self._resume_accepting)
        return None

    def _resume_accepting(self):
        self._resume.close()
        self._resume = None
        if not self.closed:
            self.start_accepting()

    def do_handle(self, sock, address):
        ip = _ip(address)
        fd = sock.fileno()
        refused = None
        # (closed ones count until their greenlets have run: under a flood of accepts
        # they would otherwise hold descriptors past the mark, measured 1,013 of 1,024)
        held = len(self._pending) + len(self._dying)
        if self.admission.over_high_water(fd, held) and not self._evict_oldest():
            refused = "descriptor %d above the high-water mark %s" % (fd, self.admission.fd_mark)
        refused = refused or self.admission.admit(ip)
        if refused is not None:
            count("source_refusals")
            self.limiter.info(ip, "connection refused before TLS",
                              "connection from %s closed at once: %s", ip, refused)
            close_socket(sock, abort=True)
            return
        try:
            job = gevent.spawn(self._serve_connection, sock, address)
        except BaseException:
            self.admission.release(ip)
            close_socket(sock)
            raise
        self._pending[job] = (time.monotonic(), ip)

    def _evict_oldest(self):
        """Close the oldest pending connection of a crowded source and, with it, up to
        EVICT_BATCH in all of the crowded ones older than EVICT_MIN_AGE; any?

        One always goes, whatever its age: when only connections older than a
        second were closed, a slowloris that reopens what is closed (1,000 slow
        TLS handshakes from 50 sources, 1,000 new a second, 1,024 descriptors)
        kept every pending connection younger than that, and a real client's
        new tunnel was refused ("descriptor 851 above the high-water mark
        819").  That one is the oldest of a source with other connections
        pending (among the EVICT_SCAN oldest; else the oldest): an attacker
        holds many, a real client one or two, so a slow attack that reopens
        what is closed closes its own connections first
        (tests/test_abuse_handshakes.py).
        """
        first = self._crowded_oldest()
        if first is None:
            return False
        old = time.monotonic() - EVICT_MIN_AGE
        victims = [first]
        for job, (since, ip) in self._pending.items():
            if len(victims) >= EVICT_BATCH or since > old:
                break
            if job is not first and self.admission.count(ip) > 1:
                victims.append(job)
        for job in victims:
            del self._pending[job]
            self._dying.add(job)
            job.link(self._dying.discard)
            job.kill(block=False)
        self.limiter.warning("high-water", "pending connections closed",
                             "%d connections not yet authenticated (high-water mark %s "
                             "descriptors, [access] max_pending %d): closed the %d oldest",
                             len(self._pending) + len(victims), self.admission.fd_mark,
                             self.admission.max_pending, len(victims))
        return True

    def _crowded_oldest(self):
        """The oldest pending connection whose source has others pending, looking at the
        EVICT_SCAN oldest; else the oldest; None if there is none."""
        oldest = None
        for scanned, (job, (_since, ip)) in enumerate(self._pending.items()):
            if self.admission.count(ip) > 1:
                return job
            if oldest is None:
                oldest = job
            if scanned >= EVICT_SCAN:
                break
        return oldest

    # --- one connection -----------------------------------------------------------

    def _serve_connection(self, sock, address):
        ip = _ip(address)
        state = {"pending": True, "ip": ip}
        me = gevent.getcurrent()

        def release(moved_to=None):
            """Uncount the connection (or, *moved_to*, count it as that client's)."""
            if state["pending"]:
                self.admission.release(state["ip"])
                refused = moved_to and self.admission.admit(moved_to)
                if moved_to and not refused:
                    state["ip"] = moved_to
                    if me in self._pending:     # (whose it is, for _crowded_oldest)
                        self._pending[me] = (self._pending[me][0], moved_to)
                    return None
                state["pending"] = False
                self._pending.pop(me, None)
                return refused
            return None

        opened = [sock]         # + the TLS socket, which takes the descriptor over
        try:
            self._route(sock, address, release, opened)
        except (_Closed, OSError, Timeout) as exc:
            log.debug("connection from %s ended: %s", ip, exc or type(exc).__name__)
        except Exception:  # noqa: BLE001 - a bug must not take the server down
            log.exception("connection from %s failed", ip)
        finally:
            release()
            if len(opened) > 1:             # TLS: nginx sends close_notify, timeouts included
                tls.close_gracefully(opened[-1])
            for each in opened:
                close_socket(each)
            tls.clear_openssl_errors()      # nothing this connection left may hurt another

    def _route(self, sock, address, release, opened):
        deadline = time.monotonic() + self.header_timeout
        set_nodelay(sock)
        if self.proxy_header is not None:    # the client's address, from a trusted proxy
            address = self._proxied(sock, address, deadline, release)
        conn = sock
        if self.wrap_socket is not None:
            first = _peek(sock, deadline)
            if first != TLS_HANDSHAKE:
                self._plain_on_tls_port(sock, address, deadline)
                return
            conn = self._tls(sock, deadline, opened)
        reader = HeadReader()
        try:
            head = _read_head(conn, reader, deadline)
        except HttpRequestError as exc:
            self._to_decoy(conn, sock, address, reader, error=exc)
            return
        if self.upgrade(conn, head, reader.leftover, address, release):
            return
        self._to_decoy(conn, sock, address, reader, head=head)

    def _proxied(self, sock, address, deadline, release):
        try:
            client = self.proxy_header.read(sock, address, deadline)
        except ProxyHeaderError as exc:     # (logged, rate-limited, by the reader)
            raise _Closed(exc) from None
        if client is not address:
            refused = release(moved_to=_ip(client))
            if refused is not None:
                count("source_refusals")
                self.limiter.info(client[0], "connection refused before TLS",
                                  "connection from %s (via %s) closed at once: %s",
                                  client[0], _ip(address), refused)
                raise _Closed(refused)
        return client

    def _tls(self, sock, deadline, opened):
        """The TLS socket, after its handshake, appended to *opened*.

        It is in *opened* from before the handshake: a connection killed or
        timed out in the handshake (the high-water mark's eviction, the header
        timeout) must close it, and gevent closes a socket whose handshake
        fails only on OSError.  Measured before: 1,000 slow ClientHellos with
        a limit of 1,024 descriptors took 1,012 of them although the oldest
        were being "closed".
        """
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        conn = self.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        opened.append(conn)
        try:
            with Timeout(max(0.001, deadline - time.monotonic()), _Closed("TLS timeout")):
                conn.do_handshake()
        except (OSError, ValueError) as exc:
            opened.pop()
            close_socket(conn)          # (no close_notify for a handshake that failed)
            raise _Closed("TLS handshake failed: %s" % (exc or type(exc).__name__)) from None
        return conn

    def _plain_on_tls_port(self, sock, address, deadline):
        """Plain bytes on the TLS port: nginx's 400 page (or nginx's own, spliced raw)."""
        if self.upstream is not None:
            up = self.upstream.connect(sock, address, tls=False)
            if up is not None:
                try:
                    self.upstream.splice(sock, up)
                finally:
                    close_socket(up)
                return
        reader = HeadReader()
        try:
            head = _read_head(sock, reader, deadline)
        except HttpRequestError as exc:
            sock.sendall(error_response(exc.http_status, _detail(exc))[0])
            return
        sock.sendall(error_response(400, PLAIN_HTTP_DETAIL, head=head)[0])

    # --- the decoy -------------------------------------------------------------------

    def _to_decoy(self, conn, sock, address, reader, head=None, error=None):
        count("decoy_answers")
        if self.upstream is not None:
            up = self.upstream.connect(sock, address)
            if up is not None:
                try:
                    self.upstream.splice(conn, up, bytes(reader.buffered))
                finally:
                    close_socket(up)
                return
        self._builtin(conn, address, reader, head, error)

    def _builtin(self, conn, address, reader, head, error):
        """The built-in decoy's keep-alive loop, with nginx's timeouts."""
        local = _local_host(conn)
        while True:
            if error is not None:
                conn.sendall(error_response(error.http_status, _detail(error), head=head)[0])
                tls.close_gracefully(conn)
                return
            try:
                path = normalize_path(head.uri)
            except HttpRequestError as exc:
                error = exc
                continue
            answer, keep = self.decoy.respond(head, path, local)
            conn.sendall(answer)
            if not keep:
                tls.close_gracefully(conn)
                return
            leftover = _skip_body(conn, head, reader.leftover, self.keepalive_timeout)
            reader = HeadReader()
            try:
                head = reader.feed(leftover) if leftover else None
                if head is None:
                    if not leftover:
                        _wait_readable(conn, self.keepalive_timeout)
                    head = _read_head(conn, reader, time.monotonic() + self.header_timeout)
            except HttpRequestError as exc:
                head, error = None, exc


def _detail(exc):
    text = str(exc)
    return text if text[:1].isupper() else None


def _ip(address):
    return address[0] if isinstance(address, tuple) else str(address or "?")


def _peek(sock, deadline):
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    try:
        first = sock.recv(1, socket.MSG_PEEK)
    except socket.timeout:
        raise _Closed("nothing sent before the header timeout") from None
    if not first:
        raise _Closed("closed before sending anything")
    return first[0]


def _read_head(conn, reader, deadline):
    """Bytes until a complete head (HttpRequestError for a bad one), within *deadline*."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Closed("header timeout")
        conn.settimeout(left)
        try:
            data = conn.recv(16384)
        except socket.timeout:
            raise _Closed("header timeout") from None
        if not data:
            raise _Closed("closed in the request head")
        head = reader.feed(data)
        if head is not None:
            return head


def _wait_readable(conn, timeout):
    """Wait up to *timeout* (keepalive_timeout) for the next request's first bytes."""
    if hasattr(conn, "pending") and conn.pending():
        return
    wait_read(conn.fileno(), timeout=timeout, timeout_exc=_Closed("keep-alive timeout"))


def _skip_body(conn, head, leftover, timeout):
    """Read and drop the request body; the bytes after it."""
    length = body_length(head)
    if length == "chunked":
        skipper = ChunkedSkipper()
        rest = skipper.feed(leftover)
        conn.settimeout(timeout)
        while rest is None:
            data = conn.recv(65536)
            if not data:
                raise _Closed("closed in a chunked body")
            rest = skipper.feed(data)
        return rest
    if len(leftover) >= length:
        return leftover[length:]
    left = length - len(leftover)
    conn.settimeout(timeout)
    while left:
        data = conn.recv(min(left, 65536))
        if not data:
            raise _Closed("closed in a request body")
        left -= len(data)
    return b""


def _local_host(conn):
    try:
        host = conn.getsockname()[0]
    except OSError:
        return "localhost"
    return "[%s]" % host if ":" in host else host




__all__ = ["FrontDoor", "ACCEPT_PAUSE"]
