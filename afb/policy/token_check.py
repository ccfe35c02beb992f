"""What the client can tell about its own token, and about a refused upgrade.

The server answers every refusal with its decoy site (HTTP 404 for the
tunnel path), so that a prober learns nothing; the client learns nothing
from the answer either.  But it knows its token: the claims of a JWT can be
read without the key.  So, before it dials and when it is refused, the client
looks at the token it presents and says what is wrong in words a user can
act on.  Pure code: the token, the clock and the config's values in, a
:class:`Verdict` or a message out.

A token that is empty, not a JWT, or expired by more than
:data:`EXPIRED_SLACK` is certainly refused: the client does not dial with it
(each attempt would count towards a ban of its address), and waits for a new
one.  A token that is not valid yet is still tried: this machine's clock may
be the one that is wrong (a router without a real-time clock), and the
server's clock decides.
"""

import base64
import json
import time

#: Seconds past ``exp`` after which the client no longer dials with a token:
#: the server's default ``leeway`` (30 s) and some clock difference.
EXPIRED_SLACK = 60.0

OK = "ok"
EMPTY = "empty"
UNREADABLE = "unreadable"
MALFORMED = "malformed"
EXPIRED = "expired"
NOT_YET_VALID = "not yet valid"
#: Verdicts with which an upgrade is certainly refused: the client does not dial.
BLOCKING = frozenset({EMPTY, UNREADABLE, MALFORMED, EXPIRED})

_GET_ONE = ("get a new token from the server's operator (afb token issue --sub <user> "
            "on the server) and put it in %s; no restart needed")


class Verdict:
    """``kind`` (one of the constants above), ``message`` ('' when OK) and the
    claims that could be read (``exp``, ``nbf``, ``sub`` ...; {} if none)."""

    __slots__ = ("kind", "message", "claims")

    def __init__(self, kind, message="", claims=None):
        self.kind = kind
        self.message = message
        self.claims = claims or {}

    @property
    def blocks(self):
        """The server certainly refuses this token: do not dial with it."""
        return self.kind in BLOCKING

    def __repr__(self):
        return "Verdict(%r, %r)" % (self.kind, self.message)


def unverified_claims(token):
    """The payload of a JWT as a dict, read without verifying it; None if unreadable."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def when(timestamp):
    """A UTC time for a log line: ``2026-12-01 20:59:16 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def span(seconds):
    """``'3 h 2 min'``, ``'45 s'``: a rough, readable duration."""
    seconds = abs(int(seconds))
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 7200:
        return "%d min" % (seconds // 60)
    if seconds < 3 * 86400:
        return "%d h %d min" % (seconds // 3600, seconds % 3600 // 60)
    return "%d days" % (seconds // 86400)


def _number(claims, name):
    value = claims.get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def check_token(token, now, where):
    """The :class:`Verdict` on ``token`` at ``now`` (epoch s); ``where`` names
    its place for the message (``"/etc/afb/client.token"``, ``"[client] token"``)."""
    token = (token or "").strip()
    if not token:
        return Verdict(EMPTY, "the token in %s is empty: %s" % (where, _GET_ONE % where))
    claims = unverified_claims(token)
    if claims is None or token.count(".") != 2:
        return Verdict(MALFORMED, "the token in %s is not a JWT (three base64url parts "
                       "separated by dots; a line cut short or extra text?): %s"
                       % (where, _GET_ONE % where))
    exp, nbf = _number(claims, "exp"), _number(claims, "nbf")
    if exp is not None and now > exp + EXPIRED_SLACK:
        return Verdict(EXPIRED, "the token in %s expired at %s (%s ago by this machine's "
                       "clock): %s; if this machine's clock is wrong (it says %s), fix it"
                       % (where, when(exp), span(now - exp), _GET_ONE % where, when(now)),
                       claims)
    if nbf is not None and nbf > now + EXPIRED_SLACK:
        return Verdict(NOT_YET_VALID, "the token in %s is not valid before %s, %s from now "
                       "by this machine's clock (it says %s): check the clock here and on "
                       "the server" % (where, when(nbf), span(nbf - now), when(now)), claims)
    return Verdict(OK, "", claims)


def unreadable(error, where):
    """The :class:`Verdict` for a token file that cannot be read (``error``: the OSError)."""
    reason = getattr(error, "strerror", None) or str(error)
    return Verdict(UNREADABLE, "cannot read the token file %s (%s): put the token from the "
                   "server's operator (afb token issue --sub <user> on the server) there, "
                   "mode 0600; no restart needed" % (where, reason))


def refusal_message(status, url, verdict, now):
    """What a refused upgrade (HTTP ``status`` instead of 101) most likely means,
    given the :class:`Verdict` on the token it presented, at ``now``.

    The decoy answers 404 to anything on the tunnel path that is not a valid
    tunnel; any other status comes from something that is not an afb server
    on that path (a CDN, a reverse proxy, another web site).
    """
    if status == 503:
        return ("server answered HTTP 503: it runs but cannot reach its shared state store "
                "(Redis) and refuses new tunnels until it is back; retrying by itself")
    if status != 404:
        return ("server answered HTTP %s instead of opening the tunnel: is server = %s an afb "
                "server, and does whatever is in front of it (CDN, reverse proxy) pass "
                "WebSocket upgrades?" % (status, url))
    text = ("server refused the tunnel (HTTP 404): wrong path in server = %s, or a token the "
            "server does not accept (wrong key, revoked, another server's: the server's log "
            "says which), or this address is banned after failed logins" % url)
    exp, nbf = _number(verdict.claims, "exp"), _number(verdict.claims, "nbf")
    if verdict.kind == EXPIRED or (exp is not None and now > exp):
        text += "; the token expired at %s" % when(exp)
    elif verdict.kind == NOT_YET_VALID or (nbf is not None and nbf > now):
        text += "; " + (verdict.message or "the token is not valid before %s" % when(nbf))
    return text
