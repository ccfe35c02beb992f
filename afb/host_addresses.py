"""This host's addresses, as the kernel reports them for all its interfaces; no gevent.

``getifaddrs(3)`` through ``psutil.net_if_addrs()`` (about 35 us here).  The
server refuses streams to them (:mod:`afb.apps.own_addresses` keeps the set
current for the destination ACL), and ``afb config check`` looks for
``[acl] allow`` entries that name one (:mod:`afb.file_checks`), which
needs no event loop.
"""

import socket

import psutil


def interface_addresses():
    """Every IPv4 and IPv6 address of this host's interfaces, as strings (no scope)."""
    found = set()
    for addresses in psutil.net_if_addrs().values():
        for entry in addresses:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                found.add(entry.address.split("%", 1)[0])
    return found
