"""The JWT key ring: several keys by ``kid``, rotation with a grace period.

The index file (``jwt-keys.json``, format in :mod:`afb.keys`) is written by
``afb keygen`` and ``afb keygen --rotate``.  :class:`KeyRing` reads it, loads
the verification material of the keys of the configured algorithm, and
reloads it by itself when the file changes (checked at most every
``reload_interval`` seconds, and at once, at most once a second, when a token
names a kid it does not know): a running server accepts tokens of a freshly
rotated key without a restart.  A reload that fails keeps the last good ring
and logs why, once per change of the file.

The index is a trust anchor: whoever can change it, or a file it names, or
the key folder, can make the server accept their tokens.  Every load checks
them with :func:`afb.file_trust.check_trusted_file` (owner root or afb's own
user, not writable by group or others, nor is the folder); ring entries name
plain files in the index's folder (:func:`afb.keys.read_keyring`).

:func:`make_verifier` and :func:`make_signer` turn a server configuration
into a :class:`~afb.policy.auth.TokenVerifier` / something that issues tokens,
choosing between the key ring and the single ``jwt_public_key`` /
``jwt_private_key`` pair (see :func:`keyring_path`).
"""

import logging
import os
import time

from afb.errors import ConfigError
from afb.file_trust import check_trusted_file
from afb.keys import KEYRING_FILE, key_id, read_keyring
from afb.policy.auth import ALGORITHM, TokenVerifier, load_signing_key, load_verify_key, sign_token

log = logging.getLogger(__name__)

#: Default ``[auth] rotation_grace``: a retired key verifies for 7 more days.
DEFAULT_GRACE = 7 * 86400


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


class RingKey:
    """One key of the ring; ``verify_key`` is None when it is not loaded
    (another algorithm, or retired past its grace)."""

    __slots__ = ("kid", "alg", "created", "retired_at", "grace", "verify_key", "private_path")

    def __init__(self, entry, verify_key=None, private_path=None):
        self.kid = entry["kid"]
        self.alg = entry["alg"]
        self.created = entry["created"]
        self.retired_at = entry["retired_at"]
        self.grace = entry["grace"]
        self.verify_key = verify_key
        self.private_path = private_path

    def valid_until(self, default_grace):
        """Epoch seconds after which it verifies nothing; None for the current key."""
        if self.retired_at is None:
            return None
        return self.retired_at + (default_grace if self.grace is None else self.grace)

    def __repr__(self):
        return "<RingKey %s %s retired_at=%s>" % (self.kid, self.alg, self.retired_at)


class KeyRing:
    """The keys of one index file, for verifying and (with private keys) issuing."""

    def __init__(self, path, algorithm=ALGORITHM, default_grace=DEFAULT_GRACE,
                 check_secrets=False, reload_interval=5.0, clock=time.time):
        self.path = path
        self.directory = os.path.dirname(os.path.abspath(path))
        self.algorithm = algorithm
        self.default_grace = default_grace
        self.check_secrets = check_secrets
        self.reload_interval = reload_interval
        self.clock = clock
        self._keys = {}
        self._current = None
        self._stamp = self._refused = None
        self._checked = self._forced = 0.0
        self.load()

    # --- loading ----------------------------------------------------------------

    def _file(self, name):
        return os.path.join(self.directory, name)

    def _signature(self):
        """What changes when the index is edited, replaced, chmod-ed or chown-ed."""
        info = os.stat(self.path)
        return (info.st_mtime_ns, info.st_size, info.st_ino, info.st_mode, info.st_uid)

    def _verify_material(self, key, entry):
        """Read (after the trust checks) what verifies tokens of ``key``."""
        if key.alg == "HS256":
            check_trusted_file(key.private_path, "HMAC secret", secret=self.check_secrets)
            return load_verify_key(_read(key.private_path), key.alg)
        public = self._file(entry["public"])
        check_trusted_file(public, "JWT public key")
        return load_verify_key(_read(public), key.alg)

    def load(self):
        """(Re)read the index; ConfigError naming the file if it is unusable or untrusted."""
        try:
            stamp = self._signature()
            check_trusted_file(self.path, "JWT key ring")
            entries = read_keyring(self.path)
            keys, current, now = {}, None, self.clock()
            for entry in entries:
                key = RingKey(entry)
                secret_name = entry.get("secret") if key.alg == "HS256" else entry.get("private")
                if secret_name:
                    key.private_path = self._file(secret_name)
                if key.retired_at is None:
                    current = key
                if key.alg == self.algorithm and self._in_grace(key, now):
                    key.verify_key = self._verify_material(key, entry)
                if self.check_secrets and key.alg != "HS256" and key.private_path \
                        and os.path.exists(key.private_path):
                    check_trusted_file(key.private_path, "JWT private key", secret=True)
                keys[key.kid] = key
        except ConfigError:
            raise
        except (OSError, ValueError) as exc:
            msg = "JWT key ring %s: %s" % (self.path, exc)
            raise ConfigError(msg, errors=[msg]) from None
        if current.alg != self.algorithm:
            msg = ("JWT key ring %s: the current key %s is %s but [auth] algorithm is %s"
                   % (self.path, current.kid, current.alg, self.algorithm))
            raise ConfigError(msg, errors=[msg])
        self._keys, self._current, self._stamp = keys, current, stamp

    def reload_if_changed(self, force=False):
        """Reload when the index changed; checks throttled (see the module doc)."""
        now = time.monotonic()
        if force:
            if now - self._forced < 1.0:
                return False
            self._forced = now
        elif now - self._checked < self.reload_interval:
            return False
        self._checked = now
        try:
            stamp = self._signature()
        except OSError:
            stamp = "unreadable"
        if stamp in (self._stamp, self._refused):
            return False
        try:
            self.load()
        except (OSError, ConfigError) as exc:
            self._refused = stamp      # one line per change of the file, not one per check
            log.error("keeping the loaded JWT keys: %s", exc)
            return False
        self._refused = None
        log.info("JWT key ring reloaded from %s: current key %s", self.path, self._current.kid)
        return True

    # --- lookups --------------------------------------------------------------

    def _in_grace(self, key, now=None):
        until = key.valid_until(self.default_grace)
        return until is None or (self.clock() if now is None else now) <= until

    def usable(self, key):
        """True if ``key`` may verify tokens now (current, or retired within its grace)."""
        return key.verify_key is not None and self._in_grace(key)

    def get(self, kid):
        """The :class:`RingKey` of ``kid`` or None (after a reload attempt)."""
        self.reload_if_changed()
        key = self._keys.get(kid)
        if key is None and self.reload_if_changed(force=True):
            key = self._keys.get(kid)
        return key

    @property
    def keys(self):
        return sorted(self._keys.values(), key=lambda k: k.created)

    @property
    def current(self):
        return self._current

    @property
    def kid(self):
        return self._current.kid

    def issue(self, sub, ttl_seconds, audience="afb", issuer="afb", now=None, family=None):
        """A token signed by the current key -> ``(token, claims, kid)``;
        ``family``: a refresh within that family."""
        self.reload_if_changed(force=True)
        key = self._current
        if not key.private_path:
            raise ValueError("the key ring %s names no private key for %s" % (self.path, key.kid))
        signing = load_signing_key(_read(key.private_path), key.alg)
        token, claims = sign_token(signing, key.alg, sub, ttl_seconds, audience, issuer, now,
                                   kid=key.kid, family=family)
        return token, claims, key.kid


# --- from a server configuration -------------------------------------------------

def keyring_path(cfg):
    """The key ring index the server config uses, or None for single-key mode.

    ``[auth] keyring`` if set; else ``jwt-keys.json`` beside ``jwt_public_key``
    when that file exists (``afb keygen`` writes it); else None.
    """
    auth = cfg["auth"]
    explicit = auth.get("keyring") or ""
    if explicit:
        return explicit
    candidate = os.path.join(os.path.dirname(os.path.abspath(auth["jwt_public_key"])),
                             KEYRING_FILE)
    return candidate if os.path.exists(candidate) else None


def _grace(auth):
    value = auth.get("rotation_grace", DEFAULT_GRACE)
    return DEFAULT_GRACE if value is None else int(value)


def make_verifier(cfg, revocations=None, check_secrets=True):
    """The server's TokenVerifier from ``cfg['auth']``.

    With ``check_secrets`` every JWT private key / HMAC secret file that is
    present must be 0600.  What verifies tokens (the key ring and the files
    it names, or ``jwt_public_key``) must be trusted
    (:func:`afb.file_trust.check_trusted_file`).  Raises ConfigError or
    OSError.
    """
    auth = cfg["auth"]
    algorithm = auth.get("algorithm", ALGORITHM)
    common = dict(audience=auth["audience"], issuer=auth["issuer"], leeway=auth["leeway"],
                  algorithm=algorithm, revocations=revocations)
    path = keyring_path(cfg)
    if path:
        ring = KeyRing(path, algorithm=algorithm, default_grace=_grace(auth),
                       check_secrets=check_secrets)
        return TokenVerifier(keyring=ring, **common)
    private = auth["jwt_private_key"]
    if algorithm == "HS256":      # single-key HS256: the secret is jwt_private_key
        check_trusted_file(private, "HMAC secret", secret=check_secrets)
        material = _read(private)
    else:
        if check_secrets and private and os.path.exists(private):
            check_trusted_file(private, "JWT private key", secret=True)
        check_trusted_file(auth["jwt_public_key"], "JWT public key ([auth] jwt_public_key)")
        material = _read(auth["jwt_public_key"])
    try:
        return TokenVerifier(material, **common)
    except ValueError as exc:
        msg = "[auth] %s: %s" % ("jwt_private_key" if algorithm == "HS256" else "jwt_public_key",
                                 exc)
        raise ConfigError(msg, errors=[msg]) from None


class SingleKeySigner:
    """Issues tokens with one private key (or HS256 secret) file, read at each issue."""

    def __init__(self, path, algorithm=ALGORITHM):
        self.path, self.algorithm = path, algorithm

    def issue(self, sub, ttl_seconds, audience="afb", issuer="afb", now=None, family=None):
        key = load_signing_key(_read(self.path), self.algorithm)
        token, claims = sign_token(key, self.algorithm, sub, ttl_seconds, audience, issuer, now,
                                   family=family)
        return token, claims, key_id(key)


def make_signer(cfg, keyring=None):
    """What ``afb token issue -c`` (or a server refreshing tokens) signs with:
    an object with ``issue(sub, ttl, audience, issuer, family=None) -> (token,
    claims, kid)``.

    In key ring mode that is the ring (``keyring``: reuse a loaded one, e.g.
    ``verifier.keyring``), which always signs with its newest key; else the
    single ``jwt_private_key``.
    """
    auth = cfg["auth"]
    algorithm = auth.get("algorithm", ALGORITHM)
    if keyring is not None:
        return keyring
    path = keyring_path(cfg)
    if path:
        return KeyRing(path, algorithm=algorithm, default_grace=_grace(auth))
    return SingleKeySigner(auth["jwt_private_key"], algorithm)
