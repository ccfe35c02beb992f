"""Who may take a descriptor before proving to be a tunnel: per-source caps and a high-water mark.

Measured before this existed: 600 idle unauthenticated TCP connections
(accepted, then silent) held 600 of the server's descriptors, and once the
limit was reached the next stream of a legitimate tunnel got EMFILE.  A
connection that is not yet a tunnel (in TLS, sending its request head, being
answered by the decoy, or spliced to ``[decoy] upstream``) is *pending*, and
two checks run on every accepted one before a greenlet is spent on it:

* at most ``per_source`` pending connections per client address (IPv6: per
  /64, the subscriber's prefix, as the auth throttle counts);
  ``trusted_proxies`` carry many clients and get ``per_proxy``;
* the high-water mark: Linux hands an accepted socket the lowest free
  descriptor number, so a new descriptor numbered at or above
  ``high_water`` x the soft ``RLIMIT_NOFILE`` means at least that many are
  in use.  Then the oldest pending connections are closed (as nginx drains
  its reusable connections when it runs short), so the newcomer -- quite
  possibly a client that opens its tunnel within milliseconds -- gets in,
  and the descriptors above the mark stay for established tunnels' streams.
  The oldest always goes, with up to 31 more older than a second (see
  ``FrontDoor._evict_oldest``); with no pending connection at all to close,
  the newcomer is closed instead.
* at most ``max_pending`` pending connections in all, whatever the
  descriptors (0: no such limit), handled as the high-water mark is: a
  connection in its TLS handshake costs ~57 KiB (1,000 slow ClientHellos:
  +56 MiB RSS; ~35 KiB after TLS), so with ``LimitNOFILE=65536`` the mark
  alone (52,428 connections, from 1,639 addresses or one IPv6 /48) would
  let them take ~2.9 GiB; the default 4,096 keeps them under ~230 MiB.

A connection that becomes a tunnel is released from the count at once.
Pure code (no gevent), so the numbers are easy to test.
"""

import resource

from afb.policy.access import AuthThrottle, normalize_ip

__all__ = ["Admission"]

#: The address (IPv4) or its /64 (IPv6), as the failed-login throttle counts.
_source_key = AuthThrottle.key


class Admission:
    """Counts pending connections per source and judges new ones; see the module doc."""

    def __init__(self, per_source=32, per_proxy=1024, proxies=(), high_water=0.8, fd_limit=None,
                 max_pending=0):
        self.per_source = int(per_source)
        self.max_pending = int(max_pending)
        self.per_proxy = int(per_proxy)
        self.proxies = tuple(proxies)
        self.high_water = float(high_water)
        self.pending = {}
        self.refused = 0
        self.fd_limit = fd_limit
        self.fd_mark = None
        self.refresh()

    def refresh(self):
        """Read the soft descriptor limit again (the daemon raises it at start)."""
        limit = self.fd_limit
        if limit is None:
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if limit in (resource.RLIM_INFINITY, None) or limit <= 0 or self.high_water <= 0:
            self.fd_mark = None
        else:
            self.fd_mark = max(16, int(limit * self.high_water))

    def _cap(self, ip):
        try:
            addr = normalize_ip(ip)
        except ValueError:
            return self.per_source
        if any(addr.version == net.version and addr in net for net in self.proxies):
            return self.per_proxy
        return self.per_source

    def over_high_water(self, fd, pending=0):
        """Whether the new descriptor *fd*, or the number of *pending* connections, is at
        or above the high-water mark, or *pending* at ``max_pending``.

        The descriptor number alone misses a burst: the oldest closed, their low
        numbers went to the next newcomers unchecked, and 1,000 slow handshakes
        kept 1,011 of 1,024 descriptors (mark 819) although every newcomer past
        the mark had closed the oldest.
        """
        if self.max_pending and pending >= self.max_pending:
            return True
        return self.fd_mark is not None and max(fd, pending) >= self.fd_mark

    def admit(self, ip):
        """None and the connection counted, or a short reason to close it at once."""
        key = _source_key(ip)
        count = self.pending.get(key, 0)
        cap = self._cap(ip)
        if cap and count >= cap:
            self.refused += 1
            return "%d connections of %s not yet authenticated (limit %d)" % (count, key, cap)
        self.pending[key] = count + 1
        return None

    def release(self, ip):
        """The connection of *ip* ended or became a tunnel."""
        key = _source_key(ip)
        count = self.pending.get(key, 0) - 1
        if count > 0:
            self.pending[key] = count
        else:
            self.pending.pop(key, None)

    def count(self, ip):
        """Pending connections of *ip*'s source (its /64 for IPv6)."""
        return self.pending.get(_source_key(ip), 0)

    def total(self):
        return sum(self.pending.values())
