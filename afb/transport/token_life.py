"""A tunnel session's token life: refresh on the client, expiry on the server.

A :class:`TokenLife` belongs to one :class:`~afb.transport.session.Session`
(``session.tokens``).  What it uses of the session: ``queue_control`` (to
send REFRESH / TOKEN), ``tasks`` (the greenlet that answers a REFRESH),
``label``, ``close`` and ``close_reason`` (to end a tunnel whose token
expired).  The session's reader hands it the REFRESH (server) and TOKEN
(client) frames.
"""

import logging
import time

import gevent
from gevent.event import AsyncResult

from afb.codec import frames
from afb.errors import CLOSE_POLICY_VIOLATION, AfbError, AuthError, ProtocolError

log = logging.getLogger(__name__)

#: A client may send REFRESH at most this often (seconds); the server also
#: refuses a refresh before half the token's lifetime (afb.policy.lineage).
MIN_REFRESH_INTERVAL = 1.0


class TokenLife:
    """Token refresh (client) and expiry (server) of one session."""

    def __init__(self, session, on_refresh=None):
        """``on_refresh(session) -> token``: the server's answer to a REFRESH
        (AfbError to refuse); None on the client."""
        self.session = session
        self.on_refresh = on_refresh
        self.request = None           # client: the AsyncResult of a REFRESH in flight
        self.last_refresh = 0.0       # server: when the last REFRESH was answered
        self.expiry_timer = None      # server: closes the tunnel at the token's expiry

    # --- client -------------------------------------------------------------------

    def request_token(self, timeout=10.0):
        """Ask the server for a fresh token; returns it or raises AuthError."""
        if self.request is None or self.request.ready():
            self.request = AsyncResult()
            self.session.queue_control(frames.frame(frames.REFRESH, 0))
        try:
            token, error = self.request.get(timeout=timeout)
        except gevent.Timeout:
            raise AuthError("token refresh: no answer within %.0f s" % timeout) from None
        if not token:
            raise AuthError("token refresh refused: %s" % error)
        return token

    def on_token_frame(self, payload):
        """The server's TOKEN: the answer to the REFRESH in flight."""
        request = self.request
        if request is not None and not request.ready():
            request.set(frames.parse_token(payload))

    # --- server ----------------------------------------------------------------------

    def on_refresh_frame(self):
        """A REFRESH arrived; answer it in a task greenlet, if it is not too soon.

        One 1 MiB message holds 100,000 REFRESH frames, and as many greenlets
        cost about 110 MiB and 0.6 s of CPU (measured), each then queueing an
        answer.  So the check runs before any greenlet exists: a REFRESH
        within MIN_REFRESH_INTERVAL of the previous one closes the tunnel
        (ProtocolError).  An afb client never sends one: it waits for the
        answer, then 2 s or more.
        """
        now = time.monotonic()
        if now - self.last_refresh < MIN_REFRESH_INTERVAL:
            raise ProtocolError("REFRESH again within %.0f s of the previous one"
                                % MIN_REFRESH_INTERVAL)
        self.last_refresh = now
        self.session.tasks.spawn(self._refresh)

    def _refresh(self):
        """Answer a REFRESH with a TOKEN frame (the new token, or why not)."""
        session = self.session
        if self.on_refresh is None:
            payload = frames.token_payload(error="refresh not available")
        else:
            try:
                payload = frames.token_payload(self.on_refresh(session))
            except AfbError as exc:
                log.warning("%s: token refresh refused: %s", session.label, exc)
                payload = frames.token_payload(error=str(exc))
        session.queue_control(frames.frame(frames.TOKEN, 0, payload))

    def expire_at(self, timestamp, grace=0.0):
        """Close the tunnel when the token in force expires (unless refreshed)."""
        if self.expiry_timer is not None:
            self.expiry_timer.kill(block=False)
        delay = max(0.0, timestamp + grace - time.time())
        self.expiry_timer = gevent.spawn_later(delay, self._expired)

    def _expired(self):
        session = self.session
        log.info("%s: token expired and was not refreshed; closing the tunnel", session.label)
        session.close_reason = "token expired"
        session.close(CLOSE_POLICY_VIOLATION, "token expired")

    # --- both ---------------------------------------------------------------------------

    def stop(self):
        """The tunnel is gone: a pending request is answered, the expiry timer ends."""
        if self.request is not None and not self.request.ready():
            self.request.set(("", "tunnel closed"))
        if self.expiry_timer is not None:
            self.expiry_timer.kill(block=False)
