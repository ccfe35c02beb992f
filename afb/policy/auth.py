"""User tokens: EdDSA (Ed25519) JWTs, issued by ``afb token issue``, checked on upgrade.

Only ``EdDSA`` is accepted when verifying, so neither ``alg: none`` nor an HMAC
token "signed" with the public key can pass.  Every failure is an
:class:`~afb.errors.AuthError` carrying a short reason for the log.
"""

import hashlib
import re
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from afb.errors import AuthError

ALGORITHM = "EdDSA"
#: Longest token accepted; a real one is ~300 bytes.
MAX_TOKEN_LENGTH = 4096
REQUIRED_CLAIMS = ["exp", "sub", "aud"]

_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TTL_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$", re.IGNORECASE)

# PyJWT exception -> short reason (first match wins; subclasses before bases).
_REASONS = [
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidIssuedAtError, "bad issued-at time"),
    (jwt.DecodeError, "malformed token"),
]


def key_id(public_key):
    """First 16 hex digits of sha256 over the raw Ed25519 public key bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _load_private(pem):
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("the JWT signing key must be an Ed25519 private key")
    return key


def _load_public(pem):
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError("the JWT verification key must be an Ed25519 public key")
    return key


def issue_token(private_key_pem, sub, ttl_seconds, audience="afb", issuer="afb", now=None):
    """A signed JWT for user ``sub`` valid ``ttl_seconds`` from ``now`` (epoch s)."""
    if not sub:
        raise ValueError("the token subject must not be empty")
    if ttl_seconds <= 0:
        raise ValueError("the token lifetime must be positive")
    key = _load_private(private_key_pem)
    now = int(time.time() if now is None else now)
    claims = {"sub": sub, "aud": audience, "iss": issuer, "iat": now, "nbf": now,
              "exp": now + int(ttl_seconds), "jti": uuid.uuid4().hex}
    return jwt.encode(claims, key, algorithm=ALGORITHM,
                      headers={"kid": key_id(key.public_key())})


class TokenVerifier:
    """Checks tokens against one Ed25519 public key, audience and issuer."""

    def __init__(self, public_key_pem, audience="afb", issuer="afb", leeway=30):
        self.key = _load_public(public_key_pem)
        self.kid = key_id(self.key)
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    def verify(self, token):
        """The claims of a valid ``token``; AuthError with a short reason otherwise."""
        if not token or not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise AuthError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != ALGORITHM:
                raise AuthError("algorithm not allowed")
            if "kid" in header and header["kid"] != self.kid:
                raise AuthError("unknown key")
            claims = jwt.decode(
                token, self.key, algorithms=[ALGORITHM], audience=self.audience,
                issuer=self.issuer, leeway=self.leeway,
                options={"require": REQUIRED_CLAIMS, "verify_signature": True})
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("missing claim %s" % exc.claim) from None
        except jwt.InvalidTokenError as exc:
            for cls, reason in _REASONS:
                if isinstance(exc, cls):
                    raise AuthError(reason) from None
            raise AuthError("invalid token") from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise AuthError("bad subject")
        return claims


def parse_ttl(text):
    """``'30d'``, ``'12h'``, ``'15m'``, ``'3600s'`` or ``'3600'`` -> seconds (> 0)."""
    match = _TTL_RE.match(str(text))
    if not match:
        raise ValueError("bad lifetime %r (use e.g. 3600, 15m, 12h, 30d)" % (text,))
    seconds = int(match.group(1)) * _TTL_UNITS[match.group(2).lower()]
    if seconds <= 0:
        raise ValueError("lifetime must be positive")
    return seconds


def token_from_headers(environ):
    """The bearer token of a WSGI request (``Authorization: Bearer <jwt>``), or None."""
    value = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
