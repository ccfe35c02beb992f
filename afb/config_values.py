"""Config values: the parsers other modules share and the configspec checks.

:func:`make_validator` gives configobj's validator the custom types the
``afb/configspec/*.spec`` files use (``hostport``, ``ws_url``, ``duration``,
``byte_size``, ``cidr_list``, ``acl_list``...). A failed check raises
:class:`InvalidValue`, whose message
is the reason :mod:`afb.config` shows beside the file, line and key.
"""

import base64
import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

from configobj.validate import ValidateError, Validator, VdtTypeError, is_string_list

from afb.errors import ConfigError

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")


def parse_hostport(text):
    """``"host:port"`` or ``"[v6addr]:port"`` -> ``(host, port)``; ValueError if bad.

    Port 0 is accepted (an ephemeral port, useful in tests).
    """
    if not isinstance(text, str):
        raise ValueError("expected host:port, got %r" % (text,))
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("expected [IPv6]:port, got %r" % text)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("%r is not an IPv6 address" % host) from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError("expected host:port, got %r" % text)
        if ":" in host:
            raise ValueError("an IPv6 address needs brackets: [%s]:%s" % (host, port))
        if not _HOSTNAME_RE.match(host) or ".." in host:
            raise ValueError("bad host name %r" % host)
    if not port.isdigit() or int(port) > 65535:
        raise ValueError("bad port %r (0-65535)" % port)
    return host, int(port)


def _parse_url(text, schemes):
    """Split a URL with a scheme from ``schemes`` and a host; ValueError if bad."""
    parts = urlsplit(text)
    if parts.scheme not in schemes:
        raise ValueError("URL scheme must be %s" % " or ".join(s + "://" for s in schemes))
    if not parts.hostname:
        raise ValueError("URL has no host")
    _ = parts.port  # raises ValueError on a bad port
    if parts.fragment:
        raise ValueError("URL must not have a #fragment")
    return parts


def parse_state_url(text):
    """``[server] state``: None (empty: the embedded SQLite store) or the Redis URL.

    ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
    ``unix://[[user]:password@]/path/to/redis.sock[?db=N]``; ValueError names
    what is wrong.  The URL goes to redis-py's ``Redis.from_url`` as it is.
    """
    text = (text or "").strip()
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme == "unix":
        if parts.netloc.rpartition("@")[2]:
            raise ValueError("unix:// takes no host but an absolute socket path "
                             "(three slashes: unix:///run/redis/redis.sock)")
        if not parts.path.startswith("/"):
            raise ValueError("unix:// needs an absolute socket path (unix:///run/redis/redis.sock)")
        db = dict(q.partition("=")[::2] for q in parts.query.split("&") if q).get("db", "0")
    else:
        parts = _parse_url(text, ("redis", "rediss"))
        db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError("the database number must be an integer, not %r" % db)
    import importlib.util

    if importlib.util.find_spec("redis") is None:
        raise ValueError("a Redis store needs redis-py, which is not installed (Debian: apt "
                         "install python3-redis; pip: pip install 'afb[redis]')")
    return text


# --- custom configspec checks -----------------------------------------------

class InvalidValue(ValidateError):
    """A custom check failed; the message is the reason shown to the user."""


def _check_str(value):
    if not isinstance(value, str):
        raise VdtTypeError(value)
    return value


def _check_hostport(value, *args, **kwargs):
    try:
        parse_hostport(_check_str(value))
    except ValueError as exc:
        raise InvalidValue(str(exc)) from None
    return value.strip()


def _check_hostport_or_empty(value, *args, **kwargs):
    if _check_str(value).strip() == "":
        return ""
    return _check_hostport(value)


def _check_url_path(value, *args, **kwargs):
    if not _check_str(value).startswith("/"):
        raise InvalidValue('path must start with "/"')
    return value


def _check_ws_url(value, *args, **kwargs):
    try:
        _parse_url(_check_str(value), ("ws", "wss"))
    except ValueError as exc:
        raise InvalidValue("%s (e.g. wss://host/ or ws://host:8080/path)" % exc) from None
    return value


def _check_proxy_url(value, *args, **kwargs):
    if _check_str(value) == "":
        return value
    try:
        parts = _parse_url(value, ("socks5", "socks5h", "http"))
    except ValueError as exc:
        raise InvalidValue("%s (e.g. socks5://host:1080 or http://host:3128)" % exc) from None
    if parts.port is None:
        raise InvalidValue("upstream proxy URL needs a port")
    if parts.username is not None or parts.path not in ("", "/") or parts.query:
        raise InvalidValue("upstream proxy URL must be scheme://host:port only")
    return value


def _check_spki_pin(value, *args, **kwargs):
    if _check_str(value) == "":
        return value
    prefix, sep, digest = value.partition("sha256//")
    try:
        ok = not prefix and sep and len(base64.b64decode(digest, validate=True)) == 32
    except ValueError:
        ok = False
    if not ok:
        raise InvalidValue("pin must be sha256//<base64 of 32 bytes> (see afb keygen)")
    return value


def _check_string_list(value, *args, **kwargs):
    """Like configobj's string_list, but one bare value is a one-item list."""
    if isinstance(value, str):
        value = [value] if value.strip() else []
    return is_string_list(value, *args, **kwargs)


def _check_cidr_list(value, *args, **kwargs):
    """A string_list whose items are IP addresses or networks (10.0.0.0/8, ::1)."""
    from afb.policy.access import parse_networks

    value = _check_string_list(value, *args, **kwargs)
    try:
        parse_networks(value)
    except ValueError as exc:
        raise InvalidValue(str(exc)) from None
    return value


def _check_acl_list(value, *args, **kwargs):
    """A string_list of destination ACL entries (10.0.0.0/8, example.com:443, *.example.com)."""
    from afb.policy.acl_rules import parse_rule

    value = _check_string_list(value, *args, **kwargs)
    for entry in value:
        try:
            parse_rule(entry)
        except ValueError as exc:
            raise InvalidValue(str(exc)) from None
    return value


def _list_check(parse):
    """A string_list check whose items ``parse`` (a :mod:`afb.policy.device_rules`
    parser) accepts; its ValueError is the reason shown."""
    def check(value, *args, **kwargs):
        value = _check_string_list(value, *args, **kwargs)
        try:
            parse(value)
        except ValueError as exc:
            raise InvalidValue(str(exc)) from None
        return value
    return check


def _device_rules():
    from afb.policy import device_rules

    return {"device_weights": _list_check(device_rules.parse_device_weights),
            "device_rates": _list_check(device_rules.parse_device_rates),
            "port_list": _list_check(device_rules.parse_ports)}


_COOKIE_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}$")


def _check_cookie_name(value, *args, **kwargs):
    """An HTTP cookie name (an RFC 6265 token: no spaces, '=', ';', quotes)."""
    if not _COOKIE_NAME_RE.match(_check_str(value)):
        raise InvalidValue('bad cookie name "%s" (letters, digits and !#$%%&\'*+-.^_`|~)' % value)
    return value


def _check_duration(value, *args, **kwargs):
    """Seconds (int >= 0) from 3600, 3600s, 15m, 12h, 7d or 2w."""
    from afb.policy.auth import parse_ttl

    try:
        return parse_ttl(_check_str(value), allow_zero=True)
    except ValueError:
        raise InvalidValue('bad duration "%s" (use e.g. 0, 3600, 15m, 12h, 7d)' % value) from None


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text):
    """Bytes from ``65536``, ``64K``, ``8M``, ``1G`` (binary units; ``KiB``/``MB`` too)."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError("bad size %r (use e.g. 65536, 64K, 8M, 1G)" % (text,))
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def _check_byte_size(value, min=None, max=None, *args, **kwargs):
    """A size in bytes (see parse_size), within ``min``/``max`` (also sizes)."""
    try:
        size = parse_size(_check_str(value))
    except ValueError as exc:
        raise InvalidValue(str(exc).replace("%r" % (value,), '"%s"' % value)) from None
    if min is not None and size < parse_size(min):
        raise InvalidValue('"%s" is too small (min %s)' % (value, min))
    if max is not None and size > parse_size(max):
        raise InvalidValue('"%s" is too big (max %s)' % (value, max))
    return size


_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)\s*(b/s|bps|bit/s|bit|b)?\s*$",
                      re.IGNORECASE)
_RATE_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_rate(text):
    """Bytes per second from ``0``, ``1500``, ``10M``, ``10MB/s``, ``2.5G``, ``80Mbit``.

    Decimal units (k = 1000, M = 10^6), as network rates are quoted; a
    ``bit`` / ``bit/s`` / ``bps`` suffix means bits (divided by 8).
    """
    match = _RATE_RE.match(str(text))
    if not match:
        raise ValueError('bad rate "%s" (use e.g. 0, 500K, 10M, 10MB/s, 80Mbit)' % (text,))
    value = float(match.group(1)) * _RATE_UNITS[match.group(2).lower()]
    unit = (match.group(3) or "").lower()
    return value / 8 if unit.startswith("bit") or unit == "bps" else value


def _check_rate(value, *args, **kwargs):
    """A rate in bytes per second (see parse_rate); 0 turns the rule off."""
    try:
        return parse_rate(_check_str(value))
    except ValueError as exc:
        raise InvalidValue(str(exc)) from None


def parse_local_listen(text):
    """``""`` -> None (off); ``"9100"`` -> ``("127.0.0.1", 9100)``; ``host:port`` as is.

    A bare port means loopback: a metrics page tells whoever reads it who
    uses the tunnel and how much, so reaching it from elsewhere takes an
    address written on purpose.
    """
    text = text.strip()
    if not text:
        return None
    if text.isdigit():
        if not 1 <= int(text) <= 65535:
            raise ValueError("bad port %r (1-65535)" % text)
        return "127.0.0.1", int(text)
    return parse_hostport(text)


def _check_local_listen(value, *args, **kwargs):
    try:
        parse_local_listen(_check_str(value))
    except ValueError as exc:
        raise InvalidValue("%s (a port, e.g. 9100, means 127.0.0.1:9100; empty: off)"
                           % exc) from None
    return value.strip()


def _check_e2e_public_key(value, *args, **kwargs):
    """Empty (E2E off) or the server's X25519 public key: base64 of 32 bytes."""
    if _check_str(value).strip() == "":
        return ""
    from afb.codec.aead import parse_public_key

    try:
        parse_public_key(value)
    except ConfigError:
        raise InvalidValue("must be the base64 X25519 public key printed by afb keygen as "
                       "\"e2e public key\" (32 bytes, 44 characters), or empty") from None
    return value.strip()


def _check_cipher_list(value, *args, **kwargs):
    """A string_list of E2E cipher names (aes-256-gcm, chacha20-poly1305), not empty."""
    from afb.codec.aead import CIPHER_NAMES, cipher_id

    value = _check_string_list(value, *args, **kwargs)
    if not value:
        raise InvalidValue("name at least one cipher: %s" % ", ".join(CIPHER_NAMES.values()))
    for name in value:
        try:
            cipher_id(name)
        except ConfigError:
            raise InvalidValue('unknown cipher "%s" (use %s)' % (
                name, " or ".join(CIPHER_NAMES.values()))) from None
    return value


def split_command(text):
    """``alert_command`` -> argv (shell-like quoting, no shell); [] when empty."""
    import shlex

    return shlex.split(text)


def _check_command(value, *args, **kwargs):
    try:
        split_command(_check_str(value))
    except ValueError as exc:
        raise InvalidValue("cannot split the command: %s (quote it as in a shell)"
                           % exc) from None
    return value


def masked_url(url):
    """``url`` without its password (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc="%s:***@%s" % (parts.username or "", host)))


def _check_state_url(value, *args, **kwargs):
    try:
        return parse_state_url(_check_str(value)) or ""
    except ValueError as exc:
        raise InvalidValue("%s (empty: the SQLite file in state_dir; several servers: "
                           "redis://[:PASSWORD@]HOST:6379/0, rediss://... or "
                           "unix:///run/redis/redis.sock?db=0)" % exc) from None


def make_validator():
    return Validator({
        "hostport": _check_hostport,
        "hostport_or_empty": _check_hostport_or_empty,
        "url_path": _check_url_path,
        "ws_url": _check_ws_url,
        "proxy_url": _check_proxy_url,
        "spki_pin": _check_spki_pin,
        "string_list": _check_string_list,
        "duration": _check_duration,
        "byte_size": _check_byte_size,
        "cidr_list": _check_cidr_list,
        "acl_list": _check_acl_list,
        "cookie_name": _check_cookie_name,
        "e2e_public_key": _check_e2e_public_key,
        "cipher_list": _check_cipher_list,
        "rate": _check_rate,
        "local_listen": _check_local_listen,
        "command": _check_command,
        **_device_rules(),
        "state_url": _check_state_url,
    })
