"""PROXY protocol v1 (HAProxy's text header), sans-IO: the line afb sends its decoy upstream.

With ``[decoy] upstream_proxy_protocol = yes`` the web server behind afb
(nginx: ``listen ... ssl proxy_protocol;`` plus ``set_real_ip_from
127.0.0.1; real_ip_header proxy_protocol;``) logs the real client
addresses instead of 127.0.0.1.  Version 1 is one ASCII line before the
first byte of the connection, which every server that takes PROXY protocol
reads.
"""

import ipaddress

__all__ = ["proxy_v1_header"]


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
