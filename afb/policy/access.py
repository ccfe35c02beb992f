"""Who may connect: source address lists, X-Forwarded-For, failed-auth throttling.

Pure code (no gevent, no I/O; the clock is injectable), used by the server
before a WebSocket upgrade and by the client's local proxy on accept.

* :class:`SourceAcl` -- ``allow`` / ``deny`` lists of networks (``10.0.0.0/8``,
  ``2001:db8::/32``, single addresses).  Deny wins; an empty allow list allows
  everyone.  IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``) are judged as
  the IPv4 address they carry.
* :func:`client_ip` -- the address of the real client: the TCP peer, unless
  the peer is a trusted proxy, in which case the rightmost X-Forwarded-For hop
  that is not itself a trusted proxy.
* :class:`AuthThrottle` -- per client address, ``max_failures`` failed
  authentications within ``window`` seconds ban that address for ``ban_time``
  seconds.  IPv6 addresses are counted per /64 (one subscriber's prefix), so an
  attacker cannot walk its own prefix to escape the ban.  Bounded in memory.
* :func:`failure_weight` -- how much one refusal counts: a guess or a forgery
  a whole failure, a token that this server signed but refuses now (expired,
  revoked; :class:`~afb.errors.SignedTokenRefused`) a tenth.  A user whose
  token ran out retries with it (an afb client about twice a minute, one
  restarted by hand more often) and must not be banned for 10 minutes when
  the new token arrives; a stale token teaches a prober nothing new, and 50
  of them within the window still ban.
"""

import functools
import ipaddress
import time
from collections import OrderedDict, deque

from afb.errors import SignedTokenRefused

__all__ = ["parse_networks", "normalize_ip", "SourceAcl", "client_ip", "AuthThrottle",
           "failure_weight"]

#: What a refused token this server signed counts towards a ban (a guess: 1).
SIGNED_TOKEN_WEIGHT = 0.1


def failure_weight(error):
    """How much the refusal ``error`` (an AuthError) counts towards a ban."""
    return SIGNED_TOKEN_WEIGHT if isinstance(error, SignedTokenRefused) else 1.0


def normalize_ip(text):
    """An :mod:`ipaddress` address for *text* (IPv4-mapped IPv6 -> IPv4, zone dropped).

    ValueError if *text* is not an IP address.
    """
    if isinstance(text, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        addr = text
    else:
        text = str(text).strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _parse_network(entry):
    text = str(entry).strip()
    if text.startswith("[") and "]" in text:          # [2001:db8::]/32 or [::1]
        inner, _, rest = text[1:].partition("]")
        text = inner + rest
    try:
        net = ipaddress.ip_network(text.split("%", 1)[0], strict=False)
    except ValueError:
        raise ValueError("%r is not an IP address or network (e.g. 10.0.0.0/8, ::1)"
                         % (entry,)) from None
    if net.version == 6 and net.network_address.ipv4_mapped is not None and net.prefixlen >= 96:
        net = ipaddress.ip_network("%s/%d" % (net.network_address.ipv4_mapped,
                                              net.prefixlen - 96))
    return net


def parse_networks(entries):
    """A tuple of networks from CIDR / address strings; ValueError names a bad one."""
    if isinstance(entries, str):
        entries = [e for e in entries.split(",")]
    return tuple(_parse_network(e) for e in entries if str(e).strip())


def _in(addr, networks):
    return any(addr.version == net.version and addr in net for net in networks)


class SourceAcl:
    """Allow / deny lists of client networks (deny wins; empty allow = everyone)."""

    def __init__(self, allow=(), deny=()):
        self.allow = parse_networks(allow)
        self.deny = parse_networks(deny)
        # ip -> verdict: a proxy has few clients, each opening many connections.
        self._verdicts = functools.lru_cache(maxsize=4096)(self._check)

    def __repr__(self):
        return "SourceAcl(allow=%s, deny=%s)" % ([str(n) for n in self.allow],
                                                  [str(n) for n in self.deny])

    def check(self, ip):
        """None if *ip* may connect, else a short reason for the log."""
        return self._verdicts(ip)

    def _check(self, ip):
        try:
            addr = normalize_ip(ip)
        except ValueError:
            return "not an IP address"
        if _in(addr, self.deny):
            return "in the deny list"
        if self.allow and not _in(addr, self.allow):
            return "not in the allow list"
        return None

    def allows(self, ip):
        return self.check(ip) is None


def _hop(text):
    """The address of one X-Forwarded-For entry (``1.2.3.4``, ``1.2.3.4:80``,
    ``[2001:db8::1]:80``, ``2001:db8::1``), or None if it is not one."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:                        # IPv4 with a port
        text = text.partition(":")[0]
    try:
        return normalize_ip(text)
    except ValueError:
        return None


def client_ip(peer, forwarded_for, trusted_proxies=()):
    """The client's address as a string.

    *peer* is the TCP peer (``REMOTE_ADDR``), *forwarded_for* the
    X-Forwarded-For value (several header lines joined with commas, or None)
    and *trusted_proxies* networks (see :func:`parse_networks`) whose
    X-Forwarded-For is believed.  X-Forwarded-For is ignored unless the peer is
    a trusted proxy; then its hops are walked from the right, skipping trusted
    proxies, and the first other hop is the client.  If every hop is trusted,
    the leftmost is the client; a malformed hop stops the walk at the last good
    one (it was not added by a proxy we trust).
    """
    if not isinstance(trusted_proxies, tuple) or not all(
            isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)) for n in trusted_proxies):
        trusted_proxies = parse_networks(trusted_proxies)
    try:
        current = normalize_ip(peer)
    except ValueError:
        return str(peer)
    if not trusted_proxies or not forwarded_for or not _in(current, trusted_proxies):
        return str(current)
    for entry in reversed(forwarded_for.split(",")):
        if not entry.strip():
            continue
        hop = _hop(entry)
        if hop is None:
            break
        current = hop
        if not _in(hop, trusted_proxies):
            break
    return str(current)


class _Entry:
    __slots__ = ("failures", "banned_until")

    def __init__(self):
        self.failures = deque()
        self.banned_until = None


class AuthThrottle:
    """Per-address failed-authentication counter with temporary bans.

    ``failed(ip, weight=1.0)`` records a failure and returns True when it
    started a ban (once the weights within ``window`` add up to ``max_failures``);
    ``succeeded(ip)`` forgets the address's failures; ``is_banned(ip)`` says
    whether it is banned now.  ``max_failures`` of 0 turns throttling off.
    At most ``max_entries`` addresses are remembered: when full, stale entries
    go first, then the least recently touched.
    """

    def __init__(self, max_failures=5, window=60.0, ban_time=600.0, clock=time.monotonic,
                 max_entries=65536):
        self.max_failures = int(max_failures)
        self.window = float(window)
        self.ban_time = float(ban_time)
        self.clock = clock
        self.max_entries = max(1, int(max_entries))
        self._entries = OrderedDict()

    @staticmethod
    def key(ip):
        """The counting key of *ip*: the address (IPv4) or its /64 (IPv6)."""
        try:
            addr = normalize_ip(ip)
        except ValueError:
            return str(ip)
        if addr.version == 6:
            return str(ipaddress.IPv6Network((addr, 64), strict=False))
        return str(addr)

    def __len__(self):
        return len(self._entries)

    def is_banned(self, ip):
        entry = self._entries.get(self.key(ip))
        if entry is None or entry.banned_until is None:
            return False
        if self.clock() < entry.banned_until:
            return True
        entry.banned_until = None
        return False

    def banned_for(self, ip):
        """Seconds of ban left for *ip* (0 if not banned)."""
        entry = self._entries.get(self.key(ip))
        if entry is None or entry.banned_until is None:
            return 0.0
        return max(0.0, entry.banned_until - self.clock())

    def failed(self, ip, weight=1.0):
        """Record a failure of ``weight``; True if this one got *ip* banned."""
        if self.max_failures <= 0:
            return False
        now = self.clock()
        key = self.key(ip)
        entry = self._entries.get(key)
        if entry is None:
            self._make_room(now)
            entry = self._entries[key] = _Entry()
        else:
            self._entries.move_to_end(key)
        if entry.banned_until is not None and now < entry.banned_until:
            return False
        entry.banned_until = None
        self._prune(entry, now)
        entry.failures.append((now, weight))
        if sum(w for _t, w in entry.failures) >= self.max_failures - 1e-9:
            entry.failures.clear()
            entry.banned_until = now + self.ban_time
            return True
        return False

    def succeeded(self, ip):
        """Forget the failures of *ip* (a ban in force stays)."""
        key = self.key(ip)
        entry = self._entries.get(key)
        if entry is not None and (entry.banned_until is None or self.clock() >= entry.banned_until):
            del self._entries[key]

    def _prune(self, entry, now):
        horizon = now - self.window
        while entry.failures and entry.failures[0][0] <= horizon:
            entry.failures.popleft()

    def _stale(self, entry, now):
        self._prune(entry, now)
        return not entry.failures and (entry.banned_until is None or now >= entry.banned_until)

    def _make_room(self, now):
        if len(self._entries) < self.max_entries:
            return
        for key in [k for k, e in self._entries.items() if self._stale(e, now)]:
            del self._entries[key]
        # Still full of live entries (a flood of addresses): drop the least
        # recently touched eighth at once, so the scan above stays rare.
        keep = self.max_entries - max(1, self.max_entries // 8)
        while len(self._entries) > keep:
            self._entries.popitem(last=False)
