"""The client's tunnel: one WebSocket session kept up, and replaced without a gap.

A connector greenlet dials the server, authenticates in the upgrade request,
exchanges HELLO and publishes the session; new streams take the published
one (``live_session``, ``get_session``) and, while there is none, wait up
to ``open_timeout`` for one rather than fail.

**Make before break.**  When the server says GOAWAY (it is being stopped or
replaced), the connector dials a new tunnel at once while the old one
drains: its streams finish on it, new streams wait for the new one -- a few
milliseconds when the new server already listens (README: restarting
without a gap).  :meth:`TunnelClient.renew` (SIGHUP changed the server, pin,
token or E2E key) dials the new tunnel while the old one still takes new
streams, then retires the old one: GOAWAY, and a close once its streams are
done (at most ``drain_timeout`` later).

**Backoff.**  After a failed dial the connector waits a random time up to a
delay that doubles from ``reconnect_min`` to ``reconnect_max`` (full
jitter).  The delay starts again from ``reconnect_min`` after a GOAWAY and
after a tunnel that was healthy (up for :data:`HEALTHY_AFTER`).  It used to
be reset only by a tunnel up for 10 s, so a server restarted every few
seconds saw the client come back later each time: restarts 6 s apart
(stop, then start, ``bench/restart --mode stop-start``), the tunnel was up
again 0.2, 0.01, 1.3, >6, 1.0, >6, 3.0 and >6 s after the new server
listened (24.5 s once; issue 10 saw 26.8 s); now 0.23-0.25 s each time.

**Resumption.**  When the WebSocket dies without a close frame and the
tunnel negotiated resumption (``resume_grace`` > 0 here and on the server),
the session holds its streams (:mod:`afb.transport.resume`), new streams
wait for it, and the connector dials at once (no backoff pause) and opens the
new WebSocket with a resume request instead of a new tunnel's HELLO.  The
server answers RESUMED (the same session goes on, published again) or opens
a new tunnel on the same WebSocket and says why it could not resume (the held
streams are reset with that reason: one round trip, not two).

**Refusals** need a fix, not patience: a refused upgrade, a token certainly
refused (empty, not a JWT, expired: :mod:`afb.policy.token_check`; then it
does not even dial), a pin mismatch or an untrusted certificate, a wrong E2E
key, a tunnel closed with code 1008 (token revoked or expired).  One ERROR
line says what is wrong and what to do; the connector waits
``reconnect_max`` between attempts, cut short when the token file changes
(a new token needs no restart).  Not HTTP 503, which says "not now" (a
fail-closed server whose Redis is down): the normal backoff, so that the
tunnel is up again within a second or two of the store's return, not
``reconnect_max`` later (tests/test_cluster_shared_state.py: 30.0 s with the
shipped defaults before, 0.5-1.0 s after).  The same message again is logged
at most every :data:`REPEAT_LOG_INTERVAL` seconds (DEBUG in between).
"""

import hashlib
import logging
import random
import time

import gevent
from gevent.event import Event

from afb.codec.aead import HandshakeError
from afb.errors import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    AfbError,
    TlsError,
    TunnelUnavailable,
    UpgradeRefused,
)
from afb.policy import token_check
from afb.transport import tls, wsclient
from afb.transport.resume import ask_to_resume
from afb.transport.resume_table import link_binding
from afb.transport.secure_channel import client_secure
from afb.transport.session import DEFAULT_BUFFER, Session

log = logging.getLogger(__name__)

#: A tunnel up this long was healthy: the backoff starts again from reconnect_min.
#: A server that accepts and then drops tunnels (a crash, a limit) does so within
#: milliseconds of HELLO; one that carried traffic for seconds is not in trouble.
HEALTHY_AFTER = 3.0
#: Seconds between two looks at the token file while the connector waits.
TOKEN_POLL = 1.0
#: The same failure message is logged at its level at most this often.
REPEAT_LOG_INTERVAL = 300.0
#: Longest pause between dials while a session waits to be resumed: the backoff
#: (up to reconnect_max, 30 s) would let most of a 30 s resume_grace pass after
#: the network came back; a dial a second for a while costs little.
HELD_RETRY = 1.0


class TunnelClient:
    """Keeps a tunnel session to the server; hands it to new streams."""

    def __init__(self, url, token_source, *, pin=None, ca_file=None, proxy=None,
                 window=256 * 1024, max_message=1 << 20, buffer_limit=DEFAULT_BUFFER,
                 connect_timeout=10.0,
                 ping_interval=20.0, ping_timeout=15.0, reconnect_min=0.5,
                 reconnect_max=30.0, token_place="header", token_cookie="session",
                 e2e_key=None, e2e_cipher=None, drain_timeout=10.0, resume_grace=0.0):
        self.token_source = token_source
        self.configure(url=url, pin=pin, ca_file=ca_file, proxy=proxy, token_place=token_place,
                       token_cookie=token_cookie, e2e_key=e2e_key, e2e_cipher=e2e_cipher)
        self.window = window
        self.max_message = max_message
        self.buffer_limit = buffer_limit
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.drain_timeout = drain_timeout
        self.resume_grace = resume_grace
        self.resumes = 0             # tunnels resumed on a new WebSocket
        self.session = None
        self.sessions = set()        # the current one and any still draining
        self.tally = None            # the monitor's Tally that the sessions' tallies add to
        self.down_since = time.monotonic()   # no published session since then (None: one is)
        self.connects = 0
        self.last_error = ""
        self._delay = reconnect_min
        self.ready = Event()         # set while a session is published (the pool waits on it)
        self._wake = Event()         # the connector's alarm: see _unpublish, renew, stop
        self._renewals = 0           # renewals asked for ...
        self._renewed = 0            # ... and the last one a published session answers
        self._logged = ("", 0.0)     # the last failure message logged, and when
        self._tokens = {}            # session -> the token it was opened with
        self._refused = ("", "")     # the token the server last closed a tunnel for, why
        self._stopping = False
        self._greenlet = None
        self._refresher = None

    def configure(self, *, url, pin=None, ca_file=None, proxy=None, token_place="header",
                  token_cookie="session", e2e_key=None, e2e_cipher=None):
        """Where and how to dial; the next dial uses them (TlsError: bad ca_file)."""
        pin = pin or None
        context = tls.client_context(ca_file=ca_file or None, pin=pin) \
            if url.startswith("wss:") else None
        self.url = url
        self.pin = pin
        self.proxy = proxy or None
        self.token_place = token_place      # "header" (Authorization: Bearer) or "cookie"
        self.token_cookie = token_cookie
        # E2E: the server's pinned X25519 public key (base64; None: off) and the
        # cipher to ask for (None: the faster one on this CPU).
        self.e2e_key = e2e_key or None
        self.e2e_cipher = e2e_cipher or None
        self.ssl_context = context

    def start(self):
        self._greenlet = gevent.spawn(self._connect_loop)
        if hasattr(self.token_source, "refresh_due"):
            self._refresher = gevent.spawn(self._refresh_loop)

    def renew(self):
        """Dial a new tunnel with the settings now configured; the current one keeps
        taking new streams until it is up, then drains and closes."""
        self._renewals += 1
        self._wake.set()

    def _refresh_loop(self):
        """Ask the server for a fresh token before ours expires; keep it."""
        failures = 0
        while not self._stopping:
            token = self.token_source       # SIGHUP may put another one in place
            due = token.refresh_due()
            if due is None:
                gevent.sleep(60.0)      # no readable expiry (yet): look again later
                continue
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

    # --- what new streams get ----------------------------------------------------

    def live_session(self):
        """The session new streams may use now, or None (never waits)."""
        session = self.session
        if session is not None and not session.closed and not session.draining \
                and not session.detached:
            return session
        if session is not None:
            self._unpublish(session)
        return None

    def get_session(self, timeout):
        """The live session, waiting up to ``timeout`` s; else TunnelUnavailable."""
        deadline = time.monotonic() + timeout
        while not self._stopping:
            session = self.live_session()
            if session is not None:
                return session
            left = deadline - time.monotonic()
            if left <= 0:
                raise TunnelUnavailable("no tunnel to %s within %.1f s%s" % (
                    self.url, timeout, (": " + self.last_error) if self.last_error else ""))
            self.ready.wait(left)
        raise TunnelUnavailable("client is stopping")

    def token_for(self, session):
        """The token ``session`` was opened with ("" if unknown)."""
        return self._tokens.get(session, "")

    def _publish(self, session):
        self.session = session
        self.down_since = None
        self.sessions.add(session)
        self.ready.set()
        session.state_changed.rawlink(lambda _event: self._unpublish(session))

    def _unpublish(self, session):
        """``session`` takes no new streams any more (GOAWAY, closed): wake the connector."""
        if self.session is session:
            self.session = None
            self.down_since = time.monotonic()
            self.ready.clear()
            self._wake.set()

    # --- the connector -------------------------------------------------------------

    def _connect_loop(self):
        while not self._stopping:
            session, renewal = self._open_session()
            if session is None:
                return
            if session in self.sessions:        # a held session, resumed
                # New streams once the server's RESUME is acted on (one round trip).
                session.resume.synced.wait(self.connect_timeout)
                self.resumes += 1
                self.last_error = ""
                self._publish(session)
                self._watch(session)
                continue
            old = self.live_session()
            self.connects += 1
            self.last_error = ""
            self._logged = ("", 0.0)
            self._renewed = renewal
            self._publish(session)
            log.info("tunnel up to %s", self.url)
            gevent.spawn(self._run_session, session)
            if old is not None:
                gevent.spawn(self._retire, old)
            self._watch(session)

    def _watch(self, session):
        """Until ``session`` takes no new streams (then wait as its end asks) or a
        renewal is asked for (then return at once: it serves until the next is up)."""
        while not self._stopping:
            if self.live_session() is not session:
                self._after(session)
                return
            if self._renewals != self._renewed:
                return
            self._wake.wait()
            self._wake.clear()

    def _after(self, session):
        """The pause after the current session went, and the next backoff delay."""
        if self._stopping:
            return
        if _token_refused(session):
            self._delay = self.reconnect_max
            self._pause(random.uniform(self.reconnect_max / 2, self.reconnect_max))
        elif session.detached or session.draining or \
                time.monotonic() - session.started_at >= HEALTHY_AFTER:
            self._delay = self.reconnect_min            # GOAWAY, or it was healthy: dial now
        else:
            pause = random.uniform(0, self._delay)
            self._delay = min(self._delay * 2, self.reconnect_max)
            self._pause(pause)

    def _open_session(self):
        """Dial until a session is up, pausing after each failure; -> ``(session, the
        renewals asked for when its dial began)``, ``(None, 0)`` when stopping."""
        while not self._stopping:
            renewal = self._renewals
            token, verdict = self._token()
            if verdict.blocks:         # (its message names the time: the kind is the key)
                self._failed(verdict.message, logging.ERROR, self.reconnect_max,
                             key=verdict.kind)
                continue
            if verdict.kind == token_check.NOT_YET_VALID:
                self._log_once(logging.WARNING, verdict.message, key=verdict.kind)
            try:
                session = self._dial(token)
            except (OSError, AfbError) as exc:
                self._dial_failed(exc, token, verdict)
                continue
            self._tokens[session] = token
            return session, renewal
        return None, 0

    def _token(self):
        """``(token, Verdict)`` of the token to present now (the file is read again)."""
        where = getattr(self.token_source, "where", "[client] token")
        try:
            token = self.token_source()
        except OSError as exc:
            return "", token_check.unreadable(exc, where)
        return token, token_check.check_token(token, time.time(), where)

    def _dial_failed(self, exc, token, verdict):
        pause = random.uniform(self.reconnect_min, self._delay)
        self._delay = min(self._delay * 2, self.reconnect_max)
        # A refusal, a pin or certificate problem, a wrong E2E key: retrying fast
        # cannot help, and refusals would earn a ban for failed logins.
        # Not a 503: the server (or HAProxy) is there but cannot take tunnels for now
        # (fail-closed while its Redis is down); the normal backoff, or a client that
        # tried during a 2 s outage would wait reconnect_max (30 s) after it.
        needs_fix = isinstance(exc, (UpgradeRefused, TlsError, HandshakeError)) and \
            getattr(exc, "status", None) != 503
        level = logging.ERROR if needs_fix else logging.WARNING
        if isinstance(exc, UpgradeRefused):
            message = token_check.refusal_message(exc.status, self.url, verdict, time.time())
            if token and token == self._refused[0]:     # said at ERROR when it was closed
                message = "server refused the tunnel (HTTP %s): it closed the last one for " \
                    "this token (%s)" % (exc.status, self._refused[1])
                level = logging.WARNING
        else:
            message = str(exc) or type(exc).__name__
        if needs_fix:
            pause = max(pause, self.reconnect_max)
        elif self._held() is not None:
            pause = min(pause, HELD_RETRY)
        self._failed(message, level, pause)

    def _failed(self, message, level, pause, key=None):
        self.last_error = message
        if self.session is not None:
            message += " (the current tunnel stays in use meanwhile)"
        self._log_once(level, "cannot open the tunnel: %s; retrying in %.1f s" % (message, pause),
                       key=key or message)
        self._pause(pause)

    def _log_once(self, level, text, key=None):
        """``text`` at ``level``, or at DEBUG if the same was logged lately."""
        key = key or text
        last, when = self._logged
        now = time.monotonic()
        if key == last and now - when < REPEAT_LOG_INTERVAL:
            level = logging.DEBUG
        else:
            self._logged = (key, now)
        log.log(level, "%s", text)

    def _pause(self, seconds):
        """Wait ``seconds``; less if the connector is woken (renewal, stop, the current
        session gone) or the token file changes."""
        state = getattr(self.token_source, "file_state", lambda: None)
        before = state()
        deadline = time.monotonic() + seconds
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._wake.wait(min(left, TOKEN_POLL)):
                self._wake.clear()
                return
            if state() != before:
                log.info("the token file changed: dialling now")
                return

    def _dial(self, token=None):
        token = self.token_source() if token is None else token
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
        binding = link_binding(ws, token)
        first = None
        held = self._held()
        if held is not None:
            first = ask_to_resume(ws, held, binding, self.connect_timeout)
            if first is None:
                return held
        session = Session(ws, client=True, window=self.window, max_message=self.max_message,
                          ping_interval=self.ping_interval, ping_timeout=self.ping_timeout,
                          buffer_limit=self.buffer_limit, label="tunnel to %s" % self.url,
                          tally=self.tally, peer=self.url, resume_grace=self.resume_grace)
        try:
            session.handshake(timeout=self.connect_timeout, first=first, binding=binding)
        except BaseException:
            ws.close()
            raise
        session.start()
        return session

    def _held(self):
        """A session of ours holding its streams for a resume, or None."""
        for session in self.sessions:
            if session.detached and not session.closed:
                return session
        return None

    # --- sessions ---------------------------------------------------------------------

    def _run_session(self, session):
        try:
            session.run()
        finally:
            self.sessions.discard(session)
            token = self._tokens.pop(session, "")
            refused = _token_refused(session)
            if refused:
                self._refused = (token, refused)
            if refused and not self._stopping:
                where = getattr(self.token_source, "path", "") or "the config's token"
                log.error("tunnel closed by the server: %s; this client's token no longer works: "
                          "get a new one from the server's operator (afb token issue) and put it "
                          "in %s (retrying every %g s)", refused, where, self.reconnect_max)
            elif session.draining and not self._stopping:
                log.info("%s: drained and closed (%s)", session.label,
                         session.close_reason or "closed")
            elif not self._stopping:
                log.warning("tunnel down: %s (%s)", session.close_reason or "closed", self.url)

    def _retire(self, session):
        """A replaced session: GOAWAY (the server learns it too), then close it once
        its streams are done, at most ``drain_timeout`` later."""
        log.info("%s: replaced by a new tunnel; closing it once its streams are done "
                 "(%d open)", session.label, len(session.streams))
        session.goaway("client reconfigured")
        session.drained.wait(self.drain_timeout)
        session.flush(0.5)
        session.close_reason = session.close_reason or "replaced by a new tunnel"
        session.close(CLOSE_NORMAL, "client reconfigured")

    def stop(self, drain_timeout=0.0):
        """Let open streams finish up to ``drain_timeout`` s, then close the tunnel."""
        self._stopping = True
        self.ready.set()     # wake waiters: they see _stopping / no session
        self._wake.set()
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
