"""Server-side destination ACL: which host:port a tunnel stream may open.

Pure code (no gevent, no I/O).  The dialer calls :meth:`DestinationAcl.check_name`
before resolving a name and :meth:`DestinationAcl.check_address` on every
*resolved* address it is about to connect to, so a name that resolves to
127.0.0.1 is refused just like the literal.

Rule entries (``allow`` / ``deny``), each optionally followed by ``:PORT`` or
``:LOW-HIGH``:

* a network or single address: ``10.0.0.0/8``, ``192.0.2.7``, ``::1/128``,
  ``2001:db8::1``; an IPv6 entry with a port must be bracketed:
  ``[::1]:8080``, ``[2001:db8::]/32:443`` (``[2001:db8::/32]:443`` also works);
* a host name, matched case-insensitively, without a trailing dot:
  ``example.com``, ``example.com:443``;
* a wildcard name ``*.example.com`` matching any name *below* example.com
  (``a.example.com``, ``a.b.example.com``) but not ``example.com`` itself.

There is no bare ``*``: use ``0.0.0.0/0`` and ``::/0`` for "any address", e.g.
deny ``0.0.0.0/0:25`` and ``[::/0]:25`` to block SMTP everywhere.

Decision order in :meth:`check_address`:

1. an explicit deny rule matching the address (or an IPv4 address embedded in
   it by 6to4 / NAT64), the host name, and the port -> refused;
2. an explicit allow rule matching the address or the host name, and the
   port -> allowed (this is how an operator opens e.g. one internal service;
   allowing a *name* trusts whatever that name resolves to);
3. one of the server's own addresses -> refused (even with ``allow_private``);
4. unless ``allow_private``: loopback, private, CGNAT, link-local, cloud
   metadata, unspecified, multicast, broadcast, reserved and documentation
   ranges (IPv4 and IPv6; IPv4-mapped IPv6 addresses are judged by the IPv4
   address they carry, 6to4 and NAT64 addresses by the IPv4 address they
   embed too) -> refused;
5. anything else -> allowed.
"""

import ipaddress
import re

from afb.errors import NotAllowed

__all__ = ["DestinationAcl", "Rule", "parse_rule", "classify_address", "format_destination"]


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

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_PORTS = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")


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
    addr = ip if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ipaddress.ip_address(ip)
    addr = _normalize(addr)
    reason = _class_of(addr)
    if reason is not None:
        return reason
    for how, v4 in _embedded_v4(addr):
        inner = _class_of(v4)
        if inner is not None:
            return "%s via %s" % (inner, how)
    return None


def _normalize_name(host):
    name = host.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    return name


def _valid_name(name):
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return False
    # An all-numeric last label is not a host name (most likely a mistyped IP).
    return not labels[-1].isdigit()


class Rule:
    """One parsed allow/deny entry.  ``kind`` is 'net', 'name' or 'wildcard'."""

    __slots__ = ("text", "kind", "value", "port_lo", "port_hi")

    def __init__(self, text, kind, value, port_lo=1, port_hi=65535):
        self.text = text
        self.kind = kind
        self.value = value
        self.port_lo = port_lo
        self.port_hi = port_hi

    def __repr__(self):
        return "Rule(%r)" % self.text

    def port_matches(self, port):
        return self.port_lo <= int(port) <= self.port_hi

    def matches_address(self, addr, port):
        return self.kind == "net" and addr in self.value and self.port_matches(port)

    def matches_name(self, name, port):
        if self.kind == "name":
            hit = name == self.value
        elif self.kind == "wildcard":
            hit = name.endswith("." + self.value)
        else:
            return False
        return hit and self.port_matches(port)


def _parse_ports(text, entry):
    m = _PORTS.match(text)
    if not m:
        raise ValueError("bad port %r in ACL entry %r" % (text, entry))
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        raise ValueError("port out of range 1-65535 in ACL entry %r" % (entry,))
    if lo > hi:
        raise ValueError("empty port range %d-%d in ACL entry %r" % (lo, hi, entry))
    return lo, hi


def _parse_net(text, entry):
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError("bad network in ACL entry %r: %s" % (entry, exc)) from None


def parse_rule(entry):
    """Parse one allow/deny entry; ValueError naming the entry if it is bad."""
    if not isinstance(entry, str):
        raise ValueError("ACL entry must be a string, not %r" % (entry,))
    text = entry.strip()
    if not text:
        raise ValueError("empty ACL entry %r" % (entry,))
    ports = (1, 65535)

    if text.startswith("["):
        # [v6addr]:port, [v6net/len]:port, [v6addr]/len:port
        close = text.find("]")
        if close < 0:
            raise ValueError("missing ']' in ACL entry %r" % (entry,))
        inner, rest = text[1:close], text[close + 1:]
        if rest.startswith("/"):
            length, sep, port_text = rest[1:].partition(":")
            inner = "%s/%s" % (inner, length)
            rest = sep + port_text
        if rest:
            if not rest.startswith(":") or len(rest) == 1:
                raise ValueError("expected ':PORT' after ']' in ACL entry %r" % (entry,))
            ports = _parse_ports(rest[1:], entry)
        net = _parse_net(inner, entry)
        return Rule(entry, "net", net, *ports)

    if text.count(":") >= 2:
        # A bare IPv6 address or network; a port needs brackets.
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise ValueError(
                "bad IPv6 ACL entry %r (%s); write an IPv6 entry with a port as "
                "[addr]:port or [net/len]:port" % (entry, exc)
            ) from None
        return Rule(entry, "net", net)

    host, sep, port_text = text.partition(":")
    if sep:
        ports = _parse_ports(port_text, entry)
    if not host:
        raise ValueError("missing host in ACL entry %r" % (entry,))

    if re.match(r"^[0-9./]+$", host):
        net = _parse_net(host, entry)
        return Rule(entry, "net", net, *ports)

    name = _normalize_name(host)
    if name.startswith("*."):
        suffix = name[2:]
        if not _valid_name(suffix):
            raise ValueError("bad wildcard name in ACL entry %r" % (entry,))
        return Rule(entry, "wildcard", suffix, *ports)
    if "*" in name:
        raise ValueError(
            "bad ACL entry %r: '*' is only allowed as a leading '*.' label "
            "(use 0.0.0.0/0 and ::/0 for any address)" % (entry,)
        )
    if not _valid_name(name):
        raise ValueError("bad host name in ACL entry %r" % (entry,))
    return Rule(entry, "name", name, *ports)


def _parse_rules(entries):
    if entries is None:
        return []
    if isinstance(entries, str):
        entries = [entries]
    return [parse_rule(e) for e in entries]


class DestinationAcl:
    """Decide whether the server may connect to a destination (see module doc)."""

    def __init__(self, allow=(), deny=(), allow_private=False, own_addresses=()):
        self.allow = _parse_rules(allow)
        self.deny = _parse_rules(deny)
        self.allow_private = bool(allow_private)
        own = []
        if isinstance(own_addresses, str):
            own_addresses = [own_addresses]
        for entry in own_addresses or ():
            try:
                own.append(ipaddress.ip_network(str(entry).strip().strip("[]"), strict=False))
            except ValueError as exc:
                raise ValueError("bad own address %r: %s" % (entry, exc)) from None
        self.own_networks = own
        # (ip, port, host) already allowed: a browser opens many streams to
        # the same few destinations, and the full check costs ~20 us.
        self._allowed = set()

    def __repr__(self):
        return "DestinationAcl(allow=%r, deny=%r, allow_private=%r, own=%r)" % (
            [r.text for r in self.allow],
            [r.text for r in self.deny],
            self.allow_private,
            [str(n) for n in self.own_networks],
        )

    # -- checks ---------------------------------------------------------------

    def check_name(self, host, port):
        """Apply name deny rules before resolution; raise NotAllowed on a match.

        IP literals pass here: :meth:`check_address` judges them.
        """
        if _parse_ip(host) is not None:
            return None
        name = _normalize_name(host)
        for rule in self.deny:
            if rule.matches_name(name, port):
                raise self._refuse(format_destination(host, port), "denied by rule %s" % rule.text)
        return None

    def check_address(self, ip, port, host=None):
        """Raise NotAllowed unless connecting to ``ip``:``port`` is allowed.

        ``host`` is the name the client asked for (None or an IP literal when
        it asked for an address); name rules are matched against it.
        """
        key = (ip, port, host)
        if key in self._allowed:
            return None
        self._check_address(ip, port, host)
        if len(self._allowed) >= ALLOWED_CACHE:
            self._allowed.clear()
        self._allowed.add(key)
        return None

    def _check_address(self, ip, port, host):
        addr = _parse_ip(ip) if not isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ip
        if addr is None:
            raise ValueError("not an IP address: %r" % (ip,))
        addr = _normalize(addr)
        name = None
        if host is not None and _parse_ip(host) is None:
            name = _normalize_name(host)
            where = "%s (%s)" % (format_destination(host, port), addr)
        else:
            where = format_destination(addr, port)

        views = [addr] + [v4 for _how, v4 in _embedded_v4(addr)]

        # 1. explicit deny
        for rule in self.deny:
            if any(rule.matches_address(a, port) for a in views) or (
                name is not None and rule.matches_name(name, port)
            ):
                raise self._refuse(where, "denied by rule %s" % rule.text)

        # 2. explicit allow
        for rule in self.allow:
            if rule.matches_address(addr, port) or (name is not None and rule.matches_name(name, port)):
                return None

        # 3. the server's own addresses
        for net in self.own_networks:
            if any(a in net for a in views):
                raise self._refuse(where, "server's own address")

        # 4. default-refused classes
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
