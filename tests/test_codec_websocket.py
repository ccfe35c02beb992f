"""Sans-IO tests of the RFC 6455 frame codec (afb.codec.websocket)."""

import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afb.codec import websocket as wsc
from afb.errors import ProtocolError


def reference_mask(data, key):
    """Obviously-correct per-byte masking, for comparison only."""
    return bytes(b ^ key[i & 3] for i, b in enumerate(data))


# --- headers ----------------------------------------------------------------

@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 1 << 20, (1 << 63) - 1])
@pytest.mark.parametrize("key", [None, b"\x01\x02\x03\x04"])
def test_header_round_trip(length, key):
    header = wsc.encode_header(wsc.OP_BINARY, length, mask_key=key)
    parsed = wsc.parse_header(header)
    assert parsed == (True, wsc.OP_BINARY, key is not None, key, length, len(header))


def test_header_sizes():
    assert len(wsc.encode_header(wsc.OP_BINARY, 125)) == 2
    assert len(wsc.encode_header(wsc.OP_BINARY, 126)) == 4
    assert len(wsc.encode_header(wsc.OP_BINARY, 65535)) == 4
    assert len(wsc.encode_header(wsc.OP_BINARY, 65536)) == 10
    assert len(wsc.encode_header(wsc.OP_BINARY, 65536, mask_key=b"abcd")) == 14


def test_header_known_bytes():
    assert wsc.encode_header(wsc.OP_BINARY, 5) == b"\x82\x05"
    assert wsc.encode_header(wsc.OP_PING, 0) == b"\x89\x00"
    assert wsc.encode_header(wsc.OP_CONTINUATION, 300, fin=False) == b"\x00\x7e\x01\x2c"
    assert wsc.encode_header(wsc.OP_CLOSE, 2, mask_key=b"wxyz") == b"\x88\x82wxyz"


def test_parse_at_offset_and_non_final():
    buf = b"junk" + wsc.encode_header(wsc.OP_CONTINUATION, 70000, fin=False, mask_key=b"kkkk")
    assert wsc.parse_header(buf, 4) == (False, wsc.OP_CONTINUATION, True, b"kkkk", 70000, 14)


@pytest.mark.parametrize("length,key", [(5, None), (300, b"abcd"), (1 << 40, b"abcd"), (0, None)])
def test_trickle_one_byte_at_a_time(length, key):
    header = wsc.encode_header(wsc.OP_BINARY, length, mask_key=key)
    buf = bytearray()
    for i, byte in enumerate(header):
        assert wsc.parse_header(buf) is None, "complete after only %d bytes" % i
        buf.append(byte)
    assert wsc.parse_header(buf) == (True, wsc.OP_BINARY, key is not None, key, length,
                                     len(header))


def test_parse_memoryview():
    header = wsc.encode_header(wsc.OP_BINARY, 1000, mask_key=b"abcd")
    assert wsc.parse_header(memoryview(header + b"x"))[4] == 1000


@pytest.mark.parametrize("raw,why", [
    (b"\xc2\x00", "reserved bits"),           # RSV1
    (b"\xa2\x00", "reserved bits"),           # RSV2
    (b"\x92\x00", "reserved bits"),           # RSV3
    (b"\x83\x00", "opcode"),                  # 0x3 reserved
    (b"\x8b\x00", "opcode"),                  # 0xB reserved
    (b"\x09\x00", "fragmented"),              # ping without FIN
    (b"\x89\x7e\x00\x7e", "125"),             # ping with 16-bit length
    (b"\x88\x7f" + struct.pack("!Q", 1), "125"),
    (b"\x82\x7f" + struct.pack("!Q", 1 << 63), "most significant"),
])
def test_parse_rejects(raw, why):
    with pytest.raises(ProtocolError, match=why):
        wsc.parse_header(raw)


def test_encode_rejects():
    with pytest.raises(ValueError):
        wsc.encode_header(3, 0)
    with pytest.raises(ValueError):
        wsc.encode_header(wsc.OP_PING, 126)
    with pytest.raises(ValueError):
        wsc.encode_header(wsc.OP_BINARY, 1, mask_key=b"abc")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=20), st.integers(min_value=0, max_value=4))
def test_fuzz_parse_header_only_raises_protocol_error(data, offset):
    try:
        result = wsc.parse_header(data, min(offset, len(data)))
    except ProtocolError:
        return
    if result is not None:
        fin, opcode, masked, key, length, header_len = result
        assert header_len <= 14 and 0 <= length < 1 << 63
        assert (key is not None) == masked


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([0, 1, 2, 8, 9, 10]), st.integers(0, 125), st.booleans(),
       st.one_of(st.none(), st.binary(min_size=4, max_size=4)))
def test_fuzz_encode_parse_round_trip(opcode, length, fin, key):
    if opcode >= 8:
        fin = True
    header = wsc.encode_header(opcode, length, fin=fin, mask_key=key)
    assert wsc.parse_header(header) == (fin, opcode, key is not None, key, length, len(header))


# --- masking ----------------------------------------------------------------

def test_wsaccel_is_used():
    pytest.importorskip("wsaccel")
    assert wsc.HAVE_WSACCEL


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_mask_matches_reference(data, key):
    expected = reference_mask(data, key)
    assert wsc.mask(data, key) == expected
    assert wsc.mask_python(data, key) == expected
    assert wsc.mask(wsc.mask(data, key), key) == data


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=50), max_size=6), st.binary(min_size=4, max_size=4))
def test_stateful_masker_continues_across_chunks(chunks, key):
    expected = reference_mask(b"".join(chunks), key)
    masker = wsc.Masker(key)
    assert b"".join(masker.process(c) for c in chunks) == expected
    py = wsc._PyMasker(key)
    assert b"".join(py.process(c) for c in chunks) == expected


def test_zero_key_is_identity():
    data = os.urandom(1000)
    assert wsc.mask(data, b"\0\0\0\0") == data
    assert wsc.mask(memoryview(data), b"\0\0\0\0") == data


def test_mask_accepts_bytearray_and_memoryview():
    data = bytes(range(256)) * 3
    key = b"\x10\x20\x30\x40"
    expected = reference_mask(data, key)
    assert wsc.mask(bytearray(data), key) == expected
    assert wsc.mask(memoryview(data)[1:], key) == reference_mask(data[1:], key)
    assert wsc.mask_python(memoryview(bytearray(data)), key) == expected
    assert wsc.mask(b"", key) == b""


def test_mask_10_mib_matches_reference_sample():
    data = os.urandom(10 << 20)
    key = os.urandom(4)
    out = wsc.mask(data, key)
    assert len(out) == len(data)
    assert wsc.mask_python(data, key) == out
    rng = random.Random(5)
    for _ in range(50):
        start = rng.randrange(0, len(data) - 4096)
        start -= start % 4  # keep the key phase for the reference
        assert out[start:start + 4096] == reference_mask(data[start:start + 4096], key)
    assert out[-7:] == reference_mask(data[-8:], key)[1:]  # tail, len % 4 == 0 here


# --- close payloads ---------------------------------------------------------

def test_close_round_trip():
    payload = wsc.encode_close(4000, "bye \u2713")
    assert payload[:2] == b"\x0f\xa0"
    assert wsc.decode_close(payload) == (4000, "bye \u2713")
    assert wsc.encode_close(None) == b""
    assert wsc.decode_close(b"") == (wsc.CLOSE_NO_STATUS, "")


def test_close_reason_truncated_at_char_boundary():
    reason = "\u20ac" * 60  # 3 bytes each: 180 bytes
    payload = wsc.encode_close(1000, reason)
    assert len(payload) <= 125
    code, got = wsc.decode_close(payload)
    assert code == 1000 and got == "\u20ac" * 40 + "\u2026"  # 120 // 3, and the ellipsis
    ascii_reason = "x" * 200
    assert len(wsc.encode_close(1000, ascii_reason)) == 125
    mixed = "a" + "\u20ac" * 50  # 1 + 150 bytes: cut inside a character
    assert wsc.decode_close(wsc.encode_close(1001, mixed))[1] == "a" + "\u20ac" * 39 + "\u2026"


def test_a_long_close_reason_ends_after_a_whole_word():
    reason = ("E2E handshake failed: server key does not match the pinned key (or the channel "
              "binding differs, or the handshake was tampered with)")       # 131 bytes
    got = wsc.decode_close(wsc.encode_close(4002, reason))[1]
    assert got == reason[:reason.index(" tampered")] + "\u2026"
    assert len(got.encode()) <= 123
    assert wsc.decode_close(wsc.encode_close(1000, "short one"))[1] == "short one"


@pytest.mark.parametrize("code,reason,text", [
    (1000, "client stopping", "1000 client stopping"), (1001, "", "1001"),
    (None, "", "no reason given"), (wsc.CLOSE_NO_STATUS, "", "no reason given"),
    (4002, "E2E failed", "4002 E2E failed")])
def test_describe_close(code, reason, text):
    assert wsc.describe_close(code, reason) == text


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 2000, 2999, 5000, 65535])
def test_invalid_close_codes(code):
    with pytest.raises(ProtocolError):
        wsc.encode_close(code)
    with pytest.raises(ProtocolError):
        wsc.decode_close(struct.pack("!H", code))


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1014,
                                  3000, 4001, 4999])
def test_valid_close_codes(code):
    assert wsc.decode_close(wsc.encode_close(code, "r")) == (code, "r")


def test_bad_close_payloads():
    with pytest.raises(ProtocolError):
        wsc.decode_close(b"\x03")
    with pytest.raises(ProtocolError) as info:
        wsc.decode_close(b"\x03\xe8\xff\xfe")
    assert info.value.close_code == wsc.CLOSE_INVALID_DATA


@given(st.binary(min_size=1, max_size=300), st.binary(min_size=4, max_size=4))
def test_fast_masker_in_place_and_copying_agree_with_the_reference(data, key):
    reference = wsc.mask_python(data, key)
    assert wsc.mask(data, key) == reference
    buffer = bytearray(data)
    wsc.mask_inplace(memoryview(buffer), key)
    assert bytes(buffer) == reference


def test_fast_masker_is_built():
    # setup.py builds afb._xormask whenever a compiler is present (it is in CI).
    assert wsc.HAVE_FAST_MASK
