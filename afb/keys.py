"""Server key material: TLS key + self-signed certificate, JWT signing keys, pins.

``afb keygen`` writes five files into one directory::

    server.key  ECDSA P-256 private key, PKCS#8 PEM, 0600
    server.crt  self-signed X.509 certificate, SAN = the given names/IPs
    jwt.key     Ed25519 private key (signs user tokens), PKCS#8 PEM, 0600
    jwt.pub     Ed25519 public key (verifies tokens), PEM, 0644
    e2e.key     X25519 static key of the end-to-end channel, PKCS#8 PEM, 0600

plus the key ring index ``jwt-keys.json`` (0644, no secrets) naming that JWT
key pair, and returns the certificate's SPKI pin for the client's ``pin``
setting and the E2E public key (base64) for the client's ``[e2e] server_key``.
With ``algorithm='ES256'`` the JWT pair is ECDSA P-256; with
``'HS256'`` there is no pair but ``jwt.secret``: 32 random bytes, 0600.

The key ring (``afb keygen --rotate``) adds keys beside them; its index is::

    {"format": 1, "keys": [
      {"kid": "3f0c...", "alg": "EdDSA", "created": 1700000000,
       "retired_at": null, "grace": null,
       "private": "jwt.key", "public": "jwt.pub"},          # or "secret": FILE for HS256
      ...]}

Exactly one key has ``retired_at`` null: the current signing key.  A retired
key still verifies tokens until ``retired_at + grace`` (``grace`` null: the
server's ``[auth] rotation_grace``).  File names are plain names of files
beside the index (no ``/``, no ``..``): the key folder is what is trusted.
Every secret file is written 0600; :mod:`afb.file_trust` holds the checks
the daemons refuse group/world-readable secrets and writable trust anchors
with.
"""

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import secrets
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from afb.codec import aead
from afb.errors import ConfigError

# The file checks and writers live in afb.file_trust; the daemons and tests take them from here too.
from afb.file_trust import check_secret_file, write_atomic, write_secret  # noqa: F401

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
FILES = {"cert": "server.crt", "key": "server.key",
         "jwt_private_key": "jwt.key", "jwt_public_key": "jwt.pub"}
#: The server's static X25519 key of the E2E channel (see afb.codec.aead).
E2E_KEY_FILE = "e2e.key"
#: JWT signing algorithms afb knows; EdDSA (Ed25519) is the default.
JWT_ALGORITHMS = ("EdDSA", "ES256", "HS256")
#: Name of the key ring index inside the key directory.
KEYRING_FILE = "jwt-keys.json"
#: Legacy single HMAC secret written by ``afb keygen --algorithm HS256``.
HMAC_SECRET_FILE = "jwt.secret"
HMAC_SECRET_BYTES = 32
KEYRING_FORMAT = 1


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


def make_self_signed(names=DEFAULT_NAMES, days=365):
    """A new ECDSA P-256 key and self-signed certificate -> (key_pem, cert_pem).

    Built to look like what ``openssl req -x509 -newkey ec -pkeyopt
    ec_paramgen_curve:P-256 -days N -subj /CN=NAME -addext subjectAltName=...``
    makes on Debian (OpenSSL 3), the commonest self-signed certificate: a
    159-bit random serial, valid from this second (no backdate) for exactly
    *days* days, and openssl's ``v3_ca`` extensions in its order --
    subjectKeyIdentifier, authorityKeyIdentifier (key id only),
    basicConstraints ``CA:TRUE`` (critical), then the subjectAltName.  The
    previous 825 days with a 5-minute backdate, key usages and extended key
    usage were afb's own, recognisable combination.  tests/test_keygen_cert.py
    compares the structure with one the real ``openssl`` makes.
    """
    if not names:
        raise ValueError("at least one name is needed for the certificate")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_san(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def make_jwt_keys(algorithm="EdDSA"):
    """A new JWT key -> ``(private, public_pem)``.

    EdDSA: Ed25519, ES256: ECDSA P-256 (both PKCS#8 private PEM, SPKI public
    PEM); HS256: ``(32 random bytes, None)``.
    """
    if algorithm == "HS256":
        return secrets.token_bytes(HMAC_SECRET_BYTES), None
    if algorithm == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError("unknown JWT algorithm %r (use one of %s)"
                         % (algorithm, ", ".join(JWT_ALGORITHMS)))
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return private_pem, public_pem


def key_id(key):
    """The ``kid`` of a JWT key: 16 hex digits of a SHA-256.

    Ed25519 (public or private): over the raw public key bytes; ECDSA: over
    the DER SubjectPublicKeyInfo; an HMAC secret (bytes): over a labelled
    copy of it, so the kid tells nothing about the secret.
    """
    if isinstance(key, (bytes, bytearray)):
        return hashlib.sha256(b"afb jwt hmac kid\0" + bytes(key)).hexdigest()[:16]
    if isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        key = key.public_key()
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        raw = key.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        raise ValueError("no key id for a %s" % type(key).__name__)
    return hashlib.sha256(raw).hexdigest()[:16]


def _kid_of_material(algorithm, private, public_pem):
    if algorithm == "HS256":
        return key_id(private)
    return key_id(serialization.load_pem_public_key(public_pem))


def _write_jwt_key(directory, algorithm, private, public_pem, base):
    """Write one JWT key as ``base``.key/.pub (or .secret); -> index file fields."""
    if algorithm == "HS256":
        name = base + ".secret"
        write_secret(os.path.join(directory, name), private)
        return {"secret": name}
    write_secret(os.path.join(directory, base + ".key"), private)
    write_atomic(os.path.join(directory, base + ".pub"), public_pem, 0o644)
    return {"private": base + ".key", "public": base + ".pub"}


def generate_server_keys(directory, names=DEFAULT_NAMES, days=365, force=False,
                         algorithm="EdDSA"):
    """Write the server's TLS and JWT keys into ``directory``; see the module doc.

    Returns ``{'cert', 'key', 'jwt_private_key', 'jwt_public_key', 'keyring',
    'e2e_key'}`` paths (``'jwt_secret'`` instead of the JWT pair for HS256)
    plus ``'pin'``, ``'kid'`` and ``'e2e_public_key'`` (base64, for the
    client's ``[e2e] server_key``).  Raises FileExistsError if any file exists and ``force`` is
    false.
    """
    if algorithm not in JWT_ALGORITHMS:
        raise ValueError("unknown JWT algorithm %r (use one of %s)"
                         % (algorithm, ", ".join(JWT_ALGORITHMS)))
    names = tuple(names)

    files = dict(FILES, keyring=KEYRING_FILE, e2e_key=E2E_KEY_FILE)
    if algorithm == "HS256":
        del files["jwt_private_key"], files["jwt_public_key"]
        files["jwt_secret"] = HMAC_SECRET_FILE
    paths = {what: os.path.join(directory, name) for what, name in files.items()}
    if not force:
        existing = [p for p in paths.values() if os.path.lexists(p)]
        if existing:
            raise FileExistsError("refusing to overwrite %s (use --force)" % ", ".join(existing))
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)
        os.chmod(directory, 0o700)
    key_pem, cert_pem = make_self_signed(names, days)
    jwt_private, jwt_public = make_jwt_keys(algorithm)
    write_secret(paths["key"], key_pem)
    write_atomic(paths["cert"], cert_pem, 0o644)
    if algorithm == "HS256":
        fields = _write_jwt_key(directory, algorithm, jwt_private, None, "jwt")
    else:
        fields = _write_jwt_key(directory, algorithm, jwt_private, jwt_public, "jwt")
    kid = _kid_of_material(algorithm, jwt_private, jwt_public)
    entry = dict(kid=kid, alg=algorithm, created=int(time.time()), retired_at=None, grace=None,
                 **fields)
    write_keyring(paths["keyring"], [entry])
    e2e_private, e2e_public = aead.generate_static_key()
    write_secret(paths["e2e_key"], e2e_private)
    return dict(paths, pin=spki_pin(cert_pem), kid=kid, e2e_public_key=e2e_public)


def show_public(directory):
    """What clients need of the keys in ``directory``, as ``afb keygen`` printed it.

    Returns ``{'cert', 'names', 'not_after', 'pin', 'e2e_key', 'e2e_public_key'}``
    (``not_after``: a UTC datetime).  Raises FileNotFoundError naming the
    file that is missing and ValueError for one that is not a certificate or
    an E2E key.  Reads public data only (the E2E public key is derived from
    the private key file, which therefore must be readable).
    """

    paths = {"cert": os.path.join(directory, FILES["cert"]),
             "e2e_key": os.path.join(directory, E2E_KEY_FILE)}
    for path in paths.values():
        if not os.path.exists(path):
            raise FileNotFoundError("no %s in %s (afb keygen --dir %s makes it)"
                                    % (os.path.basename(path), directory, directory))
    with open(paths["cert"], "rb") as handle:
        data = handle.read()
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ValueError("%s is not a PEM certificate" % paths["cert"]) from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in san]
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return dict(paths, names=names, not_after=cert.not_valid_after_utc, pin=spki_pin(data),
                e2e_public_key=aead.public_key_b64(load_static_key(paths["e2e_key"])))


# --- the E2E static key --------------------------------------------------------

def save_static_key(path, private):
    """Write an E2E private key as PKCS#8 PEM, mode 0600; return its public base64."""
    key = aead.private_key_from(private)
    write_secret(path, key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    return aead.public_key_b64(key)


def load_static_key(path):
    """Read the server's E2E static private key file (PEM, or 32 raw bytes)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError("cannot read the E2E private key %s: %s" % (path, exc.strerror or exc)) \
            from None
    try:
        return aead.private_key_from(data)
    except ConfigError as exc:
        raise ConfigError("%s: %s" % (path, exc)) from None


# --- the JWT key ring ----------------------------------------------------------

def _number_or_none(value, what, kid):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError("key %s: %s must be a non-negative number or null" % (kid, what))
    return value


def _plain_name(name):
    """A file name inside the index's folder: not a path, not '.' or '..'."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\0" not in name)


def read_keyring(path):
    """The validated key entries (list of dicts) of the index file ``path``.

    ValueError names the problem; OSError if it cannot be read.
    """
    with open(path, "rb") as handle:
        try:
            data = json.loads(handle.read().decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError("%s: not a key ring index (%s)" % (path, exc)) from None
    if not isinstance(data, dict) or data.get("format") != KEYRING_FORMAT \
            or not isinstance(data.get("keys"), list):
        raise ValueError("%s: not a key ring index of format %d" % (path, KEYRING_FORMAT))
    entries, seen, current = [], set(), 0
    for entry in data["keys"]:
        if not isinstance(entry, dict):
            raise ValueError("%s: every key must be an object" % path)
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or kid in seen:
            raise ValueError("%s: missing or repeated kid %r" % (path, kid))
        seen.add(kid)
        alg = entry.get("alg")
        if alg not in JWT_ALGORITHMS:
            raise ValueError("%s: key %s: unknown algorithm %r" % (path, kid, alg))
        wanted = ("secret",) if alg == "HS256" else ("public",)
        for field in wanted:
            if not isinstance(entry.get(field), str) or not entry[field]:
                raise ValueError("%s: key %s: %s file missing" % (path, kid, field))
        for field in ("secret", "private", "public"):
            if field in entry and not _plain_name(entry[field]):
                raise ValueError("%s: key %s: %s file %r must be a plain file name in the key "
                                 "folder (no '/', no '..')" % (path, kid, field, entry[field]))
        clean = dict(entry)
        clean["created"] = _number_or_none(entry.get("created", 0), "created", kid) or 0
        clean["retired_at"] = _number_or_none(entry.get("retired_at"), "retired_at", kid)
        clean["grace"] = _number_or_none(entry.get("grace"), "grace", kid)
        if clean["retired_at"] is None:
            current += 1
        entries.append(clean)
    if current != 1:
        raise ValueError("%s: %d keys are marked current (retired_at null); need exactly one"
                         % (path, current))
    return entries


def write_keyring(path, entries):
    """Atomically write the index ``path`` (0644: kids, dates and file names only)."""
    text = json.dumps({"format": KEYRING_FORMAT, "keys": list(entries)}, indent=2) + "\n"
    write_atomic(path, text, 0o644)


def _adopt_legacy(directory):
    """An index entry for the single jwt.key/jwt.pub (or jwt.secret) of an older keygen."""
    secret = os.path.join(directory, HMAC_SECRET_FILE)
    public = os.path.join(directory, FILES["jwt_public_key"])
    if os.path.exists(public):
        with open(public, "rb") as handle:
            key = serialization.load_pem_public_key(handle.read())
        if isinstance(key, ed25519.Ed25519PublicKey):
            alg = "EdDSA"
        elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
            alg = "ES256"
        else:
            raise ValueError("%s is neither an Ed25519 nor a P-256 public key" % public)
        fields = {"public": FILES["jwt_public_key"]}
        if os.path.exists(os.path.join(directory, FILES["jwt_private_key"])):
            fields["private"] = FILES["jwt_private_key"]
        kid, created = key_id(key), os.stat(public).st_mtime
    elif os.path.exists(secret):
        with open(secret, "rb") as handle:
            kid = key_id(handle.read())
        alg, fields, created = "HS256", {"secret": HMAC_SECRET_FILE}, os.stat(secret).st_mtime
    else:
        raise FileNotFoundError("no key ring (%s) and no JWT key in %s; run afb keygen first"
                                % (KEYRING_FILE, directory))
    return dict(kid=kid, alg=alg, created=int(created), retired_at=None, grace=None, **fields)


def rotate_jwt_keys(directory, algorithm=None, grace=None, now=None):
    """Add a new current JWT signing key to the ring in ``directory``.

    The previous current key gets ``retired_at = now`` (and ``grace`` seconds,
    if given; otherwise the server's ``rotation_grace`` applies).  A directory
    from an older keygen (jwt.key/jwt.pub only) is adopted into a new index
    first.  ``algorithm`` defaults to that of the current key.  Returns
    ``{'kid', 'alg', 'files', 'retired': [(kid, valid_until or None)], 'keyring'}``.
    """
    if grace is not None and (grace < 0 or int(grace) != grace):
        raise ValueError("grace must be a whole number of seconds >= 0")
    index = os.path.join(directory, KEYRING_FILE)
    entries = read_keyring(index) if os.path.exists(index) else [_adopt_legacy(directory)]
    now = int(time.time() if now is None else now)
    current = [e for e in entries if e["retired_at"] is None][0]
    algorithm = algorithm or current["alg"]
    if algorithm not in JWT_ALGORITHMS:
        raise ValueError("unknown JWT algorithm %r (use one of %s)"
                         % (algorithm, ", ".join(JWT_ALGORITHMS)))
    private, public = make_jwt_keys(algorithm)
    kid = _kid_of_material(algorithm, private, public)
    if any(e["kid"] == kid for e in entries):   # practically impossible
        raise ValueError("new key id %s collides with an existing key; run again" % kid)
    fields = _write_jwt_key(directory, algorithm, private, public, "jwt-" + kid)
    retired = []
    for entry in entries:
        if entry["retired_at"] is None:
            entry["retired_at"] = now
            if grace is not None:
                entry["grace"] = int(grace)
            until = None if entry["grace"] is None else now + entry["grace"]
            retired.append((entry["kid"], until))
    entries.append(dict(kid=kid, alg=algorithm, created=now, retired_at=None, grace=None,
                        **fields))
    write_keyring(index, entries)
    return {"kid": kid, "alg": algorithm, "keyring": index, "retired": retired,
            "files": [os.path.join(directory, name) for name in fields.values()]}
