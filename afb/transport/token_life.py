"""A tunnel session's token life: refresh on the client, expiry on the server.

Mixed into :class:`~afb.transport.session.Session`, whose attributes it uses:
``_token_request`` (client: the AsyncResult of a REFRESH in flight),
``_last_refresh`` and ``_expiry_timer`` (server), ``on_refresh``, ``label``,
``_queue_control``, ``tasks`` and ``close``.  The session's reader hands
every REFRESH frame to :meth:`TokenLife._on_refresh_frame`, which applies
the per-tunnel rate limit before it spawns the greenlet that answers.
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
    """Token refresh (client) and expiry (server) for a session."""

    def request_token(self, timeout=10.0):
        """Client: ask the server for a fresh token; returns it or raises AuthError."""
        if self._token_request is None or self._token_request.ready():
            self._token_request = AsyncResult()
            self._queue_control(frames.frame(frames.REFRESH, 0))
        try:
            token, error = self._token_request.get(timeout=timeout)
        except gevent.Timeout:
            raise AuthError("token refresh: no answer within %.0f s" % timeout) from None
        if not token:
            raise AuthError("token refresh refused: %s" % error)
        return token

    def _on_refresh_frame(self):
        """Server: a REFRESH arrived; answer it in a task greenlet, if it is not too soon.

        One 1 MiB message holds 100,000 REFRESH frames, and as many greenlets
        cost about 110 MiB and 0.6 s of CPU (measured), each then queueing an
        answer.  So the check runs before any greenlet exists: a REFRESH
        within MIN_REFRESH_INTERVAL of the previous one closes the tunnel
        (ProtocolError).  An afb client never sends one: it waits for the
        answer, then 2 s or more.
        """
        now = time.monotonic()
        if now - self._last_refresh < MIN_REFRESH_INTERVAL:
            raise ProtocolError("REFRESH again within %.0f s of the previous one"
                                % MIN_REFRESH_INTERVAL)
        self._last_refresh = now
        self.tasks.spawn(self._refresh)

    def _refresh(self):
        """Server: answer a REFRESH with a TOKEN frame (the new token, or why not)."""
        if self.on_refresh is None:
            payload = frames.token_payload(error="refresh not available")
        else:
            try:
                payload = frames.token_payload(self.on_refresh(self))
            except AfbError as exc:
                log.warning("%s: token refresh refused: %s", self.label, exc)
                payload = frames.token_payload(error=str(exc))
        self._queue_control(frames.frame(frames.TOKEN, 0, payload))

    def expire_at(self, timestamp, grace=0.0):
        """Server: close the tunnel when the token in force expires (unless refreshed)."""
        if self._expiry_timer is not None:
            self._expiry_timer.kill(block=False)
        delay = max(0.0, timestamp + grace - time.time())
        self._expiry_timer = gevent.spawn_later(delay, self._expired)

    def _expired(self):
        log.info("%s: token expired and was not refreshed; closing the tunnel", self.label)
        self.close_reason = "token expired"
        self.close(CLOSE_POLICY_VIOLATION, "token expired")
