"""Server-side destination ACL: which host:port a tunnel stream may open.

Pure code (no gevent, no I/O).  The dialer calls :meth:`DestinationAcl.check_name`
before resolving a name and :meth:`DestinationAcl.check_address` on every
*resolved* address it is about to connect to, so a name that resolves to
127.0.0.1 is refused just like the literal.

The grammar of the allow/deny entries is in :mod:`afb.policy.acl_rules`.

The server's own addresses (``own_addresses``: every address of the host as
the kernel reports them, with 127.0.0.0/8, ::1, 0.0.0.0 and ::) and its
listening port (``own_port``) are data: the server builds a new ACL when
they change (:mod:`afb.apps.own_addresses`).

Three lists and a switch (``[acl]``): ``allow`` -- when not empty, the only
destinations users may reach; ``deny`` -- never; ``allow_private`` -- lift
the refusal of private, loopback and other special classes; and
``allow_private_to`` -- the private, loopback or own destinations that are
reachable although ``allow_private`` is off (and although ``allow`` does not
list them).  ``allow`` used to be only that last list: exceptions to the
private block, while every public destination stayed open, which the config
read as a restriction it was not.  :func:`private_only` finds the entries of
a config written for that meaning (an ``allow`` entry that only names
private addresses can never be reached now).

Decision order in :meth:`check_address`:

0. one of the server's own addresses on its listening port -> refused, even
   when listed or with ``allow_private`` (a stream into the server itself,
   e.g. a tunnel nested through itself);
1. a deny rule matching the address (or an IPv4 address embedded in it by
   6to4 / NAT64), the host name, and the port -> refused;
2. an ``allow_private_to`` rule matching the address or the host name, and
   the port -> allowed (this is how an operator opens e.g. one internal
   service; a *name* trusts whatever that name resolves to);
3. ``allow`` not empty and no rule of it matching the address or the host
   name and the port -> refused;
4. one of the server's own addresses, on any port -> refused (even with
   ``allow_private``), except loopback and unspecified ones, which step 5
   judges (``allow_private`` opens them, as the demo needs);
5. unless ``allow_private``: loopback, private, CGNAT, link-local, cloud
   metadata, unspecified, multicast, broadcast, reserved and documentation
   ranges (IPv4 and IPv6; IPv4-mapped IPv6 addresses are judged by the IPv4
   address they carry, 6to4 and NAT64 addresses by the IPv4 address they
   embed too) -> refused, even when ``allow`` lists them;
6. anything else -> allowed.
"""

import functools
import ipaddress

from afb.errors import NotAllowed
from afb.policy.acl_rules import normalize_name, parse_rules

__all__ = ["DestinationAcl", "classify_address", "format_destination", "private_only"]


# Address classes refused by default: (network, reason word), first match wins,
# so the more specific entries come first.
_V4_CLASSES = [
    ("0.0.0.0/8", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("169.254.169.254/32", "cloud metadata"),
    ("169.254.0.0/16", "link-local"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "documentation"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("198.18.0.0/15", "benchmarking"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
]
_V6_CLASSES = [
    ("::1/128", "loopback"),
    ("::/128", "unspecified"),
    ("::/96", "reserved"),  # deprecated IPv4-compatible addresses (::a.b.c.d)
    ("64:ff9b:1::/48", "private"),  # local-use NAT64 prefix
    ("100::/64", "reserved"),  # discard-only
    ("2001:db8::/32", "documentation"),
    ("fd00:ec2::254/128", "cloud metadata"),  # AWS IMDS over IPv6
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
]
_V4_CLASSES = [(ipaddress.IPv4Network(n), r) for n, r in _V4_CLASSES]
_V6_CLASSES = [(ipaddress.IPv6Network(n), r) for n, r in _V6_CLASSES]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")
#: Most allowed (address, port, name) triples remembered per ACL.
ALLOWED_CACHE = 4096

_ADDRESSES = (ipaddress.IPv4Address, ipaddress.IPv6Address)

def format_destination(host, port):
    """``host:port`` with an IPv6 literal bracketed: ``[::1]:22``."""
    host = str(host)
    if ":" in host and not host.startswith("["):
        host = "[%s]" % host
    return "%s:%s" % (host, port)


def _parse_ip(text):
    """An ip_address for ``text`` (brackets allowed), or None if not an IP."""
    if not isinstance(text, str):
        return None
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _normalize(addr):
    """IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes the IPv4 address it carries
    (the kernel connects to exactly that); the IPv6 scope id is dropped."""
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if getattr(addr, "scope_id", None):
            return ipaddress.IPv6Address(int(addr))
    return addr


def _embedded_v4(addr):
    """IPv4 addresses an IPv6 address routes to by translation (6to4, NAT64)."""
    if addr.version != 6:
        return []
    if addr in _SIXTOFOUR:
        return [("6to4", ipaddress.IPv4Address((int(addr) >> 80) & 0xFFFFFFFF))]
    if addr in _NAT64:
        return [("NAT64", ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))]
    return []


def _class_of(addr):
    table = _V4_CLASSES if addr.version == 4 else _V6_CLASSES
    for net, reason in table:
        if addr in net:
            return reason
    return None


def classify_address(ip):
    """The reason word of the default-refused class ``ip`` falls in, else None.

    >>> classify_address("127.8.8.8")
    'loopback'
    >>> classify_address("::ffff:10.0.0.1")
    'private'
    """
    addr = ip if isinstance(ip, _ADDRESSES) else ipaddress.ip_address(ip)
    addr = _normalize(addr)
    reason = _class_of(addr)
    if reason is not None:
        return reason
    for how, v4 in _embedded_v4(addr):
        inner = _class_of(v4)
        if inner is not None:
            return "%s via %s" % (inner, how)
    return None


def private_only(rule):
    """The class word if the net ``rule`` lies wholly in one default-refused class, else None.

    Such an ``allow`` entry opens nothing unless ``allow_private`` is on:

    >>> private_only(parse_rule("10.0.0.5:8080"))
    'private'
    >>> private_only(parse_rule("example.com")) is None
    True
    """
    if rule.kind != "net":
        return None
    table = _V4_CLASSES if rule.value.version == 4 else _V6_CLASSES
    for net, reason in table:
        if rule.value.subnet_of(net):
            return reason
    return None


class DestinationAcl:
    """Decide whether the server may connect to a destination (see module doc)."""

    def __init__(self, allow=(), deny=(), allow_private=False, own_addresses=(), own_port=None,
                 allow_private_to=()):
        self.allow = parse_rules(allow)
        self.deny = parse_rules(deny)
        self.allow_private = bool(allow_private)
        self.allow_private_to = parse_rules(allow_private_to)
        own = []
        if isinstance(own_addresses, str):
            own_addresses = [own_addresses]
        for entry in own_addresses or ():
            try:
                own.append(ipaddress.ip_network(str(entry).strip().strip("[]"), strict=False))
            except ValueError as exc:
                raise ValueError("bad own address %r: %s" % (entry, exc)) from None
        self.own_networks = own
        # A host may have many single addresses: a set finds them in one step.
        self._own_hosts = frozenset(n.network_address for n in own
                                    if n.num_addresses == 1)
        self._own_ranges = [n for n in own if n.num_addresses > 1]
        self.own_port = own_port
        # (ip, port, host) already allowed: a browser opens many streams to
        # the same few destinations, and the full check costs ~20 us.  A
        # refusal raises, and lru_cache keeps no result of a call that raised.
        self._allowed = functools.lru_cache(maxsize=ALLOWED_CACHE)(self._check_address)

    def __repr__(self):
        lists = ("allow", "deny", "allow_private_to")
        return "DestinationAcl(%s, allow_private=%r, own=%r, own_port=%r)" % (
            ", ".join("%s=%r" % (name, [r.text for r in getattr(self, name)]) for name in lists),
            self.allow_private, [str(n) for n in self.own_networks], self.own_port)

    def _is_own(self, addr):
        return addr in self._own_hosts or any(addr in net for net in self._own_ranges)

    # -- checks ---------------------------------------------------------------

    def check_name(self, host, port):
        """Apply name deny rules before resolution; raise NotAllowed on a match.

        IP literals pass here: :meth:`check_address` judges them.
        """
        if _parse_ip(host) is not None:
            return None
        name = normalize_name(host)
        for rule in self.deny:
            if rule.matches_name(name, port):
                raise self._refuse(format_destination(host, port), "denied by rule %s" % rule.text)
        return None

    def check_address(self, ip, port, host=None):
        """Raise NotAllowed unless connecting to ``ip``:``port`` is allowed.

        ``host`` is the name the client asked for (None or an IP literal when
        it asked for an address); name rules are matched against it.
        """
        self._allowed(ip, port, host)

    def _check_address(self, ip, port, host):
        addr = ip if isinstance(ip, _ADDRESSES) else _parse_ip(ip)
        if addr is None:
            raise ValueError("not an IP address: %r" % (ip,))
        addr = _normalize(addr)
        name = None
        if host is not None and _parse_ip(host) is None:
            name = normalize_name(host)
            where = "%s (%s)" % (format_destination(host, port), addr)
        else:
            where = format_destination(addr, port)

        views = [addr] + [v4 for _how, v4 in _embedded_v4(addr)]
        own = any(self._is_own(a) for a in views)

        # 0. the server's own endpoint
        if own and self.own_port is not None and int(port) == self.own_port:
            raise self._refuse(where, "the server's own endpoint")

        # 1. explicit deny
        for rule in self.deny:
            if any(rule.matches_address(a, port) for a in views) or (
                name is not None and rule.matches_name(name, port)
            ):
                raise self._refuse(where, "denied by rule %s" % rule.text)

        # 2. an exception to the private block
        if _any_match(self.allow_private_to, addr, name, port):
            return None

        # 3. only what allow lists, when it lists anything
        if self.allow and not _any_match(self.allow, addr, name, port):
            raise self._refuse(where, "not in [acl] allow")

        # 4. the server's own addresses (loopback and unspecified: step 5)
        if own and _class_of(addr) not in ("loopback", "unspecified"):
            raise self._refuse(where, "server's own address")

        # 5. default-refused classes
        if not self.allow_private:
            reason = classify_address(addr)
            if reason is not None:
                raise self._refuse(where, reason)
        return None

    def is_allowed(self, ip, port, host=None):
        """Boolean form of :meth:`check_address`."""
        try:
            self.check_address(ip, port, host)
        except NotAllowed:
            return False
        return True

    @staticmethod
    def _refuse(where, reason):
        exc = NotAllowed("destination %s is not allowed (%s)" % (where, reason))
        exc.reason = reason
        return exc


def _any_match(rules, addr, name, port):
    """Whether one of ``rules`` matches the address, or the host name asked for, and the port."""
    return any(rule.matches_address(addr, port)
               or (name is not None and rule.matches_name(name, port)) for rule in rules)
