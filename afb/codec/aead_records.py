"""E2E records and ciphers (sans-IO): the sealed messages of the AEAD channel.

Each WebSocket message of an E2E tunnel is one record::

    header (1 byte: type, key-update flag) || AEAD(key, nonce, plaintext, aad=header)

The nonce is a per-direction 64-bit counter that is never sent: a replayed,
reordered, dropped or modified record fails authentication, and the channel is
dead from then on (:class:`RecordError`, WebSocket close 4002).  After
``REKEY_BYTES`` a direction moves to a key derived from the current one and
says so in the header.  The handshake that makes the keys is in
:mod:`afb.codec.aead`.
"""

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from afb.buffers import POOL_BUFFER, BufferPool, byte_view
from afb.errors import ConfigError, ProtocolError

CIPHER_CHACHA20_POLY1305 = 1
CIPHER_AES_256_GCM = 2
CIPHER_NAMES = {CIPHER_CHACHA20_POLY1305: "chacha20-poly1305", CIPHER_AES_256_GCM: "aes-256-gcm"}
_CIPHER_CLASSES = {CIPHER_CHACHA20_POLY1305: ChaCha20Poly1305, CIPHER_AES_256_GCM: AESGCM}
_CIPHER_ALIASES = {"chacha20-poly1305": 1, "chacha20poly1305": 1, "chacha20": 1, "chacha": 1,
                   "aes-256-gcm": 2, "aes256gcm": 2, "aes-gcm": 2, "aesgcm": 2, "aes": 2}

KEY_SIZE = 32
TAG_SIZE = 16
REKEY_INFO = b"afb e2e v1 key update"

REC_DATA = 0x01
FLAG_KEY_UPDATE = 0x80
_HEADERS = {REC_DATA: bytes([REC_DATA]),
            REC_DATA | FLAG_KEY_UPDATE: bytes([REC_DATA | FLAG_KEY_UPDATE])}
HEADER_SIZE = 1
#: Bytes a record adds to its plaintext (header + tag).
OVERHEAD = HEADER_SIZE + TAG_SIZE

_NONCE = struct.Struct("!4xQ")                     # 12 bytes: counter, big-endian
#: Records per direction before the counter would wrap; the sealer stops there.
MAX_RECORDS = 1 << 64
#: A direction moves to a new key after this many bytes (each record counts
#: its plaintext plus 32), far inside AES-GCM's limits.
REKEY_BYTES = 1 << 34

#: Private-use WebSocket close code: the E2E handshake or a record failed.
CLOSE_E2E_FAILED = 4002

#: Recent cryptography releases seal into a caller's buffer (``encrypt_into``);
#: without it the sealer falls back to ``encrypt`` plus one concatenation.
HAVE_INTO = hasattr(AESGCM, "encrypt_into") and hasattr(ChaCha20Poly1305, "encrypt_into")
#: ... and open into one (``decrypt_into``); without it ``open_view`` returns new bytes.
HAVE_DECRYPT_INTO = hasattr(AESGCM, "decrypt_into") and hasattr(ChaCha20Poly1305, "decrypt_into")

#: Plaintexts from this size on are opened into reused buffers (and a sealer
#: gathers several parts in a reused buffer instead of joining them): a fresh
#: 256 KiB allocation per record means fresh pages, and page faults cost
#: about as much as the cipher itself.
POOL_MIN = 16 * 1024


class RecordError(ProtocolError):
    """An E2E record failed: modified, replayed, reordered, dropped or malformed.

    The channel is dead afterwards; the WebSocket should be closed with
    ``close_code``.
    """

    close_code = CLOSE_E2E_FAILED


# --- ciphers ------------------------------------------------------------------

def cipher_id(value):
    """The cipher id for an id or a name ('chacha20-poly1305', 'aes-256-gcm', 'aes', ...)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value in CIPHER_NAMES:
            return value
    elif isinstance(value, str):
        found = _CIPHER_ALIASES.get(value.strip().lower().replace("_", "-"))
        if found is not None:
            return found
    raise ConfigError("unknown E2E cipher %r (use %s)" % (
        value, " or ".join(CIPHER_NAMES.values())))


def cipher_name(cid):
    return CIPHER_NAMES.get(cid, "cipher 0x%02x" % cid)


def default_cipher():
    """The cipher a handshake uses when its caller names none: ChaCha20-Poly1305, fast
    everywhere.  The transport names the fastest on this CPU (it reads /proc: not a
    codec's business; see afb.transport.secure_channel.fastest_cipher)."""
    return CIPHER_CHACHA20_POLY1305


def _aead(cid, key):
    return _CIPHER_CLASSES[cid](key)


# --- records --------------------------------------------------------------------

def _next_key(key):
    return HKDFExpand(algorithm=hashes.SHA256(), length=KEY_SIZE, info=REKEY_INFO).derive(key)


class RecordSealer:
    """Seals one direction's records: a counter nonce, never reused.

    ``use_into``: None seals into a reused buffer when cryptography can
    (:data:`HAVE_INTO`); False never does; True asks for it, and still falls
    back where the library lacks ``encrypt_into`` (cryptography 43, Debian 13).
    """

    def __init__(self, cipher, key, *, rekey_bytes=REKEY_BYTES, use_into=None):
        self.cipher = cipher
        self.rekey_bytes = rekey_bytes
        self.counter = 0           # nonce of the next record
        self.key_updates = 0
        self._key = bytes(key)
        self._aead = _aead(cipher, self._key)
        self._since_rekey = 0
        self._use_into = HAVE_INTO and (use_into is None or bool(use_into))
        self._buf = bytearray(0)
        self._view = memoryview(self._buf)
        self._stage = bytearray(0)        # several parts gathered for encrypt_into
        self._stage_view = memoryview(self._stage)
        self._dead = False

    def seal(self, parts):
        """One record (bytes) whose plaintext is the concatenation of *parts*."""
        return bytes(self.seal_view(parts))

    def seal_view(self, parts, reserve=0):
        """Like :meth:`seal`, but may return a memoryview of a buffer reused by the next call.

        For a sender that writes the record out before sealing the next one
        (and seals and sends under one lock, so that records leave in counter
        order).  With ``reserve``, the record starts that many (unspecified)
        bytes into the result: room for a transport header written in place.
        """
        if self._dead:
            raise RecordError("E2E channel is dead after an earlier error")
        if isinstance(parts, (bytes, bytearray, memoryview)):
            data = byte_view(parts)
        elif len(parts) == 1:
            data = byte_view(parts[0])
        elif self._use_into:
            data = self._gather(parts)
        else:
            data = b"".join(parts)
        counter = self.counter
        if counter >= MAX_RECORDS:
            self._dead = True
            raise RecordError("E2E record counter exhausted; the channel must be re-established")
        self.counter = counter + 1
        size = len(data)
        self._since_rekey += size + 32
        flags = REC_DATA
        if self._since_rekey >= self.rekey_bytes:
            flags |= FLAG_KEY_UPDATE
        header = _HEADERS[flags]
        nonce = _NONCE.pack(counter)
        if self._use_into:
            total = reserve + size + OVERHEAD
            if len(self._buf) < total:
                self._buf = bytearray(max(total, POOL_BUFFER))
                self._view = memoryview(self._buf)
            out = self._view[:total]
            out[reserve] = flags
            self._aead.encrypt_into(nonce, data, header, out[reserve + HEADER_SIZE:])
        else:
            # Writable, like the buffer above: a sender writes its header into
            # the reserved room (WsConnection.send_in_place).
            out = bytearray(reserve)
            out += header
            out += self._aead.encrypt(nonce, data, header)
        if flags & FLAG_KEY_UPDATE:
            self._rekey()
        return out

    def _gather(self, parts):
        """*parts* copied into the reused staging buffer (no new allocation)."""
        views = [byte_view(part) for part in parts]
        size = sum(len(view) for view in views)
        if len(self._stage) < size:
            self._stage = bytearray(max(size, POOL_BUFFER))
            self._stage_view = memoryview(self._stage)
        stage = self._stage_view
        pos = 0
        for view in views:
            end = pos + len(view)
            stage[pos:end] = view
            pos = end
        return stage[:size]

    def _rekey(self):
        self._key = _next_key(self._key)
        self._aead = _aead(self.cipher, self._key)
        self._since_rekey = 0
        self.key_updates += 1


class RecordOpener:
    """Opens one direction's records in order; any failure kills the channel."""

    def __init__(self, cipher, key):
        self.cipher = cipher
        self.counter = 0           # nonce of the next record expected
        self.key_updates = 0
        self._key = bytes(key)
        self._aead = _aead(cipher, self._key)
        self._pool = BufferPool()
        self._dead = False

    def open(self, record):
        """The plaintext (bytes) of the next record; raises :class:`RecordError`."""
        return self._open(record, False)

    def open_view(self, record):
        """Like :meth:`open`, but a large plaintext may come back as a memoryview of
        a pooled buffer, reused once no view of it is alive any more: keep it only
        as long as needed (like a large message from ``WsConnection.recv_message``).
        """
        return self._open(record, HAVE_DECRYPT_INTO)

    def _open(self, record, into):
        if self._dead:
            raise RecordError("E2E channel is dead after an earlier record error")
        try:
            view = byte_view(record)
        except TypeError:
            self._fail("E2E record is not bytes")
        if len(view) < OVERHEAD:
            self._fail("truncated E2E record (%d bytes, at least %d needed)"
                       % (len(view), OVERHEAD))
        flags = view[0]
        header = _HEADERS.get(flags)
        if header is None:
            self._fail("unknown E2E record type 0x%02x" % flags)
        counter = self.counter
        if counter >= MAX_RECORDS:
            self._fail("E2E record counter exhausted")
        size = len(view) - OVERHEAD
        try:
            if into and size >= POOL_MIN:
                plaintext = self._pool.view(size)
                self._aead.decrypt_into(_NONCE.pack(counter), view[HEADER_SIZE:], header,
                                        plaintext)
            else:
                plaintext = self._aead.decrypt(_NONCE.pack(counter), view[HEADER_SIZE:], header)
        except InvalidTag:
            self._fail("E2E record %d failed authentication (modified, replayed, reordered or "
                       "dropped)" % counter)
        self.counter = counter + 1
        if flags & FLAG_KEY_UPDATE:
            self._key = _next_key(self._key)
            self._aead = _aead(self.cipher, self._key)
            self.key_updates += 1
        return plaintext

    def _fail(self, message):
        self._dead = True
        raise RecordError(message)
