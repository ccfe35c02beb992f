"""afb.codec.socks5_udp (RFC 1928's UDP header) and the DATAGRAM payload of afb.codec.frames."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afb.codec import frames
from afb.codec.socks5_udp import (
    MAX_HEADER_SIZE,
    UdpDatagram,
    build_udp_datagram,
    build_udp_header,
    parse_udp_header,
)
from afb.errors import AddressError, AfbError, ProtocolError, SocksError

# --- the RFC's bytes -------------------------------------------------------------------

V4 = b"\x00\x00\x00\x01\x7f\x00\x00\x01\x00\x35" + b"query"
V6 = b"\x00\x00\x00\x04" + b"\x00" * 15 + b"\x01" + b"\x01\xbb" + b"q"
NAME = b"\x00\x00\x00\x03\x0bexample.com\x00\x35" + b"dns"


def test_parse_ipv4():
    assert parse_udp_header(V4) == UdpDatagram(0, "127.0.0.1", 53, b"query")


def test_parse_ipv6():
    assert parse_udp_header(V6) == UdpDatagram(0, "::1", 443, b"q")


def test_parse_name():
    assert parse_udp_header(NAME) == UdpDatagram(0, "example.com", 53, b"dns")


def test_parse_fragment_is_reported_not_refused():
    datagram = b"\x00\x00\x05" + V4[3:]
    assert parse_udp_header(datagram).frag == 5


def test_empty_data_is_a_datagram():
    assert parse_udp_header(V4[:10]).data == b""


def test_build_is_the_rfc_layout():
    assert build_udp_datagram("127.0.0.1", 53, b"query") == V4
    assert build_udp_datagram("::1", 443, b"q") == V6
    assert build_udp_datagram("example.com", 53, b"dns") == NAME
    assert build_udp_header("127.0.0.1", 53, frag=2)[:3] == b"\x00\x00\x02"


@pytest.mark.parametrize("datagram", [V4, V6, NAME])
def test_every_truncation_is_refused_not_waited_for(datagram):
    """A datagram is whole: a short one is an error at once (the 'trickle' of a datagram)."""
    header = len(datagram) - len(parse_udp_header(datagram).data)
    for cut in range(header):
        with pytest.raises(SocksError):
            parse_udp_header(datagram[:cut])


@pytest.mark.parametrize("datagram, error", [
    (b"\x01\x00\x00" + V4[3:], SocksError),            # RSV not 0
    (b"\x00\x01\x00" + V4[3:], SocksError),
    (b"\x00\x00\x00\x09" + V4[4:], AddressError),      # unknown ATYP
    (b"\x00\x00\x00\x03\x00\x00\x35rest", AddressError),   # empty name
    (b"\x00\x00\x00\x03\x03a\x00b\x00\x35", AddressError),   # NUL in the name
])
def test_bad_headers(datagram, error):
    with pytest.raises(error):
        parse_udp_header(datagram)


def test_bad_values_to_build():
    with pytest.raises(AddressError):
        build_udp_header("127.0.0.1", 70000)
    with pytest.raises(SocksError):
        build_udp_header("127.0.0.1", 53, frag=256)


def test_memoryview_input():
    assert parse_udp_header(memoryview(bytearray(V4))).data == b"query"


# --- DATAGRAM frames -----------------------------------------------------------------

def test_datagram_payload_layout():
    payload = frames.datagram_payload("127.0.0.1", 53, b"query")
    assert payload == b"\x01\x7f\x00\x00\x01\x00\x35query"
    host, port, data = frames.parse_datagram(payload)
    assert (host, port, bytes(data)) == ("127.0.0.1", 53, b"query")


def test_datagram_frame_in_a_message():
    message = (frames.frame(frames.DATAGRAM, 3, frames.datagram_payload("::1", 9, b"a"))
               + frames.frame(frames.DATAGRAM, 3, frames.datagram_payload("x.test", 9, b"")))
    got = [(t, s, frames.parse_datagram(p)) for t, _f, s, p in frames.iter_frames(message)]
    assert [(t, s, h, port, bytes(d)) for t, s, (h, port, d) in got] == [
        (frames.DATAGRAM, 3, "::1", 9, b"a"), (frames.DATAGRAM, 3, "x.test", 9, b"")]


def test_datagram_truncated_address():
    payload = frames.datagram_payload("127.0.0.1", 53, b"")
    for cut in range(len(payload)):
        with pytest.raises(ProtocolError):
            frames.parse_datagram(payload[:cut])


def test_datagram_bad_address_type():
    with pytest.raises(AddressError):
        frames.parse_datagram(b"\x07\x00\x00")


# --- fuzz ----------------------------------------------------------------------------

hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}\.){0,3}[a-z]{1,10}", fullmatch=True))
ports = st.integers(0, 65535)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_parse_udp_header_never_crashes(data):
    try:
        packet = parse_udp_header(data)
    except AfbError:
        return
    assert len(packet.data) <= len(data) - 8
    assert len(data) - len(packet.data) <= MAX_HEADER_SIZE


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_parse_datagram_never_crashes(data):
    try:
        host, port, rest = frames.parse_datagram(data)
    except AfbError:
        return
    assert 0 <= port <= 65535 and host and len(rest) <= len(data)


@settings(max_examples=300, deadline=None)
@given(hosts, ports, st.binary(max_size=200), st.integers(0, 255))
def test_fuzz_roundtrip(host, port, data, frag):
    packet = parse_udp_header(build_udp_datagram(host, port, data, frag))
    assert (packet.frag, packet.port, packet.data) == (frag, port, data)
    payload = frames.datagram_payload(host, port, data)
    parsed_host, parsed_port, rest = frames.parse_datagram(payload)
    assert (parsed_host, parsed_port, bytes(rest)) == (packet.host, port, data)
