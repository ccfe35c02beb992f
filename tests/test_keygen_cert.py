"""Issue 9, item 10: ``afb keygen``'s certificate has the structure of one made by ``openssl req``.

The real ``openssl`` CLI makes a self-signed P-256 certificate the usual way;
afb's (through ``afb keygen``) must match it field by field: version,
signature algorithm, subject and issuer, validity (exactly the days asked,
starting now, no backdate), serial size, and the extensions with their order
and criticality.  Only the random values (key, serial, times) may differ.
"""

import datetime
import shutil
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import ROOT

OPENSSL = shutil.which("openssl")


def _shape(cert):
    """What of a certificate is structure rather than random values."""
    exts = [(e.oid.dotted_string, e.critical) for e in cert.extensions]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    key = cert.public_key()
    return {
        "version": cert.version, "signature": cert.signature_algorithm_oid.dotted_string,
        "subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
        "key": isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name,
        "days": (cert.not_valid_after_utc - cert.not_valid_before_utc).days,
        "whole seconds": cert.not_valid_before_utc.microsecond == 0,
        "extensions": exts, "basic constraints": (bc.ca, bc.path_length),
        "aki": (aki.key_identifier == ski.digest, aki.authority_cert_issuer,
                aki.authority_cert_serial_number),
        "ski is sha1 of the key": ski.digest == x509.SubjectKeyIdentifier.from_public_key(
            key).digest,
        "san": [type(n).__name__ for n in san],
        "serial fits 159 bits": 0 < cert.serial_number < 1 << 159,
    }


@pytest.mark.skipif(OPENSSL is None, reason="no openssl CLI")
def test_keygen_certificate_has_the_structure_of_openssl_req(tmp_path):
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-days", "365", "-nodes", "-keyout", str(tmp_path / "o.key"), "-out",
         str(tmp_path / "o.crt"), "-subj", "/CN=vps.example.com",
         "-addext", "subjectAltName=DNS:vps.example.com,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30)
    started = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    subprocess.run([sys.executable, "-m", "afb", "keygen", "--dir", str(tmp_path / "afb"),
                    "--name", "vps.example.com", "--name", "127.0.0.1"],
                   check=True, capture_output=True, cwd=ROOT, timeout=60)
    theirs = x509.load_pem_x509_certificate((tmp_path / "o.crt").read_bytes())
    ours = x509.load_pem_x509_certificate((tmp_path / "afb" / "server.crt").read_bytes())
    assert _shape(ours) == _shape(theirs)
    # no backdate: valid from the moment it was made
    assert 0 <= (ours.not_valid_before_utc - started).total_seconds() < 30
