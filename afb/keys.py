"""Server key material: TLS key + self-signed certificate, JWT signing keys, pins.

``afb keygen`` writes four files into one directory::

    server.key  ECDSA P-256 private key, PKCS#8 PEM, 0600
    server.crt  self-signed X.509 certificate, SAN = the given names/IPs
    jwt.key     Ed25519 private key (signs user tokens), PKCS#8 PEM, 0600
    jwt.pub     Ed25519 public key (verifies tokens), PEM, 0644

and returns the certificate's SPKI pin for the client's ``pin`` setting.
"""

import base64
import datetime
import hashlib
import ipaddress
import os
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
FILES = {"cert": "server.crt", "key": "server.key",
         "jwt_private_key": "jwt.key", "jwt_public_key": "jwt.pub"}


def _write_atomic(path, data, mode):
    """Write ``data`` to ``path`` via a temporary file + rename, with ``mode``."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".afb-", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_secret(path, data):
    """Atomically write a secret (bytes or str) readable by its owner only (0600)."""
    _write_atomic(path, data, 0o600)


def spki_pin(cert):
    """``'sha256//' + base64(sha256(SubjectPublicKeyInfo))`` of a PEM or DER cert.

    The same format as ``curl --pinnedpubkey``.
    """
    if isinstance(cert, str):
        cert = cert.encode("ascii")
    if b"-----BEGIN" in cert:
        obj = x509.load_pem_x509_certificate(cert)
    else:
        obj = x509.load_der_x509_certificate(cert)
    spki = obj.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def _san(names):
    entries = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def make_self_signed(names=DEFAULT_NAMES, days=825):
    """A new ECDSA P-256 key and self-signed certificate -> (key_pem, cert_pem)."""
    if not names:
        raise ValueError("at least one name is needed for the certificate")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def make_jwt_keys():
    """A new Ed25519 key pair -> (private_pem PKCS#8, public_pem SPKI)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return private_pem, public_pem


def generate_server_keys(directory, names=DEFAULT_NAMES, days=825, force=False):
    """Write the server's TLS and JWT keys into ``directory``; see the module doc.

    Returns ``{'cert', 'key', 'jwt_private_key', 'jwt_public_key'}`` paths plus
    ``'pin'``.  Raises FileExistsError if any file exists and ``force`` is false.
    """
    names = tuple(names)
    paths = {what: os.path.join(directory, name) for what, name in FILES.items()}
    if not force:
        existing = [p for p in paths.values() if os.path.lexists(p)]
        if existing:
            raise FileExistsError("refusing to overwrite %s (use --force)" % ", ".join(existing))
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)
        os.chmod(directory, 0o700)
    key_pem, cert_pem = make_self_signed(names, days)
    jwt_private, jwt_public = make_jwt_keys()
    write_secret(paths["key"], key_pem)
    _write_atomic(paths["cert"], cert_pem, 0o644)
    write_secret(paths["jwt_private_key"], jwt_private)
    _write_atomic(paths["jwt_public_key"], jwt_public, 0o644)
    return dict(paths, pin=spki_pin(cert_pem))
