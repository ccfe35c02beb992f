"""The server's own addresses, as the kernel reports them, kept current for the ACL.

A stream to the server's own public address on its listening port was a
tunnel into itself (a nested tunnel worked); a stream to another port of
that address reached the host's own services, which firewalls usually keep
from the internet.  The destination ACL refuses both
(:mod:`afb.policy.acl`, steps 0 and 3) given the set of the host's
addresses, which this module provides:

* every address of every interface, from ``getifaddrs(3)`` through
  ``psutil.net_if_addrs()`` (:mod:`afb.host_addresses`; psutil is packaged
  by Debian as python3-psutil and will also give the monitoring its RSS,
  descriptor and CPU figures);
* 127.0.0.0/8, ::1, 0.0.0.0 and ::, which reach the host whatever the
  interfaces say;
* the addresses the host's name resolves to (once, at start), which may
  point at a public address behind NAT.

:class:`OwnAddressWatch` looks again every ``interval`` seconds (``[acl]
own_address_refresh``, 5 by default) and hands a changed set to the server,
which builds a new :class:`~afb.policy.acl.DestinationAcl` from it (a new
object: its remembered verdicts go with the old one).  An address added to
the host is refused within that interval.

Not seen: a public address that only a NAT in front of the host knows (a
cloud "elastic" address); deny it in ``[acl] deny`` (``11.0.0.1:443``).
"""

import ipaddress
import logging
import socket

from afb.host_addresses import interface_addresses
from afb.transport.periodic import Periodic

log = logging.getLogger(__name__)

#: What reaches this host whatever its interfaces are.
ALWAYS_OWN = ("127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128")
#: Default seconds between two looks at the interfaces.
REFRESH_INTERVAL = 5.0


def hostname_addresses():
    """The addresses this host's name resolves to (empty if it does not)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except (OSError, UnicodeError):
        return set()
    return {info[4][0].split("%", 1)[0] for info in infos}


def own_addresses(extra=()):
    """The sorted tuple of this host's addresses and networks (see the module doc)."""
    found = set(ALWAYS_OWN) | set(extra)
    for text in interface_addresses():
        try:
            found.add(str(ipaddress.ip_address(text)))
        except ValueError:
            continue
    return tuple(sorted(found))


class OwnAddressWatch(Periodic):
    """Calls ``on_change(addresses)`` whenever the host's address set changes."""

    def __init__(self, on_change, interval=REFRESH_INTERVAL, extra=()):
        self.on_change = on_change
        self.interval = interval
        self.extra = tuple(extra)
        self.current = own_addresses(self.extra)

    def tick(self):
        self.refresh()

    def refresh(self):
        """Look once; -> True if the set changed (and was handed on)."""
        try:
            found = own_addresses(self.extra)
        except OSError as exc:
            log.warning("cannot list this host's addresses (keeping the last list): %s", exc)
            return False
        if found == self.current:
            return False
        added = sorted(set(found) - set(self.current))
        gone = sorted(set(self.current) - set(found))
        self.current = found
        log.info("this host's addresses changed (%s); streams to them are refused",
                 ", ".join(["+" + a for a in added] + ["-" + a for a in gone]))
        self.on_change(found)
        return True
