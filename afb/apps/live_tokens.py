"""The tokens of live tunnels, on the server: refreshed within their family.

A token is checked at the upgrade; after that the tunnel lives on.

:class:`TokenRefresher` answers a tunnel's REFRESH: a new token in the
family of the one in force (:mod:`afb.policy.lineage`), so that revoking
the token an operator sees in ``afb token list`` also revokes its refreshes.
It refuses a refresh before half the lifetime of the token in force has
passed, and checks the store itself, not the 2 s cache, so that a token
revoked a moment ago cannot mint a successor.
"""

import logging
import time

from afb.errors import AuthError
from afb.policy.lineage import family_of, refresh_refusal

log = logging.getLogger(__name__)

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
