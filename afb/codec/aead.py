"""The optional end-to-end AEAD channel inside the WebSocket (sans-IO).

With E2E on, a CDN or reverse proxy that terminates TLS in front of the
server sees only ciphertext: the tunnel frames travel sealed with keys that
only the client and the server hold.  The client pins the server's static
X25519 public key (base64 of its 32 raw bytes) in its config.

Handshake (Noise-NK-like, one round trip)
-----------------------------------------
Right after the WebSocket upgrade and before the tunnel HELLO, each side sends
one binary WebSocket message::

    ClientHello (55 bytes)                 ServerHello (55 bytes)
    +------------------+                   +------------------+
    | "AFBE"        4  |                   | "AFBE"        4  |
    | version = 1   1  |                   | version = 1   1  |
    | type = 0x01   1  |                   | type = 0x02   1  |
    | cipher pref   1  |                   | chosen cipher 1  |
    | client eph   32  |  X25519 public    | server eph   32  |  X25519 public
    | random       16  |                   | confirm      16  |  AEAD tag, see below
    +------------------+                   +------------------+

Ciphers: 1 = ChaCha20-Poly1305, 2 = AES-256-GCM.  The server takes the
client's preference if it allows it, else its own first allowed cipher (an
unknown preference gets the same treatment, so new ids can be added later).

Keys::

    h    = SHA-256(LABEL || u16 len(binding) || binding || server static pub
                   || ClientHello || ServerHello[:39])      (all but the tag)
    ikm  = X25519(c_eph, s_static) || X25519(c_eph, s_eph)
    c2s || s2c = HKDF-SHA256(ikm, salt=h, info="afb e2e v1 keys", 64 bytes)
    confirm    = AEAD(s2c, nonce=ff*12, plaintext="", aad=h)   (the 16-byte tag)

Only a server holding the static private key computes the first DH, so a valid
``confirm`` proves to the client that it talks to the pinned server (and that
both saw the same hello messages, cipher choice and binding).  The
ephemeral-ephemeral DH gives forward secrecy: a stolen static key does not
decrypt recorded sessions.

``binding`` is channel binding supplied by the caller on both sides: afb
passes SHA-256 of the JWT that authorized the WebSocket upgrade, so a
handshake cannot be replayed or spliced into another token's upgrade.  (A
proxy that sees the token could still use it as the user; E2E protects the
traffic, not the token.)

Records
-------
After the handshake every WebSocket message is exactly one record::

    +----------+-------------------------------+---------+
    | header 1 | ciphertext (len(plaintext))   | tag 16  |
    +----------+-------------------------------+---------+
    header = record type (0x01 DATA) | 0x80 if this is the last record under
             the current key (KEY UPDATE)
    nonce  = 12-byte big-endian record counter of this direction, from 0
             (below 2**64: the all-ones confirmation nonce is out of reach)
    aad    = the header byte

The counter is implicit (never sent): a replayed, dropped, reordered or
modified record fails authentication, raises :class:`RecordError`, and the
opener refuses everything after it.  The sealer refuses to let the counter
wrap.  Each direction moves to a new key, ``HKDF-Expand(key, "afb e2e v1 key
update", 32)``, after about REKEY_BYTES (16 GiB) of records, which keeps
AES-GCM well inside its data limits; the flag bit tells the opener when.

A record is its plaintext plus OVERHEAD (17) bytes: the WebSocket's message
limit must leave that room above the tunnel's largest batch.

Use (everything here is bytes in, bytes out: no sockets, no gevent)::

    client = ClientHandshake(server_pub_b64, binding, "chacha20-poly1305")
    send(client.start());  sealer, opener = client.finish(recv())
    server = ServerHandshake(static_private_key, binding, allowed_ciphers)
    reply, sealer, opener = server.respond(recv());  send(reply)
    send(sealer.seal(parts));  plaintext = opener.open(recv())
"""

import base64
import binascii
import hashlib
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# Records and ciphers live in aead_records; they are part of this module's API.
from afb.codec.aead_records import (  # noqa: F401 - re-exported
    CIPHER_AES_256_GCM,
    CIPHER_CHACHA20_POLY1305,
    CIPHER_NAMES,
    CLOSE_E2E_FAILED,
    FLAG_KEY_UPDATE,
    HAVE_DECRYPT_INTO,
    HAVE_INTO,
    KEY_SIZE,
    MAX_RECORDS,
    OVERHEAD,
    POOL_BUFFER,
    REC_DATA,
    REKEY_BYTES,
    TAG_SIZE,
    RecordError,
    RecordOpener,
    RecordSealer,
    _aead,
    cipher_id,
    cipher_name,
    default_cipher,
)
from afb.errors import ConfigError, ProtocolError, VersionMismatch

# --- wire constants -----------------------------------------------------------

MAGIC = b"AFBE"
VERSION = 1
MSG_CLIENT_HELLO = 0x01
MSG_SERVER_HELLO = 0x02

LABEL = b"afb e2e v1 X25519 HKDF-SHA256 ChaCha20-Poly1305/AES-256-GCM"
KEYS_INFO = b"afb e2e v1 keys"

RANDOM_SIZE = 16
_HEAD = struct.Struct("!4sBBB32s")                 # magic, version, type, cipher, eph pub
CLIENT_HELLO_SIZE = _HEAD.size + RANDOM_SIZE       # 55
SERVER_HELLO_SIZE = _HEAD.size + TAG_SIZE          # 55
MAX_BINDING = 0xFFFF

#: The handshake confirmation's nonce, out of the counter's reach.
CONFIRM_NONCE = b"\xff" * 12
class HandshakeError(ProtocolError):
    """The E2E handshake failed (bad message, wrong server key, tampering)."""

    close_code = CLOSE_E2E_FAILED


# --- static keys ----------------------------------------------------------------

def generate_static_key():
    """A new server static key pair -> ``(private_pem, public_b64)``.

    ``private_pem`` is PKCS#8 PEM (bytes) for the server's key file;
    ``public_b64`` is what the client config pins.
    """
    from cryptography.hazmat.primitives import serialization  # the server's, and keygen's

    key = X25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, public_key_b64(key)


def private_key_from(value):
    """An ``X25519PrivateKey`` from a key object, PKCS#8 PEM (bytes/str) or 32 raw bytes."""
    if isinstance(value, X25519PrivateKey):
        return value
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
        if b"-----BEGIN" in value:
            # The server's key file: the client never loads PEM, and the
            # serialization module costs it 1.6 MiB (measured).
            from cryptography.hazmat.primitives import serialization

            try:
                key = serialization.load_pem_private_key(value, password=None)
            except (ValueError, TypeError) as exc:
                raise ConfigError("E2E private key: not a readable PEM key (%s)" % exc) from None
            if not isinstance(key, X25519PrivateKey):
                raise ConfigError("E2E private key: a %s key, not X25519"
                                  % type(key).__name__.replace("PrivateKey", "").lstrip("_"))
            return key
        if len(value) == KEY_SIZE:
            return X25519PrivateKey.from_private_bytes(value)
        raise ConfigError("E2E private key: expected PEM or 32 raw bytes, got %d bytes"
                          % len(value))
    raise TypeError("cannot make an X25519 private key from %s" % type(value).__name__)


def public_key_b64(private):
    """base64 of the 32 raw public bytes of a private key (object, PEM or raw)."""
    raw = private_key_from(private).public_key().public_bytes_raw()
    return base64.b64encode(raw).decode("ascii")


def parse_public_key(value):
    """The 32 raw bytes of a pinned public key given as base64 text (or raw bytes/object)."""
    if isinstance(value, X25519PublicKey):
        return value.public_bytes_raw()
    if isinstance(value, (bytes, bytearray, memoryview)) and len(value) == KEY_SIZE:
        return bytes(value)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", "replace")
    if not isinstance(value, str):
        raise TypeError("cannot read an X25519 public key from %s" % type(value).__name__)
    text = "".join(value.split())
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4),
                               altchars=b"-_" if ("-" in text or "_" in text) else None,
                               validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("E2E server public key %r is not valid base64" % value) from None
    if len(raw) != KEY_SIZE:
        raise ConfigError("E2E server public key must be 32 bytes in base64, got %d bytes"
                          % len(raw))
    return raw


def _raw_public(key):
    return key.public_key().public_bytes_raw()


# --- handshake ----------------------------------------------------------------------

def _binding_bytes(binding):
    if binding is None:
        return b""
    if not isinstance(binding, (bytes, bytearray, memoryview)):
        raise TypeError("binding must be bytes, not %s" % type(binding).__name__)
    binding = bytes(binding)
    if len(binding) > MAX_BINDING:
        raise ValueError("binding of %d bytes is too long" % len(binding))
    return binding


def _transcript(binding, static_pub, client_hello, server_head):
    digest = hashlib.sha256(LABEL)
    digest.update(struct.pack("!H", len(binding)))
    digest.update(binding)
    digest.update(static_pub)
    digest.update(client_hello)
    digest.update(server_head)
    return digest.digest()


def _derive(ikm, h):
    okm = HKDF(algorithm=hashes.SHA256(), length=2 * KEY_SIZE, salt=h, info=KEYS_INFO).derive(ikm)
    return okm[:KEY_SIZE], okm[KEY_SIZE:]


def _exchange(private, peer_raw, what):
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_raw))
    except ValueError:
        raise HandshakeError("E2E handshake failed: invalid %s (low-order X25519 point)"
                             % what) from None


def _looks_like_tunnel_hello(view):
    # A tunnel frame header: type HELLO (0), flags 0, stream 0.
    return len(view) >= 10 and bytes(view[:6]) == b"\x00" * 6


def _parse_head(message, expected_type, size, peer):
    """Check magic, version, type and size; return ``(view, cipher, eph_pub)``."""
    try:
        view = memoryview(message).cast("B")
    except TypeError:
        raise HandshakeError("E2E handshake failed: %s message is not bytes" % peer) from None
    if len(view) < 6 or bytes(view[:4]) != MAGIC:
        if peer == "client" and _looks_like_tunnel_hello(view):
            # Short enough for a WebSocket close reason (123 bytes), which the client shows.
            raise HandshakeError("E2E handshake failed: the client sent a plain tunnel HELLO; "
                                 "this server requires E2E (set [e2e] server_key)")
        if len(view) < 6:
            raise HandshakeError("E2E handshake failed: %s sent %d bytes, too short for a hello"
                                 % (peer, len(view)))
        raise HandshakeError("E2E handshake failed: %s message is not an E2E hello (magic %r)"
                             % (peer, bytes(view[:4])))
    version, msg_type = view[4], view[5]
    if version != VERSION:
        exc = VersionMismatch("E2E protocol version mismatch: %s speaks %d, we speak %d"
                              % (peer, version, VERSION))
        exc.peer_version = version
        raise exc
    if msg_type != expected_type:
        raise HandshakeError("E2E handshake failed: %s sent message type 0x%02x, expected 0x%02x"
                             % (peer, msg_type, expected_type))
    if len(view) != size:
        raise HandshakeError("E2E handshake failed: %s hello of %d bytes, expected %d"
                             % (peer, len(view), size))
    _magic, _version, _type, cid, eph = _HEAD.unpack_from(view)
    return view, cid, eph


class ClientHandshake:
    """Client side: ``start()`` -> ClientHello; ``finish(server_hello)`` -> (sealer, opener)."""

    def __init__(self, server_static_pub, binding=b"", cipher_pref=None, *,
                 rekey_bytes=REKEY_BYTES):
        self.server_static = parse_public_key(server_static_pub)
        self.binding = _binding_bytes(binding)
        self.cipher_pref = default_cipher() if cipher_pref is None else cipher_id(cipher_pref)
        self.rekey_bytes = rekey_bytes
        self.cipher = None
        self.transcript_hash = None
        self._eph = None
        self._hello = None
        self._done = False

    def start(self):
        """The ClientHello message (55 bytes)."""
        if self._hello is not None:
            raise RuntimeError("ClientHandshake.start() called twice")
        self._eph = X25519PrivateKey.generate()
        self._hello = _HEAD.pack(MAGIC, VERSION, MSG_CLIENT_HELLO, self.cipher_pref,
                                 _raw_public(self._eph)) + os.urandom(RANDOM_SIZE)
        return self._hello

    def finish(self, server_hello):
        """Check the ServerHello; return ``(RecordSealer, RecordOpener)`` for the client."""
        if self._hello is None:
            raise RuntimeError("ClientHandshake.finish() before start()")
        if self._done:
            raise RuntimeError("ClientHandshake.finish() called twice")
        view, cid, s_eph = _parse_head(server_hello, MSG_SERVER_HELLO, SERVER_HELLO_SIZE, "server")
        if cid not in CIPHER_NAMES:
            raise HandshakeError("E2E handshake failed: server chose unknown cipher id %d" % cid)
        dh_static = _exchange(self._eph, self.server_static, "pinned server public key")
        dh_eph = _exchange(self._eph, s_eph, "server ephemeral key")
        h = _transcript(self.binding, self.server_static, self._hello, view[:_HEAD.size])
        c2s, s2c = _derive(dh_static + dh_eph, h)
        try:
            _aead(cid, s2c).decrypt(CONFIRM_NONCE, bytes(view[_HEAD.size:]), h)
        except InvalidTag:
            raise HandshakeError(
                "E2E handshake failed: server key does not match the pinned key "
                "(or the channel binding differs, or the handshake was tampered with)") from None
        self._done = True
        self._eph = None
        self.cipher = cid
        self.transcript_hash = h
        return (RecordSealer(cid, c2s, rekey_bytes=self.rekey_bytes),
                RecordOpener(cid, s2c))


class ServerHandshake:
    """Server side: ``respond(client_hello)`` -> (ServerHello, sealer, opener)."""

    def __init__(self, static_priv, binding=b"", allowed_ciphers=None, *, rekey_bytes=REKEY_BYTES):
        self.static = private_key_from(static_priv)
        self.static_pub = _raw_public(self.static)
        self.binding = _binding_bytes(binding)
        if allowed_ciphers is None:
            first = default_cipher()
            allowed_ciphers = (first,) + tuple(c for c in CIPHER_NAMES if c != first)
        elif isinstance(allowed_ciphers, (str, int)):
            allowed_ciphers = (allowed_ciphers,)
        self.allowed = tuple(dict.fromkeys(cipher_id(c) for c in allowed_ciphers))
        if not self.allowed:
            raise ConfigError("no E2E cipher allowed")
        self.rekey_bytes = rekey_bytes
        self.cipher = None
        self.transcript_hash = None
        self._done = False

    def respond(self, client_hello):
        """Answer a ClientHello; return ``(server_hello, RecordSealer, RecordOpener)``."""
        if self._done:
            raise RuntimeError("ServerHandshake.respond() called twice")
        view, pref, c_eph = _parse_head(client_hello, MSG_CLIENT_HELLO, CLIENT_HELLO_SIZE, "client")
        cid = pref if pref in self.allowed else self.allowed[0]
        dh_static = _exchange(self.static, c_eph, "client ephemeral key")
        eph = X25519PrivateKey.generate()
        dh_eph = _exchange(eph, c_eph, "client ephemeral key")
        head = _HEAD.pack(MAGIC, VERSION, MSG_SERVER_HELLO, cid, _raw_public(eph))
        h = _transcript(self.binding, self.static_pub, view, head)
        c2s, s2c = _derive(dh_static + dh_eph, h)
        confirm = _aead(cid, s2c).encrypt(CONFIRM_NONCE, b"", h)
        self._done = True
        self.cipher = cid
        self.transcript_hash = h
        return (head + confirm, RecordSealer(cid, s2c, rekey_bytes=self.rekey_bytes),
                RecordOpener(cid, c2s))


__all__ = [
    "CIPHER_AES_256_GCM", "CIPHER_CHACHA20_POLY1305", "CIPHER_NAMES", "CLOSE_E2E_FAILED",
    "ClientHandshake", "HandshakeError", "OVERHEAD", "RecordError", "RecordOpener",
    "RecordSealer", "ServerHandshake", "cipher_id", "cipher_name", "default_cipher",
    "generate_static_key", "parse_public_key", "private_key_from",
    "public_key_b64",
]
