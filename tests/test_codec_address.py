"""afb.codec.address: SOCKS5-style ATYP ADDR PORT encoding."""

import ipaddress
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afb.codec.address import (
    ATYP_DOMAIN,
    ATYP_IPV4,
    ATYP_IPV6,
    decode_address,
    encode_address,
)
from afb.errors import REP_ADDRESS_TYPE_NOT_SUPPORTED, AddressError, AfbError

V6_LOOPBACK = b"\x00" * 15 + b"\x01"


@pytest.mark.parametrize("host, port, wire", [
    ("127.0.0.1", 80, b"\x01\x7f\x00\x00\x01\x00\x50"),
    ("0.0.0.0", 0, b"\x01\x00\x00\x00\x00\x00\x00"),
    ("255.255.255.255", 65535, b"\x01\xff\xff\xff\xff\xff\xff"),
    ("::1", 443, b"\x04" + V6_LOOPBACK + b"\x01\xbb"),
    ("[::1]", 443, b"\x04" + V6_LOOPBACK + b"\x01\xbb"),
    ("2001:db8::1", 1, b"\x04\x20\x01\x0d\xb8" + b"\x00" * 10 + b"\x00\x01\x00\x01"),
    ("example.com", 443, b"\x03\x0bexample.com\x01\xbb"),
    ("a", 1, b"\x03\x01a\x00\x01"),
    ("localhost.", 8080, b"\x03\x0alocalhost.\x1f\x90"),
    ("bücher.de", 80, b"\x03\x10xn--bcher-kva.de\x00\x50"),
    # Not a strict IPv4 literal, so it travels as a name.
    ("127.1", 80, b"\x03\x05127.1\x00\x50"),
])
def test_encode(host, port, wire):
    assert encode_address(host, port) == wire


def test_atyp_constants():
    assert (ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6) == (1, 3, 4)


@pytest.mark.parametrize("wire, host, port", [
    (b"\x01\x7f\x00\x00\x01\x00\x50", "127.0.0.1", 80),
    (b"\x04" + V6_LOOPBACK + b"\x01\xbb", "::1", 443),
    (b"\x04\x20\x01\x0d\xb8" + b"\x00" * 10 + b"\x00\x01\x00\x01", "2001:db8::1", 1),
    (b"\x04" + b"\x00" * 16 + b"\x00\x00", "::", 0),
    (b"\x03\x0bexample.com\x01\xbb", "example.com", 443),
    (b"\x03\x03::1\x00\x01", "::1", 1),  # a name that looks like an address stays a name
])
def test_decode(wire, host, port):
    assert decode_address(wire) == (host, port, len(wire))


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decode_buffer_types_and_offset(kind):
    wire = b"junk" + encode_address("example.org", 8443) + b"tail"
    assert decode_address(kind(wire), 4) == ("example.org", 8443, len(wire) - 4)


@pytest.mark.parametrize("wire", [
    encode_address("10.1.2.3", 9),
    encode_address("fe80::1", 9),
    encode_address("example.com", 9),
])
def test_decode_short_buffer_returns_none(wire):
    for cut in range(len(wire)):
        assert decode_address(wire[:cut]) is None
    assert decode_address(wire, len(wire)) is None
    assert decode_address(wire, len(wire) + 5) is None


@pytest.mark.parametrize("wire, words", [
    (b"\x00\x7f\x00\x00\x01\x00\x50", "type 0x00"),
    (b"\x02", "type 0x02"),  # unknown type fails before the rest arrives
    (b"\x05", "type 0x05"),
    (b"\xff", "type 0xff"),
    (b"\x03\x00\x00\x50", "empty"),
    (b"\x03\x02\xc3\xa9\x00\x50", "not ASCII"),
    (b"\x03\x03a\x00b\x00\x50", "control"),
    (b"\x03\x03a b\x00\x50", "space"),
])
def test_decode_errors(wire, words):
    with pytest.raises(AddressError, match=words) as info:
        decode_address(wire)
    assert info.value.reply == REP_ADDRESS_TYPE_NOT_SUPPORTED == 0x08


@pytest.mark.parametrize("host, port, words", [
    ("example.com", -1, "out of range"),
    ("example.com", 65536, "out of range"),
    ("example.com", True, "must be an int"),
    ("example.com", "80", "must be an int"),
    ("", 80, "empty"),
    ("[]", 80, "invalid IPv6"),
    ("[::1", 80, "invalid IPv6"),
    ("[1.2.3.4]", 80, "invalid IPv6"),
    ("[example.com]", 80, "invalid IPv6"),
    ("1:2:3", 80, "invalid IPv6"),
    ("fe80::1%eth0", 80, "zone"),
    ("a" * 256, 80, "longer than 255"),
    ("bad host", 80, "space"),
    ("nul\x00host", 80, "control"),
    ("x" * 70 + ".bücher.de", 80, "cannot encode"),  # IDNA label too long
    (b"example.com", 80, "must be a str"),
    (None, 80, "must be a str"),
])
def test_encode_errors(host, port, words):
    with pytest.raises(AddressError, match=words):
        encode_address(host, port)


def test_longest_domain_round_trips():
    name = ".".join(["a" * 63] * 4)[:255]
    assert len(name) == 255
    assert decode_address(encode_address(name, 1))[:2] == (name, 1)


# --- property tests ---------------------------------------------------------

ports = st.integers(0, 65535)
ipv4s = st.ip_addresses(v=4).map(str)
ipv6s = st.ip_addresses(v=6).map(str)
domains = st.text(string.ascii_letters + string.digits + "-._", min_size=1, max_size=255).filter(
    lambda name: not _is_ipv4(name))


def _is_ipv4(name):
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


@settings(max_examples=60)
@given(host=st.one_of(ipv4s, ipv6s, domains), port=ports, brackets=st.booleans())
def test_round_trip(host, port, brackets):
    given_host = "[%s]" % host if brackets and ":" in host else host
    wire = encode_address(given_host, port)
    assert decode_address(wire) == (host, port, len(wire))
    assert decode_address(b"\x00" + wire + b"more", 1) == (host, port, len(wire) + 1)


@given(st.binary(max_size=300), st.integers(0, 4))
def test_arbitrary_bytes_only_raise_afb_errors(data, offset):
    try:
        result = decode_address(data, offset)
    except AfbError:
        return
    if result is not None:
        host, port, end = result
        assert isinstance(host, str) and 0 <= port <= 65535 and offset < end <= len(data)
        assert decode_address(encode_address(host, port)) is not None


@given(st.text(max_size=300), st.integers(-5, 70000))
def test_encode_arbitrary_text_only_raises_address_error(host, port):
    try:
        wire = encode_address(host, port)
    except AddressError:
        return
    assert decode_address(wire)[1] == port
