"""RFC 6455 frame codec, sans-IO: frame headers, masking, close payloads.

Nothing here touches a socket.  :func:`parse_header` looks at a buffer and
returns ``None`` while the header is incomplete, so a reader can call it again
after every ``recv``; it raises :class:`~afb.errors.ProtocolError` for anything
RFC 6455 forbids.  :func:`mask` uses wsaccel's C masker when it is installed and
a whole-buffer big-integer XOR otherwise (never a per-byte Python loop).
"""

import os
import struct

from afb.errors import CLOSE_PROTOCOL_ERROR, ProtocolError

try:  # pragma: no cover - which branch runs depends on the environment
    from wsaccel.xormask import XorMaskerSimple as _CMasker
except ImportError:  # pragma: no cover
    _CMasker = None
try:  # pragma: no cover - afb's own C masker (setup.py builds it when it can)
    from afb._xormask import mask as _c_mask
    from afb._xormask import mask_inplace as _c_mask_inplace
except ImportError:  # pragma: no cover
    _c_mask = _c_mask_inplace = None

#: True when masking runs in C (wsaccel).
HAVE_WSACCEL = _CMasker is not None
#: True when afb's 64-bit-word C masker is built (several GB/s).
HAVE_FAST_MASK = _c_mask is not None

# Opcodes (RFC 6455, section 5.2).
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))

#: Largest header: 2 bytes + 8-byte length + 4-byte mask key.
MAX_HEADER_LEN = 14
#: Largest control frame payload.
MAX_CONTROL_PAYLOAD = 125
#: Largest close reason, in UTF-8 bytes (125 minus the 2-byte code).
MAX_CLOSE_REASON = 123

# Close codes this module needs beyond those in afb.errors.
CLOSE_NO_STATUS = 1005          # "no code was present"; never sent on the wire
CLOSE_INVALID_DATA = 1007

_H2 = struct.Struct("!BB")
_H4 = struct.Struct("!BBH")
_H10 = struct.Struct("!BBQ")
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


def encode_header(opcode, length, fin=True, mask_key=None):
    """Bytes of one frame header for a payload of *length* bytes."""
    if opcode not in _OPCODES:
        raise ValueError("bad opcode %r" % (opcode,))
    if length < 0 or length >= 1 << 63:
        raise ValueError("bad payload length %r" % (length,))
    if opcode >= OP_CLOSE and (length > MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError("control frames must be final and at most 125 bytes")
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask_key is not None else 0
    if length < 126:
        header = _H2.pack(b0, mbit | length)
    elif length < 0x10000:
        header = _H4.pack(b0, mbit | 126, length)
    else:
        header = _H10.pack(b0, mbit | 127, length)
    if mask_key is not None:
        if len(mask_key) != 4:
            raise ValueError("mask key must be 4 bytes")
        header += bytes(mask_key)
    return header


def parse_header(buf, offset=0):
    """Parse the frame header at ``buf[offset:]``.

    Returns ``(fin, opcode, masked, mask_key, payload_len, header_len)`` or
    ``None`` when more bytes are needed.  ``mask_key`` is 4 bytes or ``None``.
    Raises :class:`ProtocolError` for reserved bits, unknown opcodes, bad
    control frames and 64-bit lengths with the top bit set.
    """
    avail = len(buf) - offset
    if avail < 2:
        return None
    b0 = buf[offset]
    b1 = buf[offset + 1]
    if b0 & 0x70:
        raise ProtocolError("WebSocket frame with reserved bits set (no extension was negotiated)")
    opcode = b0 & 0x0F
    if opcode not in _OPCODES:
        raise ProtocolError("WebSocket frame with reserved opcode 0x%x" % opcode)
    fin = bool(b0 & 0x80)
    masked = bool(b1 & 0x80)
    length = b1 & 0x7F
    if opcode >= OP_CLOSE:
        if not fin:
            raise ProtocolError("fragmented WebSocket control frame")
        if length > MAX_CONTROL_PAYLOAD:
            raise ProtocolError("WebSocket control frame longer than 125 bytes")
    header_len = 2
    if length == 126:
        if avail < 4:
            return None
        length = _U16.unpack_from(buf, offset + 2)[0]
        header_len = 4
    elif length == 127:
        if avail < 10:
            return None
        length = _U64.unpack_from(buf, offset + 2)[0]
        if length >> 63:
            raise ProtocolError("WebSocket frame length with the most significant bit set")
        header_len = 10
    mask_key = None
    if masked:
        if avail < header_len + 4:
            return None
        start = offset + header_len
        mask_key = bytes(buf[start:start + 4])
        header_len += 4
    return fin, opcode, masked, mask_key, length, header_len


# --- masking ----------------------------------------------------------------

class _PyMasker:
    """Pure-Python fallback: XOR as one big integer per call, any length."""

    __slots__ = ("_key", "_pos")

    def __init__(self, key):
        if len(key) != 4:
            raise ValueError("mask key must be 4 bytes")
        self._key = bytes(key)
        self._pos = 0

    def process(self, data):
        n = len(data)
        if not n:
            return b""
        shift = self._pos & 3
        self._pos += n
        key = self._key[shift:] + self._key[:shift]
        stream = key * ((n >> 2) + 1)
        value = int.from_bytes(data, "little") ^ int.from_bytes(stream[:n], "little")
        return value.to_bytes(n, "little")


def Masker(key):
    """A stateful masker: successive ``process(chunk)`` calls continue the key stream."""
    if _CMasker is not None:
        if len(key) != 4:
            raise ValueError("mask key must be 4 bytes")
        return _CMasker(key)
    return _PyMasker(key)


_ZERO_KEY = b"\x00\x00\x00\x00"


def mask(data, key):
    """``data`` XOR the repeated 4-byte ``key`` (masking and unmasking alike)."""
    if not len(data):
        return b""
    if key == _ZERO_KEY:
        return bytes(data)
    if _c_mask is not None:
        return _c_mask(data, key)
    if _CMasker is not None:
        return _CMasker(key).process(data)
    return _PyMasker(key).process(data)


def mask_inplace(buffer, key):
    """Mask a writable buffer (bytearray or memoryview of one) in place."""
    if not len(buffer) or key == _ZERO_KEY:
        return
    if _c_mask_inplace is not None:
        _c_mask_inplace(buffer, key)
    else:
        buffer[:] = mask(buffer, key)


def mask_python(data, key):
    """The pure-Python masker, exposed for tests and for comparison."""
    return _PyMasker(key).process(data)


# --- close payloads ---------------------------------------------------------

def valid_close_code(code):
    """True for a code that may appear in a close frame on the wire."""
    return (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999)


_ELLIPSIS = "\u2026"


def truncate_reason(reason, limit=MAX_CLOSE_REASON):
    """UTF-8 bytes of *reason*, at most *limit*: a longer one ends in an ellipsis.

    It is cut after its last whole word that fits (or at a character
    boundary), so that the peer's log shows that something was left out,
    not a word cut off ("... the handshake was tamper)").
    """
    raw = reason.encode("utf-8")
    if len(raw) <= limit:
        return raw
    room = limit - len(_ELLIPSIS.encode("utf-8"))
    text = raw[:room].decode("utf-8", "ignore")
    if raw[room:room + 1] != b" " and " " in text[room // 2:]:
        text = text[:text.rindex(" ")]
    return (text.rstrip(" ,;:(") + _ELLIPSIS).encode("utf-8")


def describe_close(code, reason):
    """A peer's close for a log line: ``1000 client stopping``, ``1001``, or
    ``no reason given`` (no close frame, or one without a code and reason)."""
    text = " ".join(str(part) for part in (None if code == CLOSE_NO_STATUS else code, reason)
                    if part)
    return text or "no reason given"


def encode_close(code=None, reason=""):
    """A close frame payload; ``code=None`` gives the empty payload."""
    if code is None:
        return b""
    if not valid_close_code(code):
        raise ProtocolError("invalid WebSocket close code %r" % (code,))
    return _U16.pack(code) + truncate_reason(reason or "")


def decode_close(payload):
    """``(code, reason)`` from a close frame payload.

    An empty payload gives ``(CLOSE_NO_STATUS, '')``.  A 1-byte payload, a code
    that may not be sent, or a reason that is not UTF-8 raise ProtocolError.
    """
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) < 2:
        raise ProtocolError("WebSocket close frame with a 1-byte payload")
    code = _U16.unpack_from(payload, 0)[0]
    if not valid_close_code(code):
        raise ProtocolError("invalid WebSocket close code %d" % code)
    try:
        reason = bytes(payload[2:]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("WebSocket close reason is not UTF-8",
                            close_code=CLOSE_INVALID_DATA) from None
    return code, reason


#: Mask keys are cut from one os.urandom() call of this size (256 keys).
_MASK_KEYS = 1024


class _MaskKeys:
    """Mask keys (RFC 6455 5.3) from the OS's CSPRNG, fetched 256 at a time:
    one ``getrandom`` system call per message cost ~10 us on small messages."""

    __slots__ = ("_pool", "_pos")

    def __init__(self):
        self._pool = b""
        self._pos = 0

    def __call__(self):
        pos = self._pos
        if pos >= len(self._pool):
            self._pool = os.urandom(_MASK_KEYS)
            pos = 0
        self._pos = pos + 4
        return self._pool[pos:pos + 4]


#: ``mask_key()``: a fresh 4-byte key for the next client frame.
mask_key = _MaskKeys()


__all__ = [
    "OP_CONTINUATION", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG",
    "MAX_HEADER_LEN", "MAX_CONTROL_PAYLOAD", "MAX_CLOSE_REASON",
    "CLOSE_NO_STATUS", "CLOSE_INVALID_DATA", "CLOSE_PROTOCOL_ERROR", "HAVE_WSACCEL",
    "encode_header", "parse_header", "Masker", "mask", "mask_python",
    "valid_close_code", "truncate_reason", "encode_close", "decode_close", "mask_key",
]
