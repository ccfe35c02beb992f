"""The allow/deny entries of the server's destination ACL: their grammar and matching.

Pure code. :func:`parse_rule` turns one entry into a :class:`Rule`;
:class:`afb.policy.acl.DestinationAcl` decides with them.

Rule entries (``allow``, ``deny``, ``allow_private_to``), each optionally
followed by ``:PORT`` or ``:LOW-HIGH``:

* a network or single address: ``10.0.0.0/8``, ``192.0.2.7``, ``::1/128``,
  ``2001:db8::1``; an IPv6 entry with a port must be bracketed:
  ``[::1]:8080``, ``[2001:db8::]/32:443`` (``[2001:db8::/32]:443`` also works);
* a host name, matched case-insensitively, without a trailing dot:
  ``example.com``, ``example.com:443``;
* a wildcard name ``*.example.com`` matching any name *below* example.com
  (``a.example.com``, ``a.b.example.com``) but not ``example.com`` itself.

There is no bare ``*``: use ``0.0.0.0/0`` and ``::/0`` for "any address", e.g.
deny ``0.0.0.0/0:25`` and ``[::/0]:25`` to block SMTP everywhere.
"""

import ipaddress
import re

__all__ = ["Rule", "parse_rule", "parse_rules", "normalize_name"]


_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_PORTS = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")


def normalize_name(host):
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
    if text.startswith("["):
        return _bracketed_rule(entry, text)
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
    ports = _parse_ports(port_text, entry) if sep else (1, 65535)
    if not host:
        raise ValueError("missing host in ACL entry %r" % (entry,))
    if re.match(r"^[0-9./]+$", host):
        return Rule(entry, "net", _parse_net(host, entry), *ports)
    return _name_rule(entry, normalize_name(host), ports)


def _bracketed_rule(entry, text):
    """``[v6addr]:port``, ``[v6net/len]:port`` or ``[v6addr]/len:port``."""
    close = text.find("]")
    if close < 0:
        raise ValueError("missing ']' in ACL entry %r" % (entry,))
    inner, rest = text[1:close], text[close + 1:]
    if rest.startswith("/"):
        length, sep, port_text = rest[1:].partition(":")
        inner = "%s/%s" % (inner, length)
        rest = sep + port_text
    ports = (1, 65535)
    if rest:
        if not rest.startswith(":") or len(rest) == 1:
            raise ValueError("expected ':PORT' after ']' in ACL entry %r" % (entry,))
        ports = _parse_ports(rest[1:], entry)
    return Rule(entry, "net", _parse_net(inner, entry), *ports)


def _name_rule(entry, name, ports):
    """A host name or a ``*.suffix`` wildcard."""
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


def parse_rules(entries):
    """Parse a list of entries (one bare string is a one-entry list); None -> []."""
    if entries is None:
        return []
    if isinstance(entries, str):
        entries = [entries]
    return [parse_rule(e) for e in entries]
