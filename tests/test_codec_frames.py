"""Tunnel frame codec: bytes in, values out."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afb import PROTOCOL_VERSION
from afb.codec import frames
from afb.errors import AddressError, AfbError, ProtocolError, VersionMismatch


def test_header_layout_is_ten_bytes_big_endian():
    assert frames.header(frames.DATA, 7, 300) == bytes([4, 0, 0, 0, 0, 7, 0, 0, 1, 44])


def test_several_frames_in_one_message_are_split_without_copies():
    message = (frames.frame(frames.OPEN, 1, frames.open_payload(1, "example.com", 443, b"GET"))
               + frames.frame(frames.DATA, 1, b"hello")
               + frames.frame(frames.FIN, 1))
    parsed = list(frames.iter_frames(message))
    assert [(t, s) for t, _f, s, _p in parsed] == [(frames.OPEN, 1), (frames.DATA, 1),
                                                    (frames.FIN, 1)]
    assert isinstance(parsed[1][3], memoryview) and bytes(parsed[1][3]) == b"hello"
    assert frames.parse_open(parsed[0][3])[:3] == (1, "example.com", 443)
    assert bytes(frames.parse_open(parsed[0][3])[3]) == b"GET"


@pytest.mark.parametrize("host", ["10.1.2.3", "::1", "2001:db8::7", "a.example"])
def test_open_round_trip_all_address_types(host):
    command, got_host, port, early = frames.parse_open(frames.open_payload(1, host, 8080))
    assert (command, got_host, port, bytes(early)) == (1, host, 8080, b"")


def test_truncated_frame_is_a_protocol_error():
    message = frames.frame(frames.DATA, 1, b"abcdef")[:-1]
    with pytest.raises(ProtocolError, match="claims 6 bytes"):
        list(frames.iter_frames(message))
    with pytest.raises(ProtocolError, match="truncated frame header"):
        list(frames.iter_frames(b"\x04\x00\x00"))


def test_bad_address_type_in_open_carries_reply_0x08():
    with pytest.raises(AddressError) as info:
        frames.parse_open(b"\x01\x09\x00\x00")
    assert info.value.reply == 0x08


def test_hello_round_trip_and_version_mismatch():
    payload = frames.hello_payload(PROTOCOL_VERSION, 65536, 1 << 20, b"s" * 16)
    assert frames.parse_hello(payload, PROTOCOL_VERSION) == (
        PROTOCOL_VERSION, 65536, 1 << 20, b"s" * 16)
    with pytest.raises(VersionMismatch) as info:
        frames.parse_hello(frames.hello_payload(PROTOCOL_VERSION + 1, 65536, 1 << 20),
                           PROTOCOL_VERSION)
    assert info.value.peer_version == PROTOCOL_VERSION + 1
    assert info.value.close_code == 4001
    with pytest.raises(ProtocolError, match="magic"):
        frames.parse_hello(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 20, PROTOCOL_VERSION)


@pytest.mark.parametrize("message, reason", [
    (b"", "empty first message, expected HELLO"),
    (frames.frame(frames.PING, 0, b"x" * 8), "first frame is PING, not HELLO"),
    (frames.frame(0x7F, 0), "first frame is 0x7f, not HELLO"),
    (b"\x00\x00\x00", "truncated frame header"),
])
def test_a_first_message_that_is_not_a_hello_is_a_protocol_error(message, reason):
    with pytest.raises(ProtocolError, match=reason):
        frames.parse_hello_message(message, PROTOCOL_VERSION)
    hello = frames.frame(frames.HELLO, 0, frames.hello_payload(PROTOCOL_VERSION, 65536, 1 << 20))
    assert frames.parse_hello_message(hello + message, PROTOCOL_VERSION)[1] == 65536


@given(st.binary(max_size=200))
def test_fuzz_first_message_parses_or_raises_afb_errors_only(data):
    try:
        frames.parse_hello_message(data, PROTOCOL_VERSION)
    except AfbError:
        pass


def test_window_ping_goaway_reasons():
    assert frames.parse_window(frames.window_payload(12345)) == 12345
    with pytest.raises(ProtocolError):
        frames.parse_window(frames.window_payload(0))
    with pytest.raises(ProtocolError):
        frames.parse_window(b"\x00")
    assert frames.parse_ping(frames.ping_payload(99)) == 99
    assert frames.parse_goaway(frames.goaway_payload(7, 0, "bye")) == (7, 0, "bye")
    assert frames.parse_reason(frames.open_fail_payload(0x05, "refused")) == (5, "refused")
    assert frames.parse_reason(b"") == (1, "")


def test_unknown_types_are_yielded_for_the_session_to_answer():
    assert [t for t, *_ in frames.iter_frames(frames.frame(0x7F, 3, b"x"))] == [0x7F]


@given(st.binary(max_size=200))
def test_fuzz_any_message_parses_or_raises_afb_errors_only(data):
    try:
        for ftype, _flags, _sid, payload in frames.iter_frames(data):
            if ftype == frames.OPEN:
                frames.parse_open(payload)
            elif ftype == frames.WINDOW:
                frames.parse_window(payload)
            elif ftype == frames.HELLO:
                frames.parse_hello(payload, PROTOCOL_VERSION)
            elif ftype == frames.GOAWAY:
                frames.parse_goaway(payload)
    except AfbError:
        pass


@given(st.lists(st.tuples(st.sampled_from(sorted(frames.KNOWN_TYPES)),
                          st.integers(0, 2**32 - 1), st.binary(max_size=64)), max_size=20))
def test_fuzz_round_trip_of_frame_sequences(items):
    message = b"".join(frames.frame(t, s, p) for t, s, p in items)
    assert [(t, s, bytes(p)) for t, _f, s, p in frames.iter_frames(message)] == items
