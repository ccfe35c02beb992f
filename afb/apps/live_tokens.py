"""The tokens of live tunnels, on the server: refreshed within their family, cut when revoked.

A token is checked at the upgrade; after that the tunnel lives on.  Two
things keep a live tunnel's token honest:

:class:`TokenRefresher` answers a tunnel's REFRESH: a new token in the
family of the one in force (:mod:`afb.policy.lineage`), so that revoking
the token an operator sees in ``afb token list`` also revokes its refreshes.
It refuses a refresh before half the lifetime of the token in force has
passed, and checks the store itself, not the 2 s cache, so that a token
revoked a moment ago cannot mint a successor.

:class:`RevocationWatch` polls the state store about once a second for
revocations made since its last look (:meth:`afb.state.StateStore.revocations_since`,
an index range scan: the cost is that of the new rows) and closes every
live tunnel they reach with WebSocket close code 1008 and the reason ("token
revoked (lost phone)", "user alice revoked"), which the client shows.  Polls
overlap by :data:`OVERLAP` seconds, because ``revoked_at`` is stamped a
moment before the row is committed; rows already seen are skipped.  It also
empties the upgrade check's cache, so that the client's next upgrade with
the revoked token is refused at once.

With a shared store (Redis, several servers) the revocations are also
pushed as they are made (:meth:`RevocationWatch.apply`, from
:mod:`afb.transport.shared_state`): within a round trip instead of a poll.

A tunnel whose upgrade was checked just before a revocation, but which is
not yet among the live sessions when the poll runs (E2E and HELLO still in
progress), is checked again when it joins them (:meth:`RevocationWatch.admit`).
"""

import logging
import time

from afb.errors import CLOSE_POLICY_VIOLATION, AuthError
from afb.policy.lineage import family_of, refresh_refusal, revocation_reason
from afb.state import StateUnavailable
from afb.transport.periodic import Periodic

log = logging.getLogger(__name__)

#: Default seconds between two looks for new revocations ([auth] revocation_poll).
POLL_INTERVAL = 1.0
#: Each poll also reads this many seconds before the previous one.
OVERLAP = 2.0


class TokenRefresher:
    """``refresher(session) -> token``: the Session's ``on_refresh`` on the server."""

    def __init__(self, signer, verifier, store, auth, clock=time.time):
        self.signer = signer          # issue(sub, ttl, audience, issuer, family=)
        self.verifier = verifier
        self.store = store
        self.auth = auth              # the [auth] section
        self.clock = clock

    def __call__(self, session):
        claims = session.claims
        reason = refresh_refusal(claims, self.clock()) or self._revoked(claims)
        if reason:
            raise AuthError(reason)
        lifetime = max(60, int(claims.get("exp", 0) - claims.get("iat", 0)))
        token = self._issue(claims["sub"], lifetime, family_of(claims))
        session.claims = self.verifier.verify(token)
        session.expire_at(session.claims["exp"], grace=self.auth["leeway"])
        log.info("%s: token refreshed (%d s, family %s)", session.label, lifetime,
                 family_of(session.claims))
        return token

    def _revoked(self, claims):
        try:
            return self.store.is_revoked(claims)
        except Exception as exc:     # noqa: BLE001 - fail closed, as the upgrade check does
            log.error("revocation check failed: %s", exc)
            return "revocation check failed"

    def _issue(self, sub, lifetime, family):
        """A token signed by the newest key, recorded in the state store."""
        try:
            token, claims, kid = self.signer.issue(sub, lifetime, audience=self.auth["audience"],
                                                   issuer=self.auth["issuer"], family=family)
        except (OSError, ValueError) as exc:
            raise AuthError("this server cannot issue tokens: %s" % exc) from None
        try:
            self.store.record_issued(claims, kid=kid)
        except Exception as exc:  # noqa: BLE001 - the store is advisory for the refresh
            log.warning("refreshed token of %s not recorded: %s", sub, exc)
        return token


def _key(row):
    return row["kind"], row["value"], row["revoked_at"]


class RevocationWatch(Periodic):
    """Closes the live tunnels (``sessions``: a set of Sessions) that new revocations reach."""

    def __init__(self, store, sessions, cache=None, interval=POLL_INTERVAL, clock=time.time):
        self.store = store
        self.sessions = sessions
        self.cache = cache            # a RevocationCache to empty on news, or None
        self.interval = interval
        self.clock = clock
        self._since = clock()
        self._seen = set()
        self._failing = False

    def tick(self):
        self.poll()

    def poll(self):
        """One look at the store; -> the number of tunnels closed."""
        started = self.clock()
        try:
            rows = self.store.revocations_since(self._since - OVERLAP)
        except StateUnavailable:     # Redis down: the shared-state node says so, once
            return 0
        except Exception as exc:     # noqa: BLE001 - a locked or broken store: try again
            if not self._failing:
                log.error("cannot read new revocations (live tunnels stay open until it "
                          "works again): %s", exc)
            self._failing = True
            return 0
        if self._failing:
            log.info("reading revocations works again")
            self._failing = False
        self._since = started
        keys = {_key(r) for r in rows}
        new = [r for r in rows if _key(r) not in self._seen]
        self._seen = keys
        return self._apply(new)

    def apply(self, rows):
        """Revocations pushed as they are made (a shared store's channel) -> tunnels closed.

        Remembered as seen, so the next poll does not act on them again.
        """
        self._seen |= {_key(r) for r in rows}
        return self._apply(rows)

    def _apply(self, rows):
        if not rows:
            return 0
        if self.cache is not None:
            self.cache.clear()
        return sum(self._close_reached(session, rows) for session in list(self.sessions))

    def admit(self, session):
        """A tunnel joins the live ones: closed at once if revoked since its upgrade.

        -> True if it may stay.  Uncached: the upgrade's answer may be 2 s old.
        """
        try:
            reason = self.store.is_revoked(session.claims)
        except Exception as exc:     # noqa: BLE001 - the upgrade check passed; the poll retries
            log.warning("%s: revocation check failed: %s", session.label, exc)
            return True
        if reason:
            self._close(session, reason)
            return False
        return True

    def _close_reached(self, session, revocations):
        for revocation in revocations:
            reason = revocation_reason(session.claims, revocation)
            if reason:
                self._close(session, reason)
                return 1
        return 0

    @staticmethod
    def _close(session, reason):
        if session.closed:
            return
        log.warning("%s: %s; closing the tunnel", session.label, reason)
        session.close_reason = reason
        session.close(CLOSE_POLICY_VIOLATION, reason)
