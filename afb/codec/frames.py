"""Tunnel frames: the sans-IO codec of afb's multiplexing protocol.

Every binary WebSocket message carries one or more whole frames (a frame never
spans two messages, so a message can be parsed on its own)::

    +--------+--------+----------------+----------------+-----------------+
    | type 8 | flags 8| stream id 32   | length 32      | payload ...     |
    +--------+--------+----------------+----------------+-----------------+
      big-endian, 10 bytes of header

Stream 0 carries session frames (HELLO, PING, PONG, GOAWAY).  Client streams
have odd ids.  A DATAGRAM belongs to the stream of an OPEN with
CMD_UDP_ASSOCIATE (its *association*): its payload is a SOCKS-style address
(the destination from the client, the source towards it) and one UDP
datagram's data, never split across frames.  Payload layouts are built and
parsed by the helpers below; all of them take and return plain values, never
sockets.
"""

import struct

from afb.codec.address import decode_address, encode_address
from afb.errors import ProtocolError, VersionMismatch

HEADER = struct.Struct("!BBII")
HEADER_SIZE = HEADER.size

HELLO = 0x00
OPEN = 0x01
OPEN_OK = 0x02
OPEN_FAIL = 0x03
DATA = 0x04
WINDOW = 0x05
FIN = 0x06
RST = 0x07
DATAGRAM = 0x08
PING = 0x09
PONG = 0x0A
GOAWAY = 0x0B
#: Client asks for a fresh token before its own expires (stream 0, empty).
REFRESH = 0x0C
#: Server's answer to REFRESH: the new JWT (UTF-8), or empty + reason on refusal.
TOKEN = 0x0D
#: Resumption (:mod:`afb.codec.resume`), sent only when both sides negotiated it
#: in HELLO: what a receiver holds of a stream (stream frame) ...
ACK = 0x0E
#: ... and each side's stream offsets on a new WebSocket of a resumed tunnel (stream 0).
RESUME = 0x0F

#: OPEN flag: the opener does not wait for OPEN_OK (it answered its app
#: already: fast_open), so the server may send OPEN_OK with the stream's next
#: frame instead of in a message of its own.  Without it, OPEN_OK leaves at once.
FLAG_NO_WAIT = 0x01

FRAME_NAMES = {
    HELLO: "HELLO", OPEN: "OPEN", OPEN_OK: "OPEN_OK", OPEN_FAIL: "OPEN_FAIL",
    DATA: "DATA", WINDOW: "WINDOW", FIN: "FIN", RST: "RST",
    DATAGRAM: "DATAGRAM", PING: "PING", PONG: "PONG", GOAWAY: "GOAWAY",
    REFRESH: "REFRESH", TOKEN: "TOKEN", ACK: "ACK", RESUME: "RESUME",
}
KNOWN_TYPES = frozenset(FRAME_NAMES)
SESSION_TYPES = frozenset({HELLO, PING, PONG, GOAWAY, REFRESH, TOKEN, RESUME})

# OPEN commands (the SOCKS5 ones).
CMD_CONNECT = 0x01
CMD_UDP_ASSOCIATE = 0x03

#: HELLO payload: magic, version, initial stream window, max message, session id.
HELLO_MAGIC = b"AFB\x00"
_HELLO = struct.Struct("!4sHII16s")
_U32 = struct.Struct("!I")
_PING = struct.Struct("!Q")
_GOAWAY = struct.Struct("!IB")

MAX_STREAM_ID = 0xFFFFFFFF
MAX_WINDOW_INCREMENT = 0x7FFFFFFF
#: The largest stream window either side may grant: the HELLO window, and
#: what a stream's credit may reach through WINDOW frames.  A receiver's
#: window never exceeds its configured maximum (``stream_window`` is capped at
#: 16 MiB), so a peer asking for more is broken or hostile: one that
#: advertised 0xFFFFFFFF and never read made a server buffer without bound.
MAX_WINDOW = 16 * 1024 * 1024


def header(ftype, stream_id, length, flags=0):
    """The 10-byte header for a frame of ``length`` payload bytes."""
    return HEADER.pack(ftype, flags, stream_id, length)


def frame(ftype, stream_id, payload=b"", flags=0):
    """A whole frame as one ``bytes`` (for small control frames)."""
    return HEADER.pack(ftype, flags, stream_id, len(payload)) + bytes(payload)


def iter_frames(message):
    """Yield ``(type, flags, stream_id, payload)`` for each frame of a message.

    ``payload`` is a memoryview slice of ``message`` (no copy).  A truncated
    frame raises :class:`ProtocolError`; unknown types are yielded as they are,
    so that the session can answer them per stream.
    """
    view = message if isinstance(message, memoryview) else memoryview(message)
    size = len(view)
    offset = 0
    unpack = HEADER.unpack_from
    while offset < size:
        if size - offset < HEADER_SIZE:
            raise ProtocolError("truncated frame header (%d bytes)" % (size - offset))
        ftype, flags, stream_id, length = unpack(view, offset)
        start = offset + HEADER_SIZE
        offset = start + length
        if offset > size:
            raise ProtocolError(
                "frame %s on stream %d claims %d bytes, message has %d"
                % (frame_name(ftype), stream_id, length, size - start))
        yield ftype, flags, stream_id, view[start:offset]


def frame_name(ftype):
    return FRAME_NAMES.get(ftype, "0x%02x" % ftype)


# --- HELLO ------------------------------------------------------------------

def hello_payload(version, window, max_message, session_id=b"\x00" * 16):
    return _HELLO.pack(HELLO_MAGIC, version, window, max_message, session_id)


def parse_hello(payload, expected_version):
    """Return ``(version, window, max_message, session_id)``.

    Raises :class:`VersionMismatch` when the peer speaks another version
    (its version is in ``exc.peer_version``) and :class:`ProtocolError` when
    the payload is not a HELLO at all.  Trailing bytes are ignored: later
    versions may append fields.
    """
    if len(payload) < _HELLO.size:
        raise ProtocolError("HELLO too short (%d bytes)" % len(payload))
    magic, version, window, max_message, session_id = _HELLO.unpack_from(payload)
    if magic != HELLO_MAGIC:
        raise ProtocolError("HELLO has a bad magic %r" % bytes(magic))
    if version != expected_version:
        exc = VersionMismatch(
            "tunnel protocol version mismatch: peer speaks %d, we speak %d"
            % (version, expected_version))
        exc.peer_version = version
        raise exc
    if window == 0 or max_message < 4096:
        raise ProtocolError("HELLO with window %d and max message %d" % (window, max_message))
    if window > MAX_WINDOW:
        raise ProtocolError("HELLO window of %d bytes exceeds the protocol's largest, %d"
                            % (window, MAX_WINDOW))
    return version, window, max_message, bytes(session_id)


def hello_trailer(payload):
    """What a HELLO payload carries after its fixed fields (extensions: afb.codec.resume)."""
    return bytes(payload[_HELLO.size:])


def first_hello(message):
    """The payload of the HELLO that opens ``message`` (ProtocolError if it does not)."""
    first = next(iter_frames(message), None)
    if first is None:
        raise ProtocolError("empty first message, expected HELLO")
    ftype, _flags, _sid, payload = first
    if ftype != HELLO:
        raise ProtocolError("first frame is %s, not HELLO" % frame_name(ftype))
    return payload


def parse_hello_message(message, expected_version):
    """The HELLO that opens a tunnel, from the peer's first message (its first frame).

    ``(version, window, max_message, session_id)`` as :func:`parse_hello`;
    ProtocolError for an empty message or one that starts with another frame.
    """
    return parse_hello(first_hello(message), expected_version)


# --- stream frames ----------------------------------------------------------

def open_payload(command, host, port, early=b""):
    return bytes([command]) + encode_address(host, port) + bytes(early)


def parse_open(payload):
    """Return ``(command, host, port, early_data)``; bad addresses raise AddressError."""
    if len(payload) < 1:
        raise ProtocolError("empty OPEN")
    decoded = decode_address(payload, 1)
    if decoded is None:
        raise ProtocolError("OPEN with a truncated address")
    host, port, end = decoded
    return payload[0], host, port, payload[end:]


def open_fail_payload(reply, message=""):
    return bytes([reply & 0xFF]) + message.encode("utf-8", "replace")[:200]


def parse_reason(payload):
    """``(code, message)`` of an OPEN_FAIL or RST payload (empty -> (1, ''))."""
    if len(payload) == 0:
        return 0x01, ""
    return payload[0], bytes(payload[1:]).decode("utf-8", "replace")


rst_payload = open_fail_payload


# --- datagrams --------------------------------------------------------------

def datagram_payload(host, port, data):
    """DATAGRAM payload: ``ATYP ADDR PORT`` then the datagram; AddressError if bad."""
    return encode_address(host, port) + bytes(data)


def parse_datagram(payload):
    """``(host, port, data)`` of a DATAGRAM payload (``data`` a slice of ``payload``).

    ProtocolError for a truncated address; AddressError for a bad one.  The
    data may be empty: an empty UDP datagram is a datagram too.
    """
    decoded = decode_address(payload, 0)
    if decoded is None:
        raise ProtocolError("DATAGRAM with a truncated address (%d bytes)" % len(payload))
    host, port, end = decoded
    return host, port, payload[end:]


def window_payload(increment):
    return _U32.pack(increment)


def parse_window(payload):
    if len(payload) != 4:
        raise ProtocolError("WINDOW payload of %d bytes" % len(payload))
    (increment,) = _U32.unpack_from(payload)
    if increment == 0 or increment > MAX_WINDOW_INCREMENT:
        raise ProtocolError("WINDOW increment %d out of range" % increment)
    return increment


# --- session frames ---------------------------------------------------------

def token_payload(token="", error=""):
    """TOKEN payload: status byte (0 ok, 1 refused), then the token or the reason."""
    if token:
        return b"\x00" + token.encode("ascii")
    return b"\x01" + error.encode("utf-8", "replace")[:200]


def parse_token(payload):
    """``(token, error)`` from a TOKEN payload; exactly one of them is non-empty."""
    if len(payload) < 2:
        raise ProtocolError("TOKEN payload of %d bytes" % len(payload))
    text = bytes(payload[1:])
    if payload[0] == 0:
        try:
            return text.decode("ascii"), ""
        except UnicodeDecodeError:
            raise ProtocolError("TOKEN is not ASCII") from None
    return "", text.decode("utf-8", "replace")


def ping_payload(stamp):
    return _PING.pack(stamp & 0xFFFFFFFFFFFFFFFF)


def parse_ping(payload):
    if len(payload) != 8:
        raise ProtocolError("PING payload of %d bytes" % len(payload))
    return _PING.unpack_from(payload)[0]


def goaway_payload(last_stream_id, code=0, message=""):
    return _GOAWAY.pack(last_stream_id, code) + message.encode("utf-8", "replace")[:200]


def parse_goaway(payload):
    if len(payload) < _GOAWAY.size:
        raise ProtocolError("GOAWAY payload of %d bytes" % len(payload))
    last, code = _GOAWAY.unpack_from(payload)
    return last, code, bytes(payload[_GOAWAY.size:]).decode("utf-8", "replace")
