"""A tunnel session's token life: refresh on the client, expiry on the server.

Mixed into :class:`~afb.transport.session.Session`, whose attributes it uses:
``_token_request`` (client: the AsyncResult of a REFRESH in flight),
``_last_refresh`` and ``_expiry_timer`` (server), ``on_refresh``, ``label``,
``_queue_control`` and ``close``.  The REFRESH / TOKEN frames are answered
by the session's reader (``_answer_refresh`` runs in a task greenlet).
"""

import logging
import time

import gevent
from gevent.event import AsyncResult

from afb.codec import frames
from afb.errors import CLOSE_POLICY_VIOLATION, AfbError, AuthError

log = logging.getLogger(__name__)

#: A client may refresh its token at most this often (seconds).
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

    def _answer_refresh(self):
        now = time.monotonic()
        if now - self._last_refresh < MIN_REFRESH_INTERVAL or self.on_refresh is None:
            payload = frames.token_payload(error="refresh not available now")
        else:
            self._last_refresh = now
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
