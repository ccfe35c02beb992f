"""The client's ``[qos]`` rules about LAN devices and destinations (issue 13, part 4).

Pure code: the configspec checks (:mod:`afb.config_values`) and the local
proxy use the same parsers, so ``afb config check`` refuses exactly what the
client would.

* ``device_weights = 192.168.1.20:3, alice:2``: a device's share of ``max_down``
  / ``max_up`` against the others (default 1);
* ``device_rates = kid-tablet:2M/500K``: a device's own rate, down/up
  (0: unlimited), instead of ``device_rate_down`` / ``device_rate_up``;
* ``priority_ports = 22, 53, 27000-27050`` and ``priority_hosts =
  *.example-game.net, ssh.example.org, 10.0.0.0/8:3389``: streams to these
  destinations are interactive (:class:`PriorityRules`).

A device is an address (IPv6 in brackets: ``[fd00::5]:3``) or a proxy login
(RFC 1929 / Basic, when ``users_file`` is set).  Lists rather than a
``[[device NAME]]`` subsection per device: configobj validates a list value
with one custom check and reports its line, while free-named subsections
would escape the configspec and the man page's key list.
"""

import ipaddress
import re

from afb.policy.acl_rules import normalize_name, parse_rule

__all__ = ["device_key", "parse_device_weights", "parse_device_rates", "parse_ports",
           "PriorityRules", "MAX_WEIGHT"]

#: Largest weight (a share 1000 times another's is already "all of it").
MAX_WEIGHT = 1000.0
_LOGIN_RE = re.compile(r"^[^\s,:\[\]]{1,255}$")
_PORTS_RE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")


def device_key(address):
    """The device name of a peer address: IPv4-mapped IPv6 as its IPv4 address."""
    if address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address


def _device_name(text, entry):
    if text.startswith("[") and text.endswith("]"):
        try:
            return ipaddress.IPv6Address(text[1:-1]).compressed
        except ValueError:
            raise ValueError("%r: %s is not an IPv6 address" % (entry, text)) from None
    if ":" in text:
        raise ValueError("%r: write an IPv6 address in brackets, [%s]:VALUE" % (entry, text))
    try:
        return ipaddress.IPv4Address(text).compressed
    except ValueError:
        pass
    if not _LOGIN_RE.match(text):
        raise ValueError("%r: %r is neither an address (IPv6 in brackets: [fd00::5]) nor a "
                         "proxy login" % (entry, text))
    return text


def _split(entry, what):
    if not isinstance(entry, str):
        raise ValueError("%r is not DEVICE:%s" % (entry, what))
    name, sep, value = entry.strip().rpartition(":")
    if not sep or not name or not value:
        raise ValueError("%r is not DEVICE:%s" % (entry, what))
    return _device_name(name, entry), value.strip()


def _as_list(entries):
    if entries is None:
        return []
    return [entries] if isinstance(entries, str) else list(entries)


def parse_device_weights(entries):
    """``["192.168.1.20:3", "alice:2"]`` -> ``{device: weight}``; ValueError naming the entry."""
    out = {}
    for entry in _as_list(entries):
        name, value = _split(entry, "WEIGHT (e.g. 192.168.1.20:3)")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not 0 < weight <= MAX_WEIGHT:
            raise ValueError("%r: the weight must be a number above 0, at most %g"
                             % (entry, MAX_WEIGHT))
        if name in out:
            raise ValueError("%r: device %s is listed twice" % (entry, name))
        out[name] = weight
    return out


def parse_device_rates(entries):
    """``["kid:2M/500K"]`` -> ``{device: (down, up)}`` in bytes/s (0: unlimited)."""
    from afb.config_values import parse_rate

    out = {}
    for entry in _as_list(entries):
        name, value = _split(entry, "DOWN/UP (e.g. kid-tablet:2M/500K)")
        down, sep, up = value.partition("/")
        if not sep:
            raise ValueError("%r: give both rates, DOWN/UP (e.g. kid-tablet:2M/500K; 0: "
                             "unlimited)" % entry)
        try:
            rates = (parse_rate(down.strip()), parse_rate(up.strip()))
        except ValueError as exc:
            raise ValueError("%r: %s" % (entry, exc)) from None
        if name in out:
            raise ValueError("%r: device %s is listed twice" % (entry, name))
        out[name] = rates
    return out


def parse_ports(entries):
    """``["22", "27000-27050"]`` -> ``[(22, 22), (27000, 27050)]``."""
    out = []
    for entry in _as_list(entries):
        match = _PORTS_RE.match(str(entry).strip())
        low = int(match.group(1)) if match else 0
        high = int(match.group(2) or low) if match else 0
        if not (match and 1 <= low <= high <= 65535):
            raise ValueError("%r is not a port or a range of ports (1-65535, e.g. 22 or "
                             "27000-27050)" % (entry,))
        out.append((low, high))
    return out


def _parse_hosts(entries):
    rules = []
    for entry in _as_list(entries):
        try:
            rules.append(parse_rule(entry))
        except ValueError as exc:
            raise ValueError(str(exc).replace("ACL entry", "entry")) from None
    return rules


class PriorityRules:
    """Which destinations are interactive: a port in ``ports``, or a ``hosts`` rule.

    ``hosts`` entries use the server ACL's grammar (:mod:`afb.policy.acl_rules`):
    a name (``ssh.example.org``), a wildcard below a name (``*.example-game.net``:
    ``eu.example-game.net``, not ``example-game.net`` itself), an address or
    network, each with an optional ``:PORT`` or ``:LOW-HIGH``.  Names are
    matched against the name the app asked for (SOCKS5 domain, CONNECT host),
    nothing is resolved.
    """

    __slots__ = ("ports", "rules")

    def __init__(self, ports=(), hosts=()):
        self.ports = parse_ports(ports)
        self.rules = _parse_hosts(hosts)

    def __bool__(self):
        return bool(self.ports or self.rules)

    def matches(self, host, port):
        for low, high in self.ports:
            if low <= port <= high:
                return True
        if not self.rules:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            name = normalize_name(host)
            return any(rule.matches_name(name, port) for rule in self.rules)
        return any(rule.matches_address(address, port) for rule in self.rules)
