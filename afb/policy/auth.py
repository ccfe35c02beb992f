"""User tokens: signed JWTs, issued by ``afb token issue``, checked on upgrade.

Algorithms: ``EdDSA`` (Ed25519, the default), ``ES256`` (ECDSA P-256) and
``HS256`` (a 32-byte random secret).  A verifier accepts exactly one of them,
its configured ``algorithm``, and only with a key of the matching type: the
header must name it, the key looked up by ``kid`` must be of it, and PyJWT is
called with that single algorithm.  So ``alg: none``, an HS256 token "signed"
with a public key, or any algorithm switch is refused.

Required claims: ``exp nbf iat aud iss jti sub`` (``leeway`` seconds of clock
difference tolerated); a refreshed token also has ``fam``, its family
(:mod:`afb.policy.lineage`).  With a key ring (:class:`afb.policy.keyring.KeyRing`)
the key is picked by the header's ``kid``: unknown kid, or a retired key past
its grace, is refused.  With ``revocations`` (an object with
``is_revoked(claims) -> reason or None``, e.g. :class:`afb.state.StateStore`)
revoked tokens and subjects are refused too.

Every failure is an :class:`~afb.errors.AuthError` carrying a short reason
for the log.  A refusal that comes after the signature verified (expired,
not yet valid, wrong audience, revoked) is a
:class:`~afb.errors.SignedTokenRefused`: the token was issued by this
server's key, so it is a user's stale token rather than a guess or a
forgery, and it weighs little towards a ban (:mod:`afb.policy.access`).
PyJWT checks the claims only once the signature is good, so the class of
its exception tells which side of the signature a failure is on.
"""

import logging
import re
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from afb.errors import AuthError, SignedTokenRefused
from afb.keys import HMAC_SECRET_BYTES, JWT_ALGORITHMS, key_id
from afb.policy.lineage import FAMILY_CLAIM, child_jti

log = logging.getLogger(__name__)

#: The default algorithm.
ALGORITHM = "EdDSA"
ALGORITHMS = JWT_ALGORITHMS
#: Longest token accepted; a real one is ~300 bytes.
MAX_TOKEN_LENGTH = 4096
REQUIRED_CLAIMS = ["exp", "nbf", "iat", "aud", "iss", "jti", "sub"]

_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TTL_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$", re.IGNORECASE)

# PyJWT exception -> (short reason, signature verified) (first match wins;
# subclasses before bases).
_REASONS = [
    (jwt.ExpiredSignatureError, "expired", True),
    (jwt.ImmatureSignatureError, "not yet valid", True),
    (jwt.InvalidAudienceError, "wrong audience", True),
    (jwt.InvalidIssuerError, "wrong issuer", True),
    (jwt.InvalidSignatureError, "bad signature", False),
    (jwt.InvalidAlgorithmError, "algorithm not allowed", False),
    (jwt.InvalidKeyError, "algorithm not allowed", False),
    (jwt.InvalidIssuedAtError, "bad issued-at time", True),
    (jwt.DecodeError, "malformed token", False),
]


def _refusal(exc):
    """The AuthError for a PyJWT exception: SignedTokenRefused past the signature."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return SignedTokenRefused("missing claim %s" % exc.claim)
    for cls, reason, signed in _REASONS:
        if isinstance(exc, cls):
            return (SignedTokenRefused if signed else AuthError)(reason)
    return AuthError("invalid token")


def _check_algorithm(algorithm):
    if algorithm not in ALGORITHMS:
        raise ValueError("unknown JWT algorithm %r (use one of %s)"
                         % (algorithm, ", ".join(ALGORITHMS)))


def _hmac_secret(material):
    if isinstance(material, str):
        material = material.encode("utf-8")
    if not isinstance(material, (bytes, bytearray)) or len(material) < HMAC_SECRET_BYTES:
        raise ValueError("an HS256 secret must be at least %d bytes" % HMAC_SECRET_BYTES)
    if material.lstrip().startswith(b"-----BEGIN"):
        raise ValueError("an HS256 secret must be random bytes, not a PEM key")
    return bytes(material)


def load_signing_key(material, algorithm=ALGORITHM):
    """The private key (or HMAC secret) of ``algorithm`` in ``material`` (PEM/bytes).

    ValueError if it is of another type: an ECDSA key is no EdDSA key, a PEM
    file is no HMAC secret.
    """
    _check_algorithm(algorithm)
    if algorithm == "HS256":
        return _hmac_secret(material)
    key = serialization.load_pem_private_key(material, password=None)
    if algorithm == "EdDSA" and not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("the JWT signing key must be an Ed25519 private key for EdDSA")
    if algorithm == "ES256" and not (isinstance(key, ec.EllipticCurvePrivateKey)
                                     and key.curve.name == "secp256r1"):
        raise ValueError("the JWT signing key must be an ECDSA P-256 private key for ES256")
    return key


def load_verify_key(material, algorithm=ALGORITHM):
    """The public key (or HMAC secret) of ``algorithm`` in ``material``; ValueError if not."""
    _check_algorithm(algorithm)
    if algorithm == "HS256":
        return _hmac_secret(material)
    key = serialization.load_pem_public_key(material)
    if algorithm == "EdDSA" and not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError("the JWT verification key must be an Ed25519 public key for EdDSA")
    if algorithm == "ES256" and not (isinstance(key, ec.EllipticCurvePublicKey)
                                     and key.curve.name == "secp256r1"):
        raise ValueError("the JWT verification key must be an ECDSA P-256 public key for ES256")
    return key


def sign_token(key, algorithm, sub, ttl_seconds, audience="afb", issuer="afb", now=None,
               kid=None, family=None):
    """Sign a new token with a loaded key -> ``(token, claims)``.

    ``kid`` defaults to :func:`afb.keys.key_id` of the key.  ``family``: the
    token is a refresh within that family (:mod:`afb.policy.lineage`).
    """
    if not sub or not isinstance(sub, str):
        raise ValueError("the token subject must not be empty")
    if ttl_seconds <= 0:
        raise ValueError("the token lifetime must be positive")
    now = int(time.time() if now is None else now)
    claims = {"sub": sub, "aud": audience, "iss": issuer, "iat": now, "nbf": now,
              "exp": now + int(ttl_seconds), "jti": uuid.uuid4().hex}
    if family:
        claims.update({FAMILY_CLAIM: family, "jti": child_jti(family)})
    token = jwt.encode(claims, key, algorithm=algorithm,
                       headers={"kid": kid or key_id(key)})
    return token, claims


def issue_token(private_key_pem, sub, ttl_seconds, audience="afb", issuer="afb", now=None,
                algorithm=ALGORITHM, kid=None):
    """A signed JWT for user ``sub`` valid ``ttl_seconds`` from ``now`` (epoch s).

    ``private_key_pem`` is the PEM private key, or the raw secret for HS256.
    """
    if not sub:
        raise ValueError("the token subject must not be empty")
    key = load_signing_key(private_key_pem, algorithm)
    return sign_token(key, algorithm, sub, ttl_seconds, audience, issuer, now, kid)[0]


class TokenVerifier:
    """Checks tokens: one algorithm, a single key or a key ring, audience, issuer, revocations.

    ``TokenVerifier(public_key_pem)`` is the single-key form (for HS256 pass
    the secret); a token may then omit ``kid``, but one naming another key is
    refused.  ``TokenVerifier(keyring=ring)`` requires a ``kid`` and looks it
    up in the ring (which reloads itself when its index changes).
    """

    def __init__(self, public_key_pem=None, audience="afb", issuer="afb", leeway=30, *,
                 algorithm=None, keyring=None, revocations=None):
        if (public_key_pem is None) == (keyring is None):
            raise ValueError("give either a public key or a key ring")
        if keyring is not None:
            if algorithm not in (None, keyring.algorithm):
                raise ValueError("the key ring holds %s keys, not %s" % (keyring.algorithm,
                                                                         algorithm))
            algorithm = keyring.algorithm
        algorithm = algorithm or ALGORITHM
        _check_algorithm(algorithm)
        self.algorithm = algorithm
        self.keyring = keyring
        self.revocations = revocations
        if keyring is None:
            self.key = load_verify_key(public_key_pem, algorithm)
            self.kid = key_id(self.key)
        else:
            self.key = self.kid = None
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    def _key_for(self, header):
        alg = header.get("alg")
        if alg != self.algorithm:
            raise AuthError("algorithm not allowed")
        kid = header.get("kid")
        if self.keyring is None:
            if kid is not None and kid != self.kid:
                raise AuthError("unknown key")
            return self.key
        if not isinstance(kid, str) or not kid:
            raise AuthError("no key id")
        entry = self.keyring.get(kid)
        if entry is None:
            raise AuthError("unknown key")
        if entry.alg != alg:
            raise AuthError("algorithm not allowed")
        if not self.keyring.usable(entry):
            raise AuthError("key retired")      # not loaded: the signature is not checked
        return entry.verify_key

    def verify(self, token):
        """The claims of a valid ``token``; AuthError with a short reason otherwise."""
        if not token or not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise AuthError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
            key = self._key_for(header)
            claims = jwt.decode(
                token, key, algorithms=[self.algorithm], audience=self.audience,
                issuer=self.issuer, leeway=self.leeway,
                options={"require": REQUIRED_CLAIMS, "verify_signature": True})
        except jwt.InvalidTokenError as exc:
            raise _refusal(exc) from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise SignedTokenRefused("bad subject")
        if not isinstance(claims.get("jti"), str) or not claims["jti"]:
            raise SignedTokenRefused("bad token id")
        family = claims.get(FAMILY_CLAIM)
        if family is not None and (not isinstance(family, str) or not family):
            raise SignedTokenRefused("bad token family")
        if self.revocations is not None:
            try:
                reason = self.revocations.is_revoked(claims)
            except AuthError:       # the store's own refusal (StateUnavailable: HTTP 503)
                raise
            except Exception as exc:  # noqa: BLE001 - fail closed: a broken store lets nobody in
                log.error("revocation check failed: %s", exc)
                raise SignedTokenRefused("revocation check failed") from None
            if reason:
                raise SignedTokenRefused(reason)
        return claims


def parse_ttl(text, allow_zero=False):
    """``'30d'``, ``'12h'``, ``'15m'``, ``'3600s'`` or ``'3600'`` -> seconds (> 0).

    ``allow_zero`` also accepts 0 (e.g. a rotation grace of none).
    """
    match = _TTL_RE.match(str(text))
    if not match:
        raise ValueError("bad lifetime %r (use e.g. 3600, 15m, 12h, 30d)" % (text,))
    seconds = int(match.group(1)) * _TTL_UNITS[match.group(2).lower()]
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError("lifetime must be positive")
    return seconds


TOKEN_PLACES = ("header", "cookie")


def token_from_headers(environ, place="header", cookie_name="session"):
    """The token of a WSGI request, or None; looked for in *place* only.

    ``"header"``: ``Authorization: Bearer <jwt>``; ``"cookie"``: the cookie
    named *cookie_name* (``Cookie: <name>=<jwt>``; the first one if repeated).
    """
    if place == "cookie":
        for part in environ.get("HTTP_COOKIE", "").split(";"):
            name, sep, value = part.partition("=")
            if sep and name.strip() == cookie_name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value or None
        return None
    if place != "header":
        raise ValueError("token place must be one of %s" % (TOKEN_PLACES,))
    value = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
