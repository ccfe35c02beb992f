"""The SPKI of a DER certificate, without cryptography.x509 (afb/codec/der.py)."""

import datetime
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from afb.codec.der import DerError, subject_public_key_info
from afb.keys import make_self_signed


def _cert(key, long_name=False):
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, "x" * 9)]
    if long_name:                              # a Name over 255 bytes: long-form lengths
        attributes += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "u%d" % n * 20)
                       for n in range(8)]
    name = x509.Name(attributes)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def _spki(cert):
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


KEYS = {
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa2048": lambda: rsa.generate_private_key(65537, 2048),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}


@pytest.mark.parametrize("kind", sorted(KEYS))
@pytest.mark.parametrize("long_name", [False, True])
def test_the_spki_is_the_one_cryptography_finds(kind, long_name):
    cert = _cert(KEYS[kind](), long_name=long_name)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert subject_public_key_info(der) == _spki(cert)


def test_afb_keygens_and_openssls_certificates(tmp_path):
    _key, pem = make_self_signed(("vps.example.org", "203.0.113.7"))
    cert = x509.load_pem_x509_certificate(pem)
    assert subject_public_key_info(cert.public_bytes(serialization.Encoding.DER)) == _spki(cert)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=t", "-keyout", str(tmp_path / "k"), "-outform", "DER",
                    "-out", str(tmp_path / "c")], check=True, capture_output=True)
    der = (tmp_path / "c").read_bytes()
    assert subject_public_key_info(der) == _spki(x509.load_der_x509_certificate(der))


@pytest.mark.parametrize("damage", [
    lambda d: d[:-1],                          # truncated
    lambda d: d + b"\x00",                     # trailing byte
    lambda d: b"\x31" + d[1:],                 # not a SEQUENCE
    lambda d: d[:4] + b"\x02" + d[5:],         # tbsCertificate is not a SEQUENCE
    lambda d: b"",
])
def test_damaged_certificates_are_der_errors(damage):
    cert = _cert(KEYS["p256"]())
    with pytest.raises(DerError):
        subject_public_key_info(damage(cert.public_bytes(serialization.Encoding.DER)))


_DER = _cert(KEYS["p256"]()).public_bytes(serialization.Encoding.DER)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_fuzz_any_bytes_give_an_spki_or_a_der_error(data):
    try:
        subject_public_key_info(data)
    except DerError:
        pass


@settings(max_examples=300)
@given(st.integers(0, len(_DER) - 1), st.integers(0, 255))
def test_fuzz_a_flipped_byte_gives_an_spki_or_a_der_error(position, value):
    data = bytearray(_DER)
    data[position] = value
    try:
        subject_public_key_info(bytes(data))
    except DerError:
        pass
