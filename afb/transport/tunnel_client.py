"""The client's tunnel: one WebSocket session kept up with reconnection.

A connector greenlet dials the server, authenticates in the upgrade request,
exchanges HELLO and publishes the session.  When the session closes, or the
server says GOAWAY, it dials again at once and then with exponential backoff
and full jitter.  Streams opened while no tunnel is up wait up to
``open_timeout`` for one (``get_session``), then fail cleanly.

A tunnel the server closes with code 1008 (policy violation: its token was
revoked, or expired without a refresh) needs a new token, not patience: the
client says so at ERROR level and waits ``reconnect_max`` before it dials
again, as after a refused upgrade.
"""

import hashlib
import logging
import random
import time

import gevent
from gevent.event import Event

from afb.codec.aead import HandshakeError
from afb.errors import CLOSE_POLICY_VIOLATION, AfbError, AuthError, TlsError, TunnelUnavailable
from afb.transport import tls, wsclient
from afb.transport.secure_channel import client_secure
from afb.transport.session import DEFAULT_BUFFER, Session

log = logging.getLogger(__name__)

#: A session that lived this long resets the backoff to its minimum.
STABLE_AFTER = 10.0


class TunnelClient:
    """Keeps a tunnel session to the server; hands it to new streams."""

    def __init__(self, url, token_source, *, pin=None, ca_file=None, proxy=None,
                 window=256 * 1024, max_message=1 << 20, buffer_limit=DEFAULT_BUFFER,
                 connect_timeout=10.0,
                 ping_interval=20.0, ping_timeout=15.0, reconnect_min=0.5,
                 reconnect_max=30.0, token_place="header", token_cookie="session",
                 e2e_key=None, e2e_cipher=None):
        self.url = url
        self.token_source = token_source
        self.token_place = token_place      # "header" (Authorization: Bearer) or "cookie"
        self.token_cookie = token_cookie
        self.pin = pin or None
        self.proxy = proxy or None
        # E2E: the server's pinned X25519 public key (base64; None: off) and the
        # cipher to ask for (None: the faster one on this CPU).
        self.e2e_key = e2e_key or None
        self.e2e_cipher = e2e_cipher or None
        self.ssl_context = tls.client_context(ca_file=ca_file or None, pin=self.pin) \
            if url.startswith("wss:") else None
        self.window = window
        self.max_message = max_message
        self.buffer_limit = buffer_limit
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.session = None
        self.sessions = set()        # the current one and any still draining
        self.connects = 0
        self.last_error = ""
        self._ready = Event()
        self._stopping = False
        self._greenlet = None
        self._refresher = None

    def start(self):
        self._greenlet = gevent.spawn(self._connect_loop)
        if hasattr(self.token_source, "refresh_due"):
            self._refresher = gevent.spawn(self._refresh_loop)

    def _refresh_loop(self):
        """Ask the server for a fresh token before ours expires; keep it."""
        token = self.token_source
        failures = 0
        while not self._stopping:
            due = token.refresh_due()
            if due is None:
                return
            session = self.session
            if due > 0 or session is None:
                gevent.sleep(min(max(due, 0.5), 60.0))
                continue
            try:
                fresh = session.request_token(timeout=self.connect_timeout)
            except AfbError as exc:
                failures += 1
                log.warning("token refresh failed: %s", exc)
                gevent.sleep(min(2.0 ** failures, 60.0))
                continue
            failures = 0
            token.store(fresh)
            log.info("token refreshed")

    def live_session(self):
        """The session new streams may use now, or None (never waits)."""
        session = self.session
        if session is not None and not session.closed and not session.draining:
            return session
        return None

    def get_session(self, timeout):
        """The live session, waiting up to ``timeout`` s; else TunnelUnavailable."""
        session = self.live_session()
        if session is not None:
            return session
        if self._stopping:
            raise TunnelUnavailable("client is stopping")
        self._ready.wait(timeout)
        session = self.session
        if session is None or session.closed or session.draining:
            raise TunnelUnavailable("no tunnel to %s within %.1f s%s" % (
                self.url, timeout, (": " + self.last_error) if self.last_error else ""))
        return session

    def _dial(self):
        token = self.token_source()
        if self.token_place == "cookie":
            headers = {"Cookie": "%s=%s" % (self.token_cookie, token)}
        else:
            headers = {"Authorization": "Bearer " + token}
        ws = wsclient.connect(self.url, headers=headers, ssl_context=self.ssl_context,
                              pin=self.pin, proxy=self.proxy, timeout=self.connect_timeout,
                              max_message=self.max_message)
        if self.e2e_key:
            # Bound to the token of this upgrade; closes ws and raises on failure.
            ws = client_secure(ws, self.e2e_key, hashlib.sha256(token.encode()).digest(),
                               self.e2e_cipher, self.connect_timeout)
        session = Session(ws, client=True, window=self.window, max_message=self.max_message,
                          ping_interval=self.ping_interval, ping_timeout=self.ping_timeout,
                          buffer_limit=self.buffer_limit, label="tunnel to %s" % self.url)
        try:
            session.handshake(timeout=self.connect_timeout)
        except BaseException:
            ws.close()
            raise
        session.start()
        return session

    def _connect_loop(self):
        delay = self.reconnect_min
        while not self._stopping:
            try:
                session = self._dial()
            except (OSError, AfbError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                # A pin or E2E key mismatch needs a fix, not patience.
                level = logging.ERROR if isinstance(exc, (TlsError, HandshakeError)) \
                    else logging.WARNING
                pause = random.uniform(self.reconnect_min, delay)
                if isinstance(exc, AuthError):
                    # Refused upgrade (bad/expired token, or banned): retrying fast
                    # cannot help and would earn a ban for failed logins.
                    pause = max(pause, self.reconnect_max)
                log.log(level, "cannot open the tunnel: %s; retrying in %.1f s", self.last_error, pause)
                gevent.sleep(pause)
                delay = min(delay * 2, self.reconnect_max)
                continue
            self.connects += 1
            self.last_error = ""
            started = time.monotonic()
            self.sessions.add(session)
            self.session = session
            self._ready.set()
            log.info("tunnel up to %s", self.url)
            gevent.spawn(self._run_session, session)
            session.state_changed.wait()
            if self.session is session:
                self.session = None
                self._ready.clear()
            if _token_refused(session) and not self._stopping:
                delay = self.reconnect_max
                gevent.sleep(random.uniform(self.reconnect_max / 2, self.reconnect_max))
            elif time.monotonic() - started > STABLE_AFTER:
                delay = self.reconnect_min
            elif not self._stopping:
                pause = random.uniform(0, delay)
                delay = min(delay * 2, self.reconnect_max)
                gevent.sleep(pause)

    def _run_session(self, session):
        try:
            session.run()
        finally:
            self.sessions.discard(session)
            refused = _token_refused(session)
            if refused and not self._stopping:
                where = getattr(self.token_source, "path", "") or "the config's token"
                log.error("tunnel closed by the server: %s; this client's token no longer works: "
                          "get a new one from the server's operator (afb token issue) and put it "
                          "in %s (retrying every %.0f s)", refused, where, self.reconnect_max)
            elif not self._stopping:
                log.warning("tunnel down: %s", session.close_reason or "closed")

    def stop(self, drain_timeout=0.0):
        """Let open streams finish up to ``drain_timeout`` s, then close the tunnel."""
        self._stopping = True
        self._ready.set()     # wake waiters: they see _stopping / no session
        deadline = time.monotonic() + drain_timeout
        for session in list(self.sessions):
            session.drained.wait(max(0.0, deadline - time.monotonic()))
        for session in list(self.sessions):
            session.flush(0.5)
            session.close(1000, "client stopping")
        for greenlet in (self._greenlet, self._refresher):
            if greenlet is not None:
                greenlet.kill(block=False)


def _token_refused(session):
    """The server's reason if it closed ``session`` for its token (code 1008), else ''."""
    ws = session.ws
    if getattr(ws, "peer_close_code", None) != CLOSE_POLICY_VIOLATION:
        return ""
    return getattr(ws, "peer_close_reason", "") or "token refused"
