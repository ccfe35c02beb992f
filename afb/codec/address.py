"""SOCKS5-style addresses: ``ATYP ADDR PORT`` (RFC 1928, section 5).

The same encoding is used in SOCKS5 requests and replies and in the tunnel's
OPEN frames.  Pure functions, no I/O:

* :func:`encode_address` turns ``(host, port)`` into bytes;
* :func:`decode_address` reads one address from a buffer and returns ``None``
  while the buffer is still too short, like shadowsocks' ``parse_header``.
"""

import ipaddress
import socket
import struct

from afb.errors import AddressError

ATYP_IPV4 = 1
ATYP_DOMAIN = 3
ATYP_IPV6 = 4

MAX_DOMAIN_LENGTH = 255

_PORT = struct.Struct("!H")


def encode_address(host, port):
    """Encode ``host`` and ``port`` as ``ATYP ADDR PORT``.

    IPv4 literals get ATYP 1, IPv6 literals (bare or in ``[brackets]``) ATYP 4,
    anything else is a domain name (ASCII, or IDNA for non-ASCII names).
    Raises :class:`AddressError` for a bad host or a port outside 0..65535.
    """
    port_bytes = _encode_port(port)
    if not isinstance(host, str):
        raise AddressError("host must be a str, not %s" % type(host).__name__)
    bracketed = host.startswith("[") and host.endswith("]")
    name = host[1:-1] if bracketed else host
    if bracketed or ":" in name:
        return bytes((ATYP_IPV6,)) + _parse_ipv6(name).packed + port_bytes
    ipv4 = _parse_ipv4(name)
    if ipv4 is not None:
        return bytes((ATYP_IPV4,)) + ipv4 + port_bytes
    encoded = _encode_domain(name)
    return bytes((ATYP_DOMAIN, len(encoded))) + encoded + port_bytes


def decode_address(buf, offset=0):
    """Decode one address from ``buf`` starting at ``offset``.

    Returns ``(host, port, end)`` where ``end`` is the offset just past the
    port, or ``None`` if ``buf`` does not hold the whole address yet.
    Accepts bytes, bytearray or memoryview.  Raises :class:`AddressError` for
    an unknown address type or an empty or undecodable domain name.
    """
    if len(buf) <= offset:
        return None
    atyp = buf[offset]
    start = offset + 1
    if atyp == ATYP_IPV4:
        end = start + 4
        if len(buf) < end + 2:
            return None
        host = socket.inet_ntoa(bytes(buf[start:end]))
    elif atyp == ATYP_IPV6:
        end = start + 16
        if len(buf) < end + 2:
            return None
        host = ipaddress.IPv6Address(bytes(buf[start:end])).compressed
    elif atyp == ATYP_DOMAIN:
        if len(buf) <= start:
            return None
        length = buf[start]
        if length == 0:
            raise AddressError("empty domain name in address")
        start += 1
        end = start + length
        if len(buf) < end + 2:
            return None
        host = _decode_domain(bytes(buf[start:end]))
    else:
        raise AddressError("unsupported address type 0x%02x" % atyp)
    (port,) = _PORT.unpack(bytes(buf[end:end + 2]))
    return host, port, end + 2


# --- helpers ----------------------------------------------------------------

def _encode_port(port):
    if isinstance(port, bool) or not isinstance(port, int):
        raise AddressError("port must be an int, not %s" % type(port).__name__)
    if not 0 <= port <= 0xFFFF:
        raise AddressError("port %d out of range 0..65535" % port)
    return _PORT.pack(port)


def _parse_ipv6(name):
    # A zone id ("fe80::1%eth0") cannot travel in 16 bytes: refuse it.
    if "%" in name:
        raise AddressError("IPv6 zone ids are not supported: %r" % name)
    try:
        return ipaddress.IPv6Address(name)
    except ValueError:
        raise AddressError("invalid IPv6 address %r" % name) from None


def _parse_ipv4(name):
    """The 4 bytes of a dotted-quad IPv4 literal, or None."""
    try:
        # inet_pton is strict (four decimal octets, no leading zeros) and
        # ten times faster than ipaddress, which settles what it refuses.
        return socket.inet_pton(socket.AF_INET, name)
    except (OSError, ValueError, UnicodeError):
        pass
    try:
        return ipaddress.IPv4Address(name).packed
    except ValueError:
        return None


def _encode_domain(name):
    if not name:
        raise AddressError("empty host name")
    try:
        encoded = name.encode("ascii")
    except UnicodeEncodeError:
        try:
            encoded = name.encode("idna")
        except UnicodeError as exc:
            raise AddressError("cannot encode host name %r: %s" % (name, exc)) from None
    _check_domain_bytes(encoded)
    return encoded


def _decode_domain(raw):
    _check_domain_bytes(raw)
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise AddressError("domain name is not ASCII: %r" % raw) from None


def _check_domain_bytes(raw):
    if not raw:
        raise AddressError("empty host name")
    if len(raw) > MAX_DOMAIN_LENGTH:
        raise AddressError("host name longer than %d bytes" % MAX_DOMAIN_LENGTH)
    # Spaces and control characters (NUL above all) are never part of a name.
    if any(b <= 0x20 or b == 0x7F for b in raw):
        raise AddressError("control character or space in host name %r" % raw)
