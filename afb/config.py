"""Configuration files: INI (configobj) checked against ``afb/configspec/*.spec``.

:func:`load_config` returns a validated :class:`configobj.ConfigObj` with every
default filled in and relative paths resolved against the file's directory, or
raises :class:`~afb.errors.ConfigError` whose ``errors`` hold one line per
problem, e.g.::

    conf/afb-client.conf:12: [tunnel] stream_window: value "10" is too small (min 16384)

configobj keeps no line numbers, so they are found by scanning the file for the
key inside its section (:func:`_line_index`).
"""

import base64
import ipaddress
import os
import re
from urllib.parse import urlsplit

from configobj import ConfigObj, ConfigObjError, flatten_errors, get_extra_values
from configobj.validate import (
    ValidateError,
    Validator,
    VdtMissingValue,
    VdtTypeError,
    VdtValueTooBigError,
    VdtValueTooSmallError,
    is_string_list,
)

from afb.errors import ConfigError

ROLES = ("server", "client")
SPEC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configspec")

#: (section, key) of path values resolved against the config file's directory.
PATH_KEYS = {
    "server": [("server", "cert"), ("server", "key"), ("server", "state_dir"),
               ("auth", "jwt_public_key"), ("auth", "jwt_private_key"), ("auth", "keyring"),
               ("decoy", "dir"), ("e2e", "key")],
    "client": [("client", "token_file"), ("client", "ca_file"), ("client", "users_file")],
}

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")


# --- value parsers (also used by other modules) -----------------------------

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
    parts.port  # raises ValueError on a bad port
    if parts.fragment:
        raise ValueError("URL must not have a #fragment")
    return parts


# --- custom configspec checks -----------------------------------------------

class _Invalid(ValidateError):
    """A custom check failed; the message is the reason shown to the user."""


def _check_str(value):
    if not isinstance(value, str):
        raise VdtTypeError(value)
    return value


def _check_hostport(value, *args, **kwargs):
    try:
        parse_hostport(_check_str(value))
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    return value.strip()


def _check_url_path(value, *args, **kwargs):
    if not _check_str(value).startswith("/"):
        raise _Invalid('path must start with "/"')
    return value


def _check_ws_url(value, *args, **kwargs):
    try:
        _parse_url(_check_str(value), ("ws", "wss"))
    except ValueError as exc:
        raise _Invalid("%s (e.g. wss://host/ or ws://host:8080/path)" % exc) from None
    return value


def _check_proxy_url(value, *args, **kwargs):
    if _check_str(value) == "":
        return value
    try:
        parts = _parse_url(value, ("socks5", "socks5h", "http"))
    except ValueError as exc:
        raise _Invalid("%s (e.g. socks5://host:1080 or http://host:3128)" % exc) from None
    if parts.port is None:
        raise _Invalid("upstream proxy URL needs a port")
    if parts.username is not None or parts.path not in ("", "/") or parts.query:
        raise _Invalid("upstream proxy URL must be scheme://host:port only")
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
        raise _Invalid("pin must be sha256//<base64 of 32 bytes> (see afb keygen)")
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
        raise _Invalid(str(exc)) from None
    return value


_COOKIE_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}$")


def _check_cookie_name(value, *args, **kwargs):
    """An HTTP cookie name (an RFC 6265 token: no spaces, '=', ';', quotes)."""
    if not _COOKIE_NAME_RE.match(_check_str(value)):
        raise _Invalid('bad cookie name "%s" (letters, digits and !#$%%&\'*+-.^_`|~)' % value)
    return value


def _check_duration(value, *args, **kwargs):
    """Seconds (int >= 0) from 3600, 3600s, 15m, 12h, 7d or 2w."""
    from afb.policy.auth import parse_ttl

    try:
        return parse_ttl(_check_str(value), allow_zero=True)
    except ValueError:
        raise _Invalid('bad duration "%s" (use e.g. 0, 3600, 15m, 12h, 7d)' % value) from None


def _check_e2e_public_key(value, *args, **kwargs):
    """Empty (E2E off) or the server's X25519 public key: base64 of 32 bytes."""
    if _check_str(value).strip() == "":
        return ""
    from afb.codec.aead import parse_public_key

    try:
        parse_public_key(value)
    except ConfigError:
        raise _Invalid("must be the base64 X25519 public key printed by afb keygen as "
                       "\"e2e public key\" (32 bytes, 44 characters), or empty") from None
    return value.strip()


def _check_cipher_list(value, *args, **kwargs):
    """A string_list of E2E cipher names (aes-256-gcm, chacha20-poly1305), not empty."""
    from afb.codec.aead import CIPHER_NAMES, cipher_id

    value = _check_string_list(value, *args, **kwargs)
    if not value:
        raise _Invalid("name at least one cipher: %s" % ", ".join(CIPHER_NAMES.values()))
    for name in value:
        try:
            cipher_id(name)
        except ConfigError:
            raise _Invalid('unknown cipher "%s" (use %s)' % (
                name, " or ".join(CIPHER_NAMES.values()))) from None
    return value


def make_validator():
    return Validator({
        "hostport": _check_hostport,
        "url_path": _check_url_path,
        "ws_url": _check_ws_url,
        "proxy_url": _check_proxy_url,
        "spki_pin": _check_spki_pin,
        "string_list": _check_string_list,
        "duration": _check_duration,
        "cidr_list": _check_cidr_list,
        "cookie_name": _check_cookie_name,
        "e2e_public_key": _check_e2e_public_key,
        "cipher_list": _check_cipher_list,
    })


# --- error reporting ---------------------------------------------------------

_SECTION_RE = re.compile(r"""^\s*(\[+)\s*(["']?)(.*?)\2\s*\]+\s*(#.*)?$""")
_KEY_RE = re.compile(r"""^\s*(["']?)([^=#]+?)\1\s*=""")


def _line_index(path):
    """Map ``(section_path_tuple, name)`` -> first line number (1-based).

    ``name`` is a key inside the section, or a subsection's name (its header).
    """
    index, current = {}, []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return index
    for number, line in enumerate(lines, 1):
        match = _SECTION_RE.match(line)
        if match:
            depth = len(match.group(1))
            current = current[:depth - 1] + [match.group(3)]
            index.setdefault((tuple(current[:-1]), current[-1]), number)
            continue
        match = _KEY_RE.match(line)
        if match:
            index.setdefault((tuple(current), match.group(2)), number)
    return index


def _spec_arg(spec, name):
    match = re.search(r"\b%s\s*=\s*([^,)]+)" % name, spec or "")
    return match.group(1).strip() if match else "?"


def _reason(error, raw, spec):
    """A short human reason for one validation failure."""
    if error is False or isinstance(error, VdtMissingValue):
        return "missing required value"
    if isinstance(error, _Invalid):
        return str(error)
    shown = ", ".join(raw) if isinstance(raw, list) else raw
    if isinstance(error, VdtValueTooSmallError):
        return 'value "%s" is too small (min %s)' % (shown, _spec_arg(spec, "min"))
    if isinstance(error, VdtValueTooBigError):
        return 'value "%s" is too big (max %s)' % (shown, _spec_arg(spec, "max"))
    kind = (spec or "").split("(", 1)[0].strip()
    if isinstance(error, VdtTypeError):
        if isinstance(raw, list):
            return 'value "%s" is a list, expected a single %s (quote it if it holds a comma)' % (shown, kind)
        return 'value "%s" is not a valid %s' % (shown, kind)
    if kind == "option":
        choices = re.findall(r"""['"]([^'"]+)['"]""", spec.split("default=")[0])
        return 'value "%s" is not one of: %s' % (shown, ", ".join(choices))
    return 'value "%s" is invalid' % (shown,)


class _Report:
    """Collects error lines in the ``file:line: [section] key: reason`` form."""

    def __init__(self, path):
        self.path = path
        self.index = _line_index(path)
        self.errors = []  # (line or 0, text)

    def add(self, section, key, reason, line=None):
        if line is None:
            line = self.index.get((tuple(section), key))
        where = "%s:%d" % (self.path, line) if line else self.path
        label = "[%s] %s" % ("][".join(section), key) if section else key
        self.errors.append((line or 1 << 30, "%s: %s: %s" % (where, label, reason)))

    def lines(self):
        return [text for _, text in sorted(self.errors, key=lambda e: e[0])]


def _parse_errors(path, exc):
    errors = getattr(exc, "errors", None) or [exc]
    out = []
    for err in errors:
        msg = re.sub(r"\s+at line \d+\.?$", "", str(err)).rstrip(".")
        line = getattr(err, "line_number", None)
        out.append("%s:%d: %s" % (path, line, msg) if line else "%s: %s" % (path, msg))
    return out


# --- loading -----------------------------------------------------------------

def _read(path, configspec=None):
    try:
        return ConfigObj(path, configspec=configspec, file_error=True,
                         interpolation=False, encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or ("file not found" if not os.path.exists(path) else str(exc))
        raise ConfigError("cannot read %s: %s" % (path, reason),
                          errors=["%s: cannot read: %s" % (path, reason)]) from None
    except ConfigObjError as exc:
        lines = _parse_errors(path, exc)
        raise ConfigError("%s: syntax error" % path, errors=lines) from None
    except UnicodeDecodeError as exc:
        raise ConfigError("%s: not UTF-8" % path, errors=["%s: not UTF-8 text: %s" % (path, exc)]) from None


def _cross_checks(cfg, role, report):
    if role == "client":
        c = cfg["client"]
        if bool(c["token"]) == bool(c["token_file"]):
            which = "token" if c["token"] else "token_file"
            report.add(["client"], which, "set exactly one of token and token_file",
                       line=report.index.get((("client",), which))
                       or report.index.get(((), "client")))
        t = cfg["tunnel"]
        if t["reconnect_min"] > t["reconnect_max"]:
            report.add(["tunnel"], "reconnect_min", "must not exceed reconnect_max (%s)"
                       % t["reconnect_max"])


def _resolve_paths(cfg, role, base):
    for section, key in PATH_KEYS[role]:
        value = cfg[section][key]
        if value:
            value = os.path.expanduser(value)
            cfg[section][key] = os.path.normpath(os.path.join(base, value))


def load_config(path, role):
    """Read, validate and complete the config file ``path`` for ``role``."""
    if role not in ROLES:
        raise ValueError("role must be one of %s" % (ROLES,))
    spec = os.path.join(SPEC_DIR, role + ".spec")
    cfg = _read(path, configspec=spec)
    report = _Report(path)
    results = cfg.validate(make_validator(), preserve_errors=True)
    if results is not True:
        for section, key, error in flatten_errors(cfg, results):
            if key is None:  # configobj creates missing sections, so a key hides it
                section, key = section[:-1], section[-1]
            parent = cfg
            for name in section:
                parent = parent[name]
            specsec = cfg.configspec
            for name in section:
                specsec = specsec[name]
            spec = specsec.get(key)
            if isinstance(spec, dict):
                report.add(section, key, "must be a [%s] section, not a key" % key)
            else:
                report.add(section, key, _reason(error, parent.get(key), spec))
    for section, name in get_extra_values(cfg):
        parent = cfg
        for part in section:
            parent = parent[part]
        if isinstance(parent[name], dict):
            report.add(list(section), "[%s]" % name if not section else name, "unknown section",
                       line=report.index.get((section, name)))
        else:
            report.add(list(section), name, "unknown key")
    if not report.errors:
        _cross_checks(cfg, role, report)
    if report.errors:
        lines = report.lines()
        raise ConfigError("%s: %d error(s) in %s configuration" % (path, len(lines), role),
                          errors=lines)
    _resolve_paths(cfg, role, os.path.dirname(os.path.abspath(path)))
    return cfg


def guess_role(path):
    """``'server'`` or ``'client'`` from the file's sections; ConfigError otherwise."""
    cfg = _read(path)
    found = [r for r in ROLES if r in cfg]
    if len(found) != 1:
        msg = ("%s: cannot tell whether this is a server or a client config "
               "(expected one [server] or [client] section; use --role)" % path)
        raise ConfigError(msg, errors=[msg])
    return found[0]


def check_config(path, role=None):
    """Every problem of the config file ``path`` as a list of lines (empty if OK)."""
    try:
        load_config(path, role or guess_role(path))
    except ConfigError as exc:
        return exc.errors or [str(exc)]
    return []
