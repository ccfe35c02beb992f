"""The SOCKS5 UDP request header (RFC 1928, section 7), sans-IO.

Every datagram between a SOCKS5 client and its UDP relay carries::

    +-----+------+------+----------+----------+----------+
    | RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
    +-----+------+------+----------+----------+----------+
    |  2  |  1   |  1   | Variable |    2     | Variable |
    +-----+------+------+----------+----------+----------+

From the client DST is where the datagram goes; towards the client it is
where the datagram came from.  A datagram is whole or it is nothing, so
:func:`parse_udp_header` never waits for more bytes, unlike the stream
parsers: a short or bad header raises :class:`~afb.errors.SocksError` (or
its :class:`~afb.errors.AddressError`), and the relay drops that datagram.

Fragmentation (FRAG != 0) is optional in the RFC and no client we know of
uses it; afb parses the FRAG byte so that the relay can drop and count such
datagrams instead of sending a piece of one as if it were whole.
"""

from dataclasses import dataclass

from afb.codec.address import decode_address, encode_address
from afb.errors import SocksError

__all__ = ["UdpDatagram", "build_udp_header", "build_udp_datagram", "parse_udp_header",
           "MAX_HEADER_SIZE"]

#: The longest header: RSV, FRAG, ATYP, a 255-byte name with its length, port.
MAX_HEADER_SIZE = 2 + 1 + 1 + 1 + 255 + 2
#: The shortest one: a one-letter name.
MIN_HEADER_SIZE = 2 + 1 + 1 + 1 + 1 + 2


@dataclass(frozen=True)
class UdpDatagram:
    """One parsed datagram: FRAG, the address it names, and its data."""

    frag: int
    host: str
    port: int
    data: bytes


def build_udp_header(host, port, frag=0):
    """The header for a datagram to (or from) ``host:port``; AddressError if bad."""
    if not 0 <= frag <= 0xFF:
        raise SocksError("FRAG %r out of range 0..255" % (frag,))
    return bytes((0, 0, frag)) + encode_address(host, port)


def build_udp_datagram(host, port, data, frag=0):
    """Header and ``data`` as one ``bytes``, ready for ``sendto``."""
    return build_udp_header(host, port, frag) + bytes(data)


def parse_udp_header(datagram):
    """Parse one whole datagram -> :class:`UdpDatagram`.

    Raises SocksError for a datagram shorter than its header or with a
    non-zero RSV, AddressError (a SocksError) for a bad address type or name.
    Accepts bytes, bytearray or memoryview; ``data`` is a ``bytes`` copy.
    """
    size = len(datagram)
    if size < MIN_HEADER_SIZE:
        raise SocksError("SOCKS5 UDP datagram of %d bytes is shorter than its header" % size)
    if datagram[0] or datagram[1]:
        raise SocksError("SOCKS5 UDP datagram with RSV 0x%02x%02x, not 0"
                         % (datagram[0], datagram[1]))
    decoded = decode_address(datagram, 3)
    if decoded is None:
        raise SocksError("SOCKS5 UDP datagram with a truncated address (%d bytes)" % size)
    host, port, end = decoded
    return UdpDatagram(datagram[2], host, port, bytes(datagram[end:]))
