"""Token lineage: the family a token keeps across refreshes, and when a refresh may come.

A refresh mints a new token with a new ``jti``.  Before families, revoking
the ``jti`` that ``afb token list`` showed left every refreshed token valid.
Now each token belongs to a family:

* the first token of a family (``afb token issue``) has no ``fam`` claim:
  its family id is its own ``jti`` (so tokens of older afb versions are
  families of one, and keep working);
* a refreshed token carries ``fam`` (copied from the token it replaces) and
  a ``jti`` of the form ``<family>.<8 hex digits>``, so even a bare jti seen
  in a log names its family (:func:`family_of_jti`).

A revoked id refuses every token whose ``jti`` *or* family is that id, so
revoking a family id revokes the whole lineage, later refreshes included
(:func:`revocation_reason`; the state store does the same in SQL).

Refreshes are bounded (each one mints and records a token): the server
refuses one before :data:`REFRESH_NOT_BEFORE` of the lifetime of the token
in force has passed (the client asks at 75 %), which makes at most about two
refreshes per lifetime.

Pure code: claims and revocation records in, reasons out.
"""

import secrets
import time

#: The claim naming a refreshed token's family.
FAMILY_CLAIM = "fam"
#: A refresh is refused before this fraction of the token's lifetime has
#: passed (afb.policy.client_token.REFRESH_AT, 0.75, is when clients ask).
REFRESH_NOT_BEFORE = 0.5


def family_of(claims):
    """The family id of verified ``claims``: ``fam``, else the token's own ``jti``."""
    family = claims.get(FAMILY_CLAIM)
    return family if isinstance(family, str) and family else claims.get("jti")


def family_of_jti(jti):
    """The family a bare ``jti`` belongs to, read from its form (``fam.suffix``)."""
    return jti.split(".", 1)[0] or jti


def child_jti(family):
    """A new jti for a token refreshed within ``family``."""
    return "%s.%s" % (family, secrets.token_hex(4))


def refresh_refusal(claims, now=None):
    """Why the token of ``claims`` may not be refreshed yet, or None if it may."""
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, (int, float)) or not isinstance(exp, (int, float)):
        return None
    now = time.time() if now is None else now
    earliest = iat + (exp - iat) * REFRESH_NOT_BEFORE
    if now < earliest:
        return ("refresh too early: a token may be refreshed once half its lifetime has "
                "passed (in %.0f s)" % (earliest - now))
    return None


def with_reason(what, text):
    """``'token revoked (lost phone)'``, or just ``what`` without a text."""
    return "%s (%s)" % (what, text) if text else what


def revocation_reason(claims, revocation):
    """Why ``revocation`` (a record of :meth:`afb.state.StateStore.revocations_since`)
    refuses the token of ``claims``, or None if it does not reach it.

    ``{"kind": "jti", "value"}`` reaches the token whose jti or family is
    ``value``; ``{"kind": "sub", "value", "before"}`` every token of that
    subject issued before ``before``.
    """
    kind, value = revocation["kind"], revocation["value"]
    if kind == "jti":
        if value in (claims.get("jti"), family_of(claims)):
            return with_reason("token revoked", revocation.get("reason"))
    elif kind == "sub" and claims.get("sub") == value:
        iat = claims.get("iat")
        if not isinstance(iat, (int, float)) or iat < revocation["before"]:
            return with_reason("user %s revoked" % value, revocation.get("reason"))
    return None
