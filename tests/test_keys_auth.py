"""Key generation, SPKI pins and JWT issue/verify (every refusal is an AuthError)."""

import base64
import hashlib
import io
import ipaddress
import logging
import os
import re
import socket
import ssl
import stat
import threading
import time

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from afb import logsetup
from afb.errors import AuthError, SignedTokenRefused
from afb.keys import generate_server_keys, make_jwt_keys, spki_pin, write_secret
from afb.policy.access import failure_weight
from afb.policy.auth import TokenVerifier, issue_token, key_id, parse_ttl, token_from_headers
from tests.support import forge


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return generate_server_keys(str(tmp_path_factory.mktemp("k") / "keys"))


def read(path):
    with open(path, "rb") as fh:
        return fh.read()


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_modes(keys):
    assert mode(keys["key"]) == 0o600 and mode(keys["jwt_private_key"]) == 0o600
    assert mode(keys["cert"]) == 0o644 and mode(keys["jwt_public_key"]) == 0o644
    assert mode(os.path.dirname(keys["cert"])) == 0o700
    assert b"BEGIN PRIVATE KEY" in read(keys["key"])
    assert b"BEGIN PRIVATE KEY" in read(keys["jwt_private_key"])
    assert b"BEGIN PUBLIC KEY" in read(keys["jwt_public_key"])
    assert not [n for n in os.listdir(os.path.dirname(keys["cert"])) if n.startswith(".afb-")]


def test_cert_san_and_pin(keys):
    pem = read(keys["cert"])
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("::1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    expected = "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()
    assert keys["pin"] == expected == spki_pin(pem)
    assert spki_pin(cert.public_bytes(serialization.Encoding.DER)) == expected
    # the pin is of the key, not of the certificate: stable across re-reads
    assert spki_pin(pem.decode()) == expected


def test_refuses_overwrite_then_force(tmp_path):
    first = generate_server_keys(str(tmp_path), names=["vpn.example", "10.1.2.3"])
    with pytest.raises(FileExistsError):
        generate_server_keys(str(tmp_path))
    assert spki_pin(read(first["cert"])) == first["pin"]
    second = generate_server_keys(str(tmp_path), force=True)
    assert second["pin"] != first["pin"]


def test_tls_handshake_with_generated_cert(keys):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(keys["cert"], keys["key"])
    client_ctx = ssl.create_default_context(cafile=keys["cert"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.recv(2) == b"ok"
                assert spki_pin(tls.getpeercert(binary_form=True)) == keys["pin"]
    finally:
        thread.join(5)
        listener.close()


def test_write_secret(tmp_path):
    path = str(tmp_path / "secret")
    write_secret(path, "one")
    write_secret(path, b"two")
    assert read(path) == b"two" and mode(path) == 0o600


# --- tokens ------------------------------------------------------------------


@pytest.fixture(scope="module")
def jwt_keys():
    return make_jwt_keys()


@pytest.fixture
def verifier(jwt_keys):
    return TokenVerifier(jwt_keys[1])


def claims_now(**extra):
    now = int(time.time())
    claims = {"sub": "alice", "aud": "afb", "iss": "afb", "iat": now, "nbf": now,
              "exp": now + 60, "jti": "x"}
    claims.update(extra)
    return claims


def test_round_trip(jwt_keys, verifier):
    token = issue_token(jwt_keys[0], "alice", 3600)
    claims = verifier.verify(token)
    assert claims["sub"] == "alice" and claims["aud"] == "afb" and claims["iss"] == "afb"
    assert claims["exp"] - claims["iat"] == 3600 and claims["nbf"] == claims["iat"]
    assert len(claims["jti"]) == 32
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA" and header["kid"] == verifier.kid
    public = serialization.load_pem_public_key(jwt_keys[1])
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert verifier.kid == key_id(public) == hashlib.sha256(raw).hexdigest()[:16]
    assert issue_token(jwt_keys[0], "alice", 60) != issue_token(jwt_keys[0], "alice", 60)


def expect(verifier, token, reason):
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    assert str(info.value) == reason
    assert info.value.http_status == 401


def test_expired_and_not_yet_valid(jwt_keys, verifier):
    expect(verifier, issue_token(jwt_keys[0], "a", 60, now=time.time() - 3600), "expired")
    # within the leeway (30 s) an expired token still passes
    verifier.verify(issue_token(jwt_keys[0], "a", 60, now=time.time() - 80))
    expect(verifier, issue_token(jwt_keys[0], "a", 60, now=time.time() + 600), "not yet valid")


def test_wrong_audience_and_issuer(jwt_keys, verifier):
    expect(verifier, issue_token(jwt_keys[0], "a", 60, audience="other"), "wrong audience")
    expect(verifier, issue_token(jwt_keys[0], "a", 60, issuer="other"), "wrong issuer")
    other = TokenVerifier(jwt_keys[1], audience="x", issuer="y")
    other.verify(issue_token(jwt_keys[0], "a", 60, audience="x", issuer="y"))


def test_bad_signature_other_key(jwt_keys, verifier):
    other_private, _ = make_jwt_keys()
    token = issue_token(other_private, "a", 60)
    expect(verifier, token, "unknown key")  # kid names another key
    payload = token.split(".")[1]
    no_kid = jwt.encode(claims_now(), serialization.load_pem_private_key(other_private, None),
                        algorithm="EdDSA")
    expect(verifier, no_kid, "bad signature")
    good = issue_token(jwt_keys[0], "a", 60).split(".")
    expect(verifier, ".".join([good[0], payload, good[2]]), "bad signature")


def test_alg_none_and_hs256_with_public_key(jwt_keys, verifier):
    expect(verifier, forge({"alg": "none", "typ": "JWT"}, claims_now()), "algorithm not allowed")
    expect(verifier, forge({"alg": "HS256", "typ": "JWT"}, claims_now(), key=jwt_keys[1]),
           "algorithm not allowed")
    # even if the header check were skipped, PyJWT itself refuses: allow-list is EdDSA only
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(forge({"alg": "HS256"}, claims_now(), key=jwt_keys[1]), verifier.key,
                   algorithms=["EdDSA"], audience="afb")


def test_malformed_and_missing_claims(jwt_keys, verifier):
    for token in ("", "abc", "a.b.c", "x" * 5000, None):
        expect(verifier, token, "malformed token")
    key = serialization.load_pem_private_key(jwt_keys[0], None)
    for claim in ("exp", "sub", "aud"):
        claims = claims_now()
        del claims[claim]
        expect(verifier, jwt.encode(claims, key, algorithm="EdDSA"), "missing claim %s" % claim)
    expect(verifier, jwt.encode(claims_now(sub=""), key, algorithm="EdDSA"), "bad subject")


def test_wrong_key_types_refused(keys, jwt_keys):
    with pytest.raises(ValueError):
        TokenVerifier(read(keys["cert"]).replace(b"CERTIFICATE", b"PUBLIC KEY"))
    with pytest.raises(ValueError):
        issue_token(read(keys["key"]), "a", 60)  # ECDSA TLS key, not Ed25519
    with pytest.raises(ValueError):
        issue_token(jwt_keys[0], "", 60)


@pytest.mark.parametrize("text,seconds", [("30d", 30 * 86400), ("12h", 43200), ("15m", 900),
                                          ("3600s", 3600), ("3600", 3600), ("2w", 1209600)])
def test_parse_ttl(text, seconds):
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "1y", "1.5h", "h", "10 days"])
def test_parse_ttl_rejects(text):
    with pytest.raises(ValueError):
        parse_ttl(text)


def test_token_from_headers():
    assert token_from_headers({"HTTP_AUTHORIZATION": "Bearer abc.def.ghi"}) == "abc.def.ghi"
    assert token_from_headers({"HTTP_AUTHORIZATION": "bearer  t "}) == "t"
    assert token_from_headers({"HTTP_AUTHORIZATION": "Basic dXNlcjpwYXNz"}) is None
    assert token_from_headers({"HTTP_AUTHORIZATION": "Bearer "}) is None
    assert token_from_headers({}) is None


def test_logsetup_configures_once():
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        handler = logsetup.configure("debug", stream=stream)
        assert logsetup.configure("warning", stream=stream) is handler
        assert root.handlers.count(handler) == 1 and root.level == logging.WARNING
        logging.getLogger("afb.test").warning("hello")
        assert stream.getvalue().count("hello") == 1
        assert " WARNING afb.test: hello" in stream.getvalue()
    finally:
        root.handlers[:] = before
        root.setLevel(level)


def test_signed_but_refused_tokens_are_told_apart_from_guesses(keys):
    """Past the signature, a refusal is a user's stale token: it weighs a tenth
    towards a ban (issue 10, item 4); a guess or a forgery weighs a whole one."""
    private, public = read(keys["jwt_private_key"]), read(keys["jwt_public_key"])

    class Revoked:
        @staticmethod
        def is_revoked(claims):
            return "token revoked (lost)" if claims["sub"] == "mallory" else None

    verifier = TokenVerifier(public, revocations=Revoked(), leeway=0)
    now = time.time()
    stale = {
        "expired": issue_token(private, "alice", 60, now=now - 3600),
        "not yet valid": issue_token(private, "alice", 60, now=now + 3600),
        "wrong audience": issue_token(private, "alice", 60, audience="other"),
        "token revoked (lost)": issue_token(private, "mallory", 60),
    }
    for reason, token in stale.items():
        with pytest.raises(SignedTokenRefused, match=re.escape(reason)):
            verifier.verify(token)
    good = issue_token(private, "alice", 60)
    head, body, sig = good.split(".")
    guesses = {
        "malformed token": "not.a.token",
        "bad signature": "%s.%s.%s" % (head, body, sig[:-4] + ("AAAA" if sig[-4:] != "AAAA"
                                                                 else "BBBB")),
        "algorithm not allowed": forge({"alg": "HS256"}, {"sub": "alice"}, b"k" * 32),
    }
    for reason, token in guesses.items():
        with pytest.raises(AuthError, match=re.escape(reason)) as info:
            verifier.verify(token)
        assert not isinstance(info.value, SignedTokenRefused), reason
        assert failure_weight(info.value) == 1.0
    assert failure_weight(SignedTokenRefused("expired")) == pytest.approx(0.1)
