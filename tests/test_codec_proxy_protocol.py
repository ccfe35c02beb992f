"""afb.codec.proxy_protocol: the PROXY header parser (v1 and v2), fed bytes."""

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afb.codec.proxy_protocol import (
    V1_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderParser,
    proxy_v1_header,
)
from afb.errors import AfbError

ANY = None      # VALID's consumed: len(wire)
TLS = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"      # what follows: a ClientHello


def v2(command=1, family=1, transport=1, body=b"", version=2):
    return (V2_SIGNATURE + bytes(((version << 4) | command, (family << 4) | transport))
            + struct.pack("!H", len(body)) + body)


def v2_inet(src, dst, sport, dport, tlvs=b""):
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    body = a.packed + b.packed + struct.pack("!HH", sport, dport) + tlvs
    return v2(family=1 if a.version == 4 else 2, body=body)


def parse(data):
    return ProxyHeaderParser().feed(data)


def trickle(data):
    """Feed one byte at a time; the first non-None answer and the byte it came at."""
    parser = ProxyHeaderParser()
    for i in range(len(data)):
        got = parser.feed(data[i:i + 1])
        if got is not None:
            return got, i + 1
    return None, len(data)


VALID = [
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n",
     ProxyHeader(1, "PROXY", ("192.0.2.7", 51234), ("198.51.100.1", 443), ANY)),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n",
     ProxyHeader(1, "PROXY", ("2001:db8::7", 1), ("2001:db8::1", 65535), ANY)),
    (b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:10.0.0.1 0 443\r\n",
     ProxyHeader(1, "PROXY", ("192.0.2.7", 0), ("10.0.0.1", 443), ANY)),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, "PROXY", None, None, ANY)),
    (b"PROXY UNKNOWN ffff:f::f ffff:f::f 65535 65535\r\n",
     ProxyHeader(1, "PROXY", None, None, ANY)),
    (v2_inet("192.0.2.7", "198.51.100.1", 51234, 443),
     ProxyHeader(2, "PROXY", ("192.0.2.7", 51234), ("198.51.100.1", 443), ANY)),
    (v2_inet("2001:db8::7", "2001:db8::1", 40000, 443),
     ProxyHeader(2, "PROXY", ("2001:db8::7", 40000), ("2001:db8::1", 443), ANY)),
    # TLVs (ALPN, authority, a NOOP) are skipped unread
    (v2_inet("192.0.2.7", "198.51.100.1", 1, 2,
             tlvs=b"\x01\x00\x02h2" + b"\x02\x00\x0bexample.com" + b"\x04\x00\x00"),
     ProxyHeader(2, "PROXY", ("192.0.2.7", 1), ("198.51.100.1", 2), ANY)),
    # LOCAL (HAProxy's health checks): the real peer, whatever the family says
    (v2(command=0, family=0, transport=0), ProxyHeader(2, "LOCAL", None, None, ANY)),
    (v2(command=0, family=1, body=b"\x00" * 12), ProxyHeader(2, "LOCAL", None, None, ANY)),
    (v2(command=0, family=1, body=b""), ProxyHeader(2, "LOCAL", None, None, ANY)),
    # UNSPEC and AF_UNIX: the spec lets the receiver use the real addresses
    (v2(family=0, transport=0, body=b"\x00" * 5), ProxyHeader(2, "PROXY", None, None, ANY)),
    (v2(family=3, body=b"/x".ljust(216, b"\x00")), ProxyHeader(2, "PROXY", None, None, ANY)),
]


@pytest.mark.parametrize("wire, expected", VALID)
def test_valid_headers_whole_and_trickled(wire, expected):
    """(consumed: the whole header, every byte of it)"""
    expected = expected._replace(consumed=len(wire))
    assert parse(wire) == expected
    assert parse(wire + TLS) == expected                # the bytes after are not counted
    assert trickle(wire + TLS) == (expected, len(wire))  # ... nor waited for


@pytest.mark.parametrize("wire", [w for w, _ in VALID])
def test_every_proper_prefix_needs_more(wire):
    for end in range(len(wire)):
        assert parse(wire[:end]) is None


def test_round_trip_with_the_writer():
    for src, dst in [(("192.0.2.7", 5), ("127.0.0.1", 443)), (("::1", 7), ("2001:db8::1", 8))]:
        got = parse(proxy_v1_header(src, dst))
        assert (got.source, got.destination) == (src, dst)
    assert parse(proxy_v1_header(("::1", 1), ("127.0.0.1", 2))).source is None


BAD = [
    (TLS, "TLS ClientHello"),
    (b"GET / HTTP/1.1\r\n\r\n", "no PROXY protocol header"),
    (b"PROXX TCP4", "no PROXY protocol header"),
    (b"\r\n\r\n\x00\r\nQUIX\n", "no PROXY protocol header"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\n", "CRLF"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\rX\n", "CR not followed by LF"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 51234\r\n", "TCP4|TCP6"),
    (b"PROXY TCP4  192.0.2.7 198.51.100.1 1 443\r\n", "TCP4|TCP6"),
    (b"PROXY TCP5 192.0.2.7 198.51.100.1 1 443\r\n", "TCP4|TCP6"),
    (b"PROXY TCP4 2001:db8::7 198.51.100.1 1 443\r\n", "bad address"),
    (b"PROXY TCP6 192.0.2.7 2001:db8::1 1 443\r\n", "bad address"),
    (b"PROXY TCP4 192.0.2.007 198.51.100.1 1 443\r\n", "bad address"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 443\r\n", "bad port"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 443\r\n", "bad port"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 1 \xd9\xa3\r\n", "not ASCII"),
    (b"PROXY UNKNOWN" + b" " * (V1_MAX - 13), "longer than 107"),
    (v2(version=1), "version 1"),
    (v2(command=2), "unknown command"),
    (v2(family=4), "unknown family"),
    (v2(transport=3), "unknown family"),
    (v2(family=1, body=b"\x00" * 11), "too short"),
    (v2(family=2, body=b"\x00" * 35), "too short"),
    (v2(family=3, body=b"\x00" * 100), "too short"),
]


@pytest.mark.parametrize("wire, reason", BAD)
def test_bad_headers_raise_a_clear_error_even_trickled(wire, reason):
    with pytest.raises(ProxyHeaderError, match=reason.replace("|", r"\|")):
        parse(wire)
    with pytest.raises(ProxyHeaderError, match=reason.replace("|", r"\|")):
        trickle(wire)


def test_decided_at_the_first_byte_that_cannot_be_a_header():
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyHeaderError):
        parser.feed(b"\x16")
    assert ProxyHeaderParser().feed(b"PROX") is None
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderParser().feed(b"PROXZ")
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderParser().feed(b"\r\n\r\n\x01")


def test_a_v1_line_is_never_waited_for_past_107_bytes():
    assert parse(b"PROXY UNKNOWN" + b"x" * (V1_MAX - 14)) is None         # 106 bytes
    with pytest.raises(ProxyHeaderError):
        parse(b"PROXY UNKNOWN" + b"x" * (V1_MAX - 13))                    # 107, no LF
    longest = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n"
    assert len(longest) == V1_MAX and parse(longest).consumed == V1_MAX


def test_a_v2_header_is_waited_for_up_to_its_length():
    wire = v2(family=1, body=b"\x01" * 12 + b"\x00" * 65000)
    assert parse(wire[:-1]) is None
    assert parse(wire).consumed == len(wire)


def test_the_error_is_an_afb_error():
    assert issubclass(ProxyHeaderError, AfbError)


def test_fed_after_the_result_the_same_result():
    parser = ProxyHeaderParser()
    first = parser.feed(b"PROXY UNKNOWN\r\n")
    assert parser.feed(b"more") is first


_PIECES = [b"PROXY ", b"TCP4 ", b"TCP6 ", b"UNKNOWN", b"192.0.2.7 ", b"::1 ", b"80 ", b"443",
           b"\r\n", b"\r", b"\n", b" ", V2_SIGNATURE, b"\x21\x11", b"\x20\x00", b"\x00\x0c",
           b"\x00\x24", b"\x21\x21", b"\x00", b"\xff"]


def _check_parser_on(data, step):
    """Never anything but None/ProxyHeader/ProxyHeaderError; never past the bytes fed."""
    parser = ProxyHeaderParser()
    fed, got = 0, None
    try:
        for i in range(0, len(data), step):
            chunk = data[i:i + step]
            fed += len(chunk)
            got = parser.feed(chunk)
            if got is not None:
                break
    except ProxyHeaderError as exc:
        assert str(exc)
        return
    if got is None:
        return
    assert isinstance(got, ProxyHeader)
    assert 15 <= got.consumed <= fed
    # The header alone gives the same answer; what followed it is never looked at.
    assert parse(data[:got.consumed]) == got
    assert parse(data[:got.consumed] + b"\xff" * 40) == got
    if got.version == 1:
        assert got.consumed <= V1_MAX


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_fuzz_random_bytes(data, step):
    _check_parser_on(data, step)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_PIECES) | st.binary(max_size=8), max_size=30),
       st.integers(min_value=1, max_value=16))
def test_fuzz_header_like_bytes(pieces, step):
    _check_parser_on(b"".join(pieces), step)
