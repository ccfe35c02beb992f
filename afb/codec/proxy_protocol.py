"""PROXY protocol (HAProxy's doc/proxy-protocol.txt), sans-IO: v1 written, v1 and v2 read.

Writing -- :func:`proxy_v1_header`: with ``[decoy] upstream_proxy_protocol
= yes`` the web server behind afb (nginx: ``listen ... ssl proxy_protocol;``
plus ``set_real_ip_from 127.0.0.1; real_ip_header proxy_protocol;``) logs
the real client addresses instead of 127.0.0.1.  Version 1 is one ASCII
line before the first byte of the connection, which every server that takes
PROXY protocol reads.

Reading -- :class:`ProxyHeaderParser`: behind HAProxy in TLS passthrough
(``[server] proxy_protocol = on``) every connection comes from HAProxy's
address, so the per-source pending cap, the failed-login bans and the logs
would hit every user at once.  HAProxy's ``send-proxy-v2`` puts the
client's address in a header before the TLS ClientHello; the parser takes
bytes as they come (one at a time works) and gives ``None`` (needs more),
a :class:`ProxyHeader` whose ``consumed`` says where the header ended (the
bytes after it belong to TLS: the parser never counts them), or raises
:class:`ProxyHeaderError` with a reason an operator can act on.  Like the
spec's receiver it decides as soon as a byte cannot start a header, and
never waits past 107 bytes for a v1 line (the spec's limit) or past
16 + length for v2.

``source`` is None where the spec says to use the real connection's
addresses: v1 ``UNKNOWN``, v2 ``LOCAL`` (HAProxy's own health checks) and
v2 families UNSPEC and AF_UNIX.  v2 TLVs are skipped unread.
"""

import ipaddress
import struct
from collections import namedtuple

from afb.errors import AfbError

__all__ = ["proxy_v1_header", "ProxyHeaderParser", "ProxyHeader", "ProxyHeaderError",
           "V2_SIGNATURE", "V1_MAX"]

#: The 12 bytes every v2 header starts with (a CRLF CRLF NUL CRLF "QUIT" LF no
#: other protocol sends first).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: The longest v1 line, CRLF included (spec, section 2.1).
V1_MAX = 107
_V2_FIXED = struct.Struct("!12sBBH")        # signature, ver_cmd, fam, len
_V2_CMD_LOCAL, _V2_CMD_PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_V2_ADDRESS_LEN = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
_V2_INET = struct.Struct("!4s4sHH")
_V2_INET6 = struct.Struct("!16s16sHH")


class ProxyHeaderError(AfbError):
    """A connection that must start with a PROXY header does not (it is closed, no answer)."""


#: version 1 or 2; command "PROXY" or "LOCAL"; source/destination (host, port) or
#: None (use the real connection's); consumed: the header's length in bytes.
ProxyHeader = namedtuple("ProxyHeader", "version command source destination consumed")


class ProxyHeaderParser:
    """Feed bytes; None until a whole header came, then a :class:`ProxyHeader`.

    Bytes fed after the header are kept but never parsed (``consumed`` says
    where the header ended).  Raises :class:`ProxyHeaderError` as soon as the
    bytes cannot be a valid header.
    """

    def __init__(self):
        self.buffer = bytearray()
        self.result = None

    def feed(self, data):
        if self.result is not None:
            return self.result
        self.buffer += data
        buf = self.buffer
        if buf[:1] == V1_PREFIX[:1]:
            self.result = _parse_v1(buf)
        elif buf[:1] == V2_SIGNATURE[:1]:
            self.result = _parse_v2(buf)
        elif buf:
            raise ProxyHeaderError("no PROXY protocol header: the connection starts with %s"
                                   % _describe(buf))
        return self.result


def _describe(buf):
    if buf[:1] == b"\x16":
        return "a TLS ClientHello (is the sender's send-proxy-v2 missing?)"
    return repr(bytes(buf[:16]))


def _parse_v1(buf):
    head = bytes(buf[:V1_MAX])
    if not V1_PREFIX.startswith(head[:len(V1_PREFIX)]):
        raise ProxyHeaderError("no PROXY protocol header: the connection starts with %s"
                               % _describe(buf))
    end = head.find(b"\n")
    if end < 0:
        cr = head.find(b"\r")
        if 0 <= cr < len(head) - 1:
            raise ProxyHeaderError("PROXY v1 line has a CR not followed by LF")
        if len(head) >= V1_MAX:
            raise ProxyHeaderError("PROXY v1 line longer than %d bytes" % V1_MAX)
        return None
    if b"\r" in head[:end - 1]:
        raise ProxyHeaderError("PROXY v1 line has a CR not followed by LF")
    if head[end - 1:end] != b"\r":
        raise ProxyHeaderError("PROXY v1 line does not end with CRLF")
    line = head[len(V1_PREFIX):end - 1]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    words = text.split(" ")
    if words[0] == "UNKNOWN":
        return ProxyHeader(1, "PROXY", None, None, end + 1)
    if words[0] not in ("TCP4", "TCP6") or len(words) != 5:
        raise ProxyHeaderError("PROXY v1 line is not 'PROXY TCP4|TCP6 SRC DST SPORT DPORT' "
                               "nor 'PROXY UNKNOWN': %.60r" % text)
    kind = ipaddress.IPv4Address if words[0] == "TCP4" else ipaddress.IPv6Address
    try:
        src, dst = kind(words[1]), kind(words[2])
    except ValueError:
        raise ProxyHeaderError("PROXY v1 %s line has a bad address: %.60r"
                               % (words[0], text)) from None
    sport, dport = _v1_port(words[3]), _v1_port(words[4])
    return ProxyHeader(1, "PROXY", (_host(src), sport), (_host(dst), dport), end + 1)


def _v1_port(word):
    if not (word.isdigit() and word.isascii()) or len(word) > 5 or int(word) > 65535:
        raise ProxyHeaderError("PROXY v1 line has a bad port %.8r" % word)
    return int(word)


def _host(addr):
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def _parse_v2(buf):
    have = bytes(buf[:len(V2_SIGNATURE)])
    if not V2_SIGNATURE.startswith(have):
        raise ProxyHeaderError("no PROXY protocol header: the connection starts with %s"
                               % _describe(buf))
    if len(buf) < _V2_FIXED.size:
        return None
    _, ver_cmd, fam, length = _V2_FIXED.unpack_from(buf)
    version, command = ver_cmd >> 4, ver_cmd & 0x0F
    family, transport = fam >> 4, fam & 0x0F
    if version != 2:
        raise ProxyHeaderError("PROXY v2 header with version %d" % version)
    if command not in (_V2_CMD_LOCAL, _V2_CMD_PROXY):
        raise ProxyHeaderError("PROXY v2 header with unknown command %d" % command)
    if family not in _V2_ADDRESS_LEN or transport > 2:
        raise ProxyHeaderError("PROXY v2 header with unknown family/protocol 0x%02x" % fam)
    total = _V2_FIXED.size + length
    if command == _V2_CMD_PROXY and length < _V2_ADDRESS_LEN[family]:
        raise ProxyHeaderError("PROXY v2 header too short (%d bytes) for its addresses (%d)"
                               % (length, _V2_ADDRESS_LEN[family]))
    if len(buf) < total:
        return None
    if command == _V2_CMD_LOCAL:
        return ProxyHeader(2, "LOCAL", None, None, total)
    body = _V2_FIXED.size
    if family == _AF_INET:
        src, dst, sport, dport = _V2_INET.unpack_from(buf, body)
        kind = ipaddress.IPv4Address
    elif family == _AF_INET6:
        src, dst, sport, dport = _V2_INET6.unpack_from(buf, body)
        kind = ipaddress.IPv6Address
    else:                   # UNSPEC, AF_UNIX: the spec says use the real addresses
        return ProxyHeader(2, "PROXY", None, None, total)
    return ProxyHeader(2, "PROXY", (_host(kind(src)), sport), (_host(kind(dst)), dport), total)


# --- writing -----------------------------------------------------------------

def _addr(address):
    host = str(address[0]).split("%", 1)[0]
    addr = ipaddress.ip_address(host)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr, int(address[1])


def proxy_v1_header(source, destination):
    """``PROXY TCP4|TCP6 src dst sport dport\\r\\n`` for two (host, port) pairs.

    Mixed families or anything that is not an IP address give ``PROXY
    UNKNOWN\\r\\n``, which the receiver accepts and then uses the real peer.
    """
    try:
        src, sport = _addr(source)
        dst, dport = _addr(destination)
    except (ValueError, TypeError, IndexError):
        return b"PROXY UNKNOWN\r\n"
    if src.version != dst.version:
        return b"PROXY UNKNOWN\r\n"
    family = "TCP4" if src.version == 4 else "TCP6"
    return ("PROXY %s %s %s %d %d\r\n" % (family, src, dst, sport, dport)).encode("ascii")
