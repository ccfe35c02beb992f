"""JWT, complete: algorithms, key ring with kid and rotation grace, claims, revocation.

Every refusal is an AuthError; the table below is the list of forged or
unacceptable tokens the server must turn away.
"""

import json
import os
import stat
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from afb.errors import AuthError, ConfigError, SignedTokenRefused
from afb.keys import (
    KEYRING_FILE,
    check_secret_file,
    generate_server_keys,
    key_id,
    make_jwt_keys,
    read_keyring,
    rotate_jwt_keys,
    write_keyring,
)
from afb.policy.auth import (
    REQUIRED_CLAIMS,
    TokenVerifier,
    issue_token,
    load_signing_key,
    sign_token,
)
from afb.policy.keyring import KeyRing, keyring_path, make_signer, make_verifier
from afb.state import RevocationCache, StateStore
from tests.support import b64, forge

HOUR = 3600


def claims_now(**extra):
    now = int(time.time())
    claims = {"sub": "alice", "aud": "afb", "iss": "afb", "iat": now, "nbf": now,
              "exp": now + 60, "jti": os.urandom(8).hex()}
    claims.update(extra)
    return claims


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


class Env:
    """A key directory with a rotated ring: ``old`` retired 1 h ago with 2 h grace,
    ``older`` retired 3 h ago with 1 h grace (past it), ``new`` current; plus a store."""

    def __init__(self, tmp_path):
        self.dir = str(tmp_path / "keys")
        generate_server_keys(self.dir)
        self.index = os.path.join(self.dir, KEYRING_FILE)
        self.older = read_keyring(self.index)[0]["kid"]
        now = int(time.time())
        rotate_jwt_keys(self.dir, grace=HOUR, now=now - 3 * HOUR)
        self.old = [e for e in read_keyring(self.index) if e["retired_at"] is None][0]["kid"]
        rotate_jwt_keys(self.dir, grace=2 * HOUR, now=now - HOUR)
        self.new = [e for e in read_keyring(self.index) if e["retired_at"] is None][0]["kid"]
        self.store = StateStore(str(tmp_path / "state" / "afb.sqlite3"))
        self.ring = KeyRing(self.index)
        self.verifier = TokenVerifier(keyring=self.ring, revocations=self.store)

    def private(self, kid):
        entry = [e for e in read_keyring(self.index) if e["kid"] == kid][0]
        return read(os.path.join(self.dir, entry["private"]))

    def public(self, kid):
        entry = [e for e in read_keyring(self.index) if e["kid"] == kid][0]
        return read(os.path.join(self.dir, entry["public"]))

    def token(self, kid=None, **claims):
        kid = kid or self.new
        key = serialization.load_pem_private_key(self.private(kid), None)
        return jwt.encode(claims_now(**claims), key, algorithm="EdDSA", headers={"kid": kid})


@pytest.fixture
def env(tmp_path):
    env = Env(tmp_path)
    yield env
    env.store.close()


def _revoked_jti(env):
    token = env.token()
    env.store.revoke_jti(jwt.decode(token, options={"verify_signature": False})["jti"],
                         reason="lost phone")
    return token


def _revoked_subject(env):
    token = env.token(sub="bob", iat=int(time.time()) - 10)
    env.store.revoke_subject("bob", reason="left")
    return token


def _no_kid(env):
    key = serialization.load_pem_private_key(env.private(env.new), None)
    return jwt.encode(claims_now(), key, algorithm="EdDSA")


def _other_key_same_kid(env):
    other = serialization.load_pem_private_key(make_jwt_keys()[0], None)
    return jwt.encode(claims_now(), other, algorithm="EdDSA", headers={"kid": env.new})


def _unknown_kid(env):
    key = serialization.load_pem_private_key(env.private(env.new), None)
    return jwt.encode(claims_now(), key, algorithm="EdDSA", headers={"kid": "0123456789abcdef"})


def _tampered(env):
    good = env.token().split(".")
    evil = b64(json.dumps(claims_now(sub="root")).encode())
    return ".".join([good[0], evil, good[2]])


def _missing(claim):
    def make(env):
        claims = claims_now()
        del claims[claim]
        key = serialization.load_pem_private_key(env.private(env.new), None)
        return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": env.new})
    return make


# (name, token maker, reason the verifier gives)
FORGED = [
    ("alg none", lambda e: forge({"alg": "none", "typ": "JWT", "kid": e.new}, claims_now()),
     "algorithm not allowed"),
    ("alg none, no signature part", lambda e: forge({"alg": "none"}, claims_now())[:-1],
     "malformed token"),
    ("HS256 signed with the public key",
     lambda e: forge({"alg": "HS256", "typ": "JWT", "kid": e.new}, claims_now(),
                     key=e.public(e.new)),
     "algorithm not allowed"),
    ("HS256 with the public key, no kid",
     lambda e: forge({"alg": "HS256"}, claims_now(), key=e.public(e.new)), "algorithm not allowed"),
    ("ES256 header on an EdDSA ring", lambda e: forge({"alg": "ES256", "kid": e.new}, claims_now()),
     "algorithm not allowed"),
    ("wrong aud", lambda e: e.token(aud="other"), "wrong audience"),
    ("wrong iss", lambda e: e.token(iss="other"), "wrong issuer"),
    ("expired", lambda e: e.token(iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200,
                                  exp=int(time.time()) - 3600), "expired"),
    ("nbf beyond leeway", lambda e: e.token(nbf=int(time.time()) + 300), "not yet valid"),
    ("iat beyond leeway", lambda e: e.token(iat=int(time.time()) + 300), "not yet valid"),
    ("unknown kid", _unknown_kid, "unknown key"),
    ("no kid on a ring", _no_kid, "no key id"),
    ("other key under our kid", _other_key_same_kid, "bad signature"),
    ("tampered payload", _tampered, "bad signature"),
    ("revoked jti", _revoked_jti, "token revoked (lost phone)"),
    ("revoked subject", _revoked_subject, "subject revoked (left)"),
    ("rotated-out key past its grace", lambda e: e.token(kid=e.older), "key retired"),
    ("empty sub", lambda e: e.token(sub=""), "bad subject"),
] + [("missing %s" % c, _missing(c), "missing claim %s" % c) for c in REQUIRED_CLAIMS]


@pytest.mark.parametrize("name,make,reason", FORGED, ids=[f[0] for f in FORGED])
def test_refused(env, name, make, reason):
    token = make(env)
    with pytest.raises(AuthError) as info:
        env.verifier.verify(token)
    assert str(info.value) == reason
    assert info.value.http_status == 401


#: Refusals after the signature verified: a stale token of a user, not a guess
#: (they weigh a tenth towards a ban, afb.policy.access).
SIGNED = {"wrong aud", "wrong iss", "expired", "nbf beyond leeway", "iat beyond leeway",
          "revoked jti", "revoked subject", "empty sub"} | {
              "missing %s" % c for c in REQUIRED_CLAIMS}


@pytest.mark.parametrize("name,make,reason", FORGED, ids=[f[0] for f in FORGED])
def test_refusals_after_the_signature_are_signed_token_refused(env, name, make, reason):
    with pytest.raises(AuthError) as info:
        env.verifier.verify(make(env))
    assert isinstance(info.value, SignedTokenRefused) == (name in SIGNED)


ACCEPTED = [
    ("current key", lambda e: e.token()),
    ("rotated key inside its grace", lambda e: e.token(kid=e.old)),
    ("expired within the leeway", lambda e: e.token(exp=int(time.time()) - 10)),
    ("issued after a subject revocation",
     lambda e: (e.store.revoke_subject("carol", before_ts=time.time() - 5),
                e.token(sub="carol"))[1]),
    ("other user's subject revoked", lambda e: (e.store.revoke_subject("mallory"),
                                                e.token(sub="alice"))[1]),
]


@pytest.mark.parametrize("name,make", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted(env, name, make):
    claims = env.verifier.verify(make(env))
    assert claims["sub"] and claims["jti"]


def test_subject_revocation_then_new_token(env):
    """Revoke bob now: his earlier token fails, one issued afterwards works."""
    before = env.token(sub="bob", iat=int(time.time()) - 5)
    env.verifier.verify(before)
    env.store.revoke_subject("bob", reason="reset")
    with pytest.raises(AuthError, match="subject revoked"):
        env.verifier.verify(before)
    later = env.ring.issue("bob", 60, now=time.time() + 2)[0]    # the next second
    assert env.verifier.verify(later)["sub"] == "bob"


def test_ring_issues_with_newest_key_and_kid(env):
    token, claims, kid = env.ring.issue("dave", HOUR)
    assert kid == env.new == jwt.get_unverified_header(token)["kid"]
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    assert set(REQUIRED_CLAIMS) <= set(claims)
    assert env.verifier.verify(token)["jti"] == claims["jti"]


def test_ring_picks_up_rotation_without_restart(env):
    ring = KeyRing(env.index, reload_interval=3600)
    verifier = TokenVerifier(keyring=ring)
    rotate_jwt_keys(env.dir)                      # grace from the config default (7 d)
    newest = [e for e in read_keyring(env.index) if e["retired_at"] is None][0]["kid"]
    token = env.token(kid=newest)
    assert verifier.verify(token)["sub"] == "alice"   # unknown kid -> forced reload
    assert ring.kid == newest
    assert verifier.verify(env.token(kid=env.new))   # previous key: inside the default grace


def test_default_grace_from_config(env):
    """A retirement without --grace uses rotation_grace; 0 retires at once."""
    rotate_jwt_keys(env.dir)
    previous = env.new
    assert TokenVerifier(keyring=KeyRing(env.index, default_grace=3600)).verify(env.token(previous))
    with pytest.raises(AuthError, match="key retired"):
        TokenVerifier(keyring=KeyRing(env.index, default_grace=0)).verify(
            env.token(previous, iat=int(time.time()) - 5))


def test_broken_index_keeps_the_loaded_ring(env):
    env.ring.reload_interval = 0
    token = env.token()
    with open(env.index, "w") as handle:
        handle.write("{not json")
    assert env.verifier.verify(token)          # still the last good keys
    with pytest.raises(ConfigError, match=KEYRING_FILE):
        KeyRing(env.index)


# --- other algorithms ----------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "HS256"])
def test_algorithms_round_trip_and_strict(tmp_path, algorithm):
    paths = generate_server_keys(str(tmp_path), algorithm=algorithm)
    ring = KeyRing(paths["keyring"], algorithm=algorithm)
    verifier = TokenVerifier(keyring=ring)
    token, claims, kid = ring.issue("alice", 60)
    assert jwt.get_unverified_header(token) == {"alg": algorithm, "kid": kid, "typ": "JWT"}
    assert verifier.verify(token)["jti"] == claims["jti"]
    if algorithm == "HS256":
        secret = read(paths["jwt_secret"])
        assert len(secret) == 32 and stat.S_IMODE(os.stat(paths["jwt_secret"]).st_mode) == 0o600
        assert kid == key_id(secret) and secret.hex()[:16] not in kid
        # the wrong secret, and a token for another algorithm, are refused
        forged = jwt.encode(claims_now(), os.urandom(32), algorithm="HS256", headers={"kid": kid})
        with pytest.raises(AuthError, match="bad signature"):
            verifier.verify(forged)
    # a verifier of another algorithm never accepts it, even with the right key material
    for other in {"EdDSA", "ES256", "HS256"} - {algorithm}:
        with pytest.raises(ConfigError, match="current key"):
            KeyRing(paths["keyring"], algorithm=other)
        single = TokenVerifier(make_jwt_keys(other)[1] or os.urandom(32), algorithm=other)
        with pytest.raises(AuthError, match="algorithm not allowed"):
            single.verify(token)


def test_eddsa_never_accepts_hs256_even_single_key():
    private, public = make_jwt_keys("EdDSA")
    verifier = TokenVerifier(public)
    for header in ({"alg": "HS256"}, {"alg": "HS256", "kid": verifier.kid}, {"alg": "HS512"},
                   {"alg": "none"}, {"alg": "RS256"}, {"alg": "EdDSA ", "kid": verifier.kid}):
        with pytest.raises(AuthError, match="algorithm not allowed"):
            verifier.verify(forge(header, claims_now(), key=public))
    # an HS256 verifier refuses a PEM (public key) as its secret
    with pytest.raises(ValueError):
        TokenVerifier(public, algorithm="HS256")


def test_es256_key_type_checks():
    es_private, es_public = make_jwt_keys("ES256")
    ed_private, ed_public = make_jwt_keys("EdDSA")
    with pytest.raises(ValueError):
        load_signing_key(es_private, "EdDSA")
    with pytest.raises(ValueError):
        load_signing_key(ed_private, "ES256")
    with pytest.raises(ValueError):
        TokenVerifier(ed_public, algorithm="ES256")
    token = issue_token(es_private, "a", 60, algorithm="ES256")
    assert TokenVerifier(es_public, algorithm="ES256").verify(token)["sub"] == "a"
    with pytest.raises(ValueError):
        issue_token(es_private, "a", 60)          # the default is EdDSA: no silent switch


# --- files -------------------------------------------------------------------------

def test_keygen_writes_index_and_rotate_files(tmp_path):
    paths = generate_server_keys(str(tmp_path))
    [entry] = read_keyring(paths["keyring"])
    pub = serialization.load_pem_public_key(read(paths["jwt_public_key"]))
    assert entry["kid"] == key_id(pub) == paths["kid"] and entry["alg"] == "EdDSA"
    assert entry["private"] == "jwt.key" and entry["retired_at"] is None
    result = rotate_jwt_keys(str(tmp_path), grace=600, now=1000)
    entries = {e["kid"]: e for e in read_keyring(paths["keyring"])}
    assert entries[paths["kid"]]["retired_at"] == 1000 and entries[paths["kid"]]["grace"] == 600
    assert entries[result["kid"]]["retired_at"] is None
    assert result["retired"] == [(paths["kid"], 1600)]
    for path in result["files"]:
        want = 0o600 if path.endswith(".key") else 0o644
        assert stat.S_IMODE(os.stat(path).st_mode) == want


def test_rotate_adopts_legacy_single_key_dir(tmp_path):
    paths = generate_server_keys(str(tmp_path))
    os.unlink(paths["keyring"])          # as written by an older afb keygen
    result = rotate_jwt_keys(str(tmp_path))
    kids = [e["kid"] for e in read_keyring(paths["keyring"])]
    assert kids == [paths["kid"], result["kid"]]
    old_token = issue_token(read(paths["jwt_private_key"]), "a", 60)
    assert TokenVerifier(keyring=KeyRing(paths["keyring"])).verify(old_token)


@pytest.mark.parametrize("content,problem", [
    ('{"format": 1, "keys": []}', "need exactly one"),
    ('{"format": 2, "keys": []}', "format 1"),
    ('{"format": 1, "keys": [{"kid": "a", "alg": "none", "public": "p"}]}', "unknown algorithm"),
    ('[1]', "format 1"),
])
def test_bad_index_refused(tmp_path, content, problem):
    path = tmp_path / KEYRING_FILE
    path.write_text(content)
    with pytest.raises(ValueError, match=problem):
        read_keyring(str(path))


def test_two_current_keys_refused(tmp_path):
    entry = dict(kid="a", alg="EdDSA", created=0, retired_at=None, grace=None, public="p")
    write_keyring(str(tmp_path / "i.json"), [entry, dict(entry, kid="b")])
    with pytest.raises(ValueError, match="2 keys are marked current"):
        read_keyring(str(tmp_path / "i.json"))


# --- config glue -------------------------------------------------------------------------

def _cfg(directory, **auth):
    base = {"jwt_public_key": os.path.join(directory, "jwt.pub"),
            "jwt_private_key": os.path.join(directory, "jwt.key"), "keyring": "",
            "audience": "afb", "issuer": "afb", "leeway": 30, "algorithm": "EdDSA",
            "rotation_grace": 7 * 86400}
    base.update(auth)
    return {"auth": base, "server": {"state_dir": os.path.join(directory, "state")}}


def test_keyring_auto_detect_and_single_key_fallback(tmp_path):
    paths = generate_server_keys(str(tmp_path))
    cfg = _cfg(str(tmp_path))
    assert keyring_path(cfg) == paths["keyring"]
    assert make_verifier(cfg).keyring is not None
    os.unlink(paths["keyring"])
    assert keyring_path(cfg) is None
    verifier = make_verifier(cfg)
    assert verifier.keyring is None and verifier.kid == paths["kid"]
    token, _claims, kid = make_signer(cfg).issue("x", 60)
    assert kid == paths["kid"] and verifier.verify(token)


def test_make_verifier_refuses_readable_private_key(tmp_path):
    paths = generate_server_keys(str(tmp_path))
    os.chmod(paths["jwt_private_key"], 0o644)
    for cfg in (_cfg(str(tmp_path)), _cfg(str(tmp_path), keyring=paths["keyring"])):
        with pytest.raises(ConfigError) as info:
            make_verifier(cfg)
        assert paths["jwt_private_key"] in str(info.value) and "0644" in str(info.value)
        assert "chmod 600 %s" % paths["jwt_private_key"] in str(info.value)
    os.unlink(paths["keyring"])


def test_hs256_secret_permissions(tmp_path):
    paths = generate_server_keys(str(tmp_path), algorithm="HS256")
    os.chmod(paths["jwt_secret"], 0o640)
    with pytest.raises(ConfigError, match="HMAC secret .*jwt.secret has mode 0640"):
        make_verifier(_cfg(str(tmp_path), algorithm="HS256"))


@pytest.mark.parametrize("mode,ok", [(0o600, True), (0o400, True), (0o640, False),
                                     (0o604, False), (0o644, False), (0o620, False)])
def test_check_secret_file_modes(tmp_path, mode, ok):
    path = tmp_path / "secret"
    path.write_bytes(b"x")
    os.chmod(path, mode)
    if ok:
        check_secret_file(str(path))
    else:
        with pytest.raises(ConfigError) as info:
            check_secret_file(str(path))
        assert str(info.value) == ("secret file %s has mode %04o: group or others can access "
                                   "it; fix: chmod 600 %s" % (path, mode, path))
        assert info.value.errors == [str(info.value)]


def test_check_secret_file_missing(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        check_secret_file(str(tmp_path / "nope"))


def test_sign_token_claims():
    private, public = make_jwt_keys()
    key = load_signing_key(private)
    token, claims = sign_token(key, "EdDSA", "eve", 120, now=1000)
    assert claims == {"sub": "eve", "aud": "afb", "iss": "afb", "iat": 1000, "nbf": 1000,
                      "exp": 1120, "jti": claims["jti"]}
    assert jwt.get_unverified_header(token)["kid"] == key_id(key)


def test_revocation_cache(tmp_path):
    store = StateStore(str(tmp_path / "s.sqlite3"))
    clock = [0.0]
    cache = RevocationCache(store, ttl=2.0, clock=lambda: clock[0])
    claims = {"jti": "j1", "sub": "u", "iat": 10}
    assert cache.is_revoked(claims) is None
    store.revoke_jti("j1")
    assert cache.is_revoked(claims) is None          # cached for up to 2 s
    clock[0] = 2.5
    assert cache.is_revoked(claims) == "token revoked"
    store.close()


def test_broken_store_fails_closed():
    class Broken:
        def is_revoked(self, claims):
            raise OSError("disk gone")

    private, public = make_jwt_keys()
    verifier = TokenVerifier(public, revocations=Broken())
    with pytest.raises(AuthError, match="revocation check failed"):
        verifier.verify(issue_token(private, "a", 60))
