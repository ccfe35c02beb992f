"""Configuration files: INI (configobj) checked against ``afb/configspec/*.spec``.

:func:`load_config` returns a validated :class:`configobj.ConfigObj` with every
default filled in and relative paths resolved against the file's directory, or
raises :class:`~afb.errors.ConfigError` whose ``errors`` hold one line per
problem, e.g.::

    conf/afb-client.conf:12: [tunnel] stream_window: value "10" is too small (min 16384)

configobj keeps no line numbers, so they are found by scanning the file for the
key inside its section (:func:`_line_index`). The value parsers and the
configspec's custom checks are in :mod:`afb.config_values`.
"""

import os
import re

from configobj import (
    ConfigObj,
    ConfigObjError,
    DuplicateError,
    flatten_errors,
    get_extra_values,
)
from configobj.validate import (
    VdtMissingValue,
    VdtTypeError,
    VdtValueTooBigError,
    VdtValueTooSmallError,
)

from afb.config_values import InvalidValue, make_validator
from afb.errors import ConfigError

ROLES = ("server", "client")
SPEC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configspec")

#: (section, key) of path values resolved against the config file's directory.
PATH_KEYS = {
    "server": [("server", "cert"), ("server", "key"), ("server", "state_dir"),
               ("auth", "jwt_public_key"), ("auth", "jwt_private_key"), ("auth", "keyring"),
               ("decoy", "dir"), ("e2e", "key"), ("server", "control_socket")],
    "client": [("client", "token_file"), ("client", "ca_file"), ("client", "users_file"),
               ("client", "control_socket")],
}
#: Path values that are words, not paths (``control_socket = off``).
_PATH_WORDS = ("off",)

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
    if isinstance(error, InvalidValue):
        return str(error)
    shown = ", ".join(raw) if isinstance(raw, list) else raw
    if isinstance(error, VdtValueTooSmallError):
        return 'value "%s" is too small (min %s)' % (shown, _spec_arg(spec, "min"))
    if isinstance(error, VdtValueTooBigError):
        return 'value "%s" is too big (max %s)' % (shown, _spec_arg(spec, "max"))
    kind = (spec or "").split("(", 1)[0].strip()
    if isinstance(error, VdtTypeError):
        if isinstance(raw, list):
            return ('value "%s" is a list, expected a single %s (quote it if it holds a comma)'
                    % (shown, kind))
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
        if line is None:      # the key's line, else its section's ([servers] [[NAME]])
            line = self.index.get((tuple(section), key)) or (
                self.index.get((tuple(section[:-1]), section[-1])) if len(section) > 1 else None)
        where = "%s:%d" % (self.path, line) if line else self.path
        label = "[%s] %s" % ("][".join(section), key) if section else key
        self.errors.append((line or 1 << 30, "%s: %s: %s" % (where, label, reason)))

    def lines(self):
        return [text for _, text in sorted(self.errors, key=lambda e: e[0])]


def _parse_errors(path, exc):
    errors = getattr(exc, "errors", None) or [exc]
    out, in_duplicate = [], False
    for err in errors:
        msg = re.sub(r"\s+at line \d+\.?$", "", str(err)).rstrip(".")
        line = getattr(err, "line_number", None)
        # Keys of a duplicate section ([servers] [[home]] twice) repeat the first's:
        # one line for the section says it all.
        if isinstance(err, DuplicateError) and msg.startswith("Duplicate section"):
            in_duplicate = line
        elif in_duplicate and isinstance(err, DuplicateError) and line \
                and not _section_between(path, in_duplicate, line):
            continue
        else:
            in_duplicate = False
        out.append("%s:%d: %s" % (path, line, msg) if line else "%s: %s" % (path, msg))
    return out


def _section_between(path, first, last):
    """Whether a section header starts between lines ``first`` and ``last`` (excluded)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = fh.read().splitlines()[first:last - 1]
    return any(_SECTION_RE.match(line) for line in lines)


# --- loading -----------------------------------------------------------------

def _read(path, configspec=None):
    try:
        return ConfigObj(path, configspec=configspec, file_error=True,
                         interpolation=False, encoding="utf-8")
    except OSError as exc:
        if os.path.isdir(path):
            reason = "it is a folder; name the config file in it"
        elif os.path.exists(path) and not os.path.isfile(path):
            reason = "not a regular file"
        else:
            reason = exc.strerror or ("file not found" if not os.path.exists(path) else str(exc))
        raise ConfigError("cannot read %s: %s" % (path, reason),
                          errors=["%s: cannot read: %s" % (path, reason)]) from None
    except ConfigObjError as exc:
        lines = _parse_errors(path, exc)
        raise ConfigError("%s: syntax error" % path, errors=lines) from None
    except UnicodeDecodeError as exc:
        raise ConfigError("%s: not UTF-8" % path,
                          errors=["%s: not UTF-8 text: %s" % (path, exc)]) from None


def _server_choice(cfg, report):
    """Exactly one of ``[client] server`` and ``[servers]`` subsections (checked even
    when other values are bad: nothing else can be said without a server)."""
    if not (isinstance(cfg["client"], dict) and isinstance(cfg["servers"], dict)):
        return          # "client = x" at the top: reported as "must be a [client] section"
    server, listed = cfg["client"].get("server"), cfg["servers"].sections
    if server is None and not listed:
        report.add(["client"], "server", "missing required value (or list servers in "
                   "[servers], one [[NAME]] subsection each)")
    elif server is not None and listed:
        report.add(["client"], "server", "set either this or the servers of [servers] (%s), "
                   "not both: delete this line to use the list" % ", ".join(listed))


def _client_tokens(cfg, report):
    """Each server gets exactly one of token and token_file: its own, else [client]'s."""
    c = cfg["client"]
    servers = cfg["servers"]
    inherit = not servers.sections or any(
        not (servers[name]["token"] or servers[name]["token_file"]) for name in servers.sections)
    if (c["token"] and c["token_file"]) or (inherit and not (c["token"] or c["token_file"])):
        which = "token" if c["token"] else "token_file"
        report.add(["client"], which, "set exactly one of token and token_file",
                   line=report.index.get((("client",), which))
                   or report.index.get(((), "client")))
    for name in servers.sections:
        if servers[name]["token"] and servers[name]["token_file"]:
            report.add(["servers", name], "token", "set at most one of token and token_file "
                       "(none: those of [client])")


def _cross_checks(cfg, role, report):
    if role == "server":
        _acl_migration(cfg["acl"], report)
        if cfg["server"]["proxy_protocol"] and not cfg["access"]["trusted_proxies"]:
            report.add(["server"], "proxy_protocol", "on, but [access] trusted_proxies is empty: "
                       "list the load balancers that send PROXY headers (e.g. 127.0.0.1)")
    if role == "client":
        _client_tokens(cfg, report)
        t = cfg["tunnel"]
        if t["reconnect_min"] > t["reconnect_max"]:
            report.add(["tunnel"], "reconnect_min", "must not exceed reconnect_max (%s)"
                       % t["reconnect_max"])


def _acl_migration(acl, report):
    """``[acl] allow`` entries written when allow meant "also these private destinations".

    allow now lists the only destinations users may reach and never opens a
    private one, so such an entry would silently refuse everything: refuse
    the config and name the key it belongs in.
    """
    from afb.policy.acl import private_only
    from afb.policy.acl_rules import parse_rule

    if acl["allow_private"]:
        return
    for entry in acl["allow"]:
        reason = private_only(parse_rule(entry))
        if reason:
            report.add(["acl"], "allow", "%s only names %s addresses, which allow never opens: "
                       "allow now lists the only destinations users may reach; move it to "
                       "allow_private_to (and empty allow unless users should reach nothing "
                       "else)" % (entry, reason))


def _resolve_paths(cfg, role, base):
    places = [(cfg[section], key) for section, key in PATH_KEYS[role]]
    if role == "client":
        places += [(cfg["servers"][name], key) for name in cfg["servers"].sections
                   for key in ("token_file", "ca_file")]
    for section, key in places:
        value = section[key]
        if value and value not in _PATH_WORDS:
            value = os.path.expanduser(value)
            section[key] = os.path.normpath(os.path.join(base, value))


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
            for name in section:       # a [servers] [[NAME]] is checked by [[__many__]]
                specsec = specsec[name] if name in specsec else specsec["__many__"]
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
    if role == "client":
        _server_choice(cfg, report)
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


def _startup_lines(path, cfg, role):
    from afb.file_checks import startup_problems

    report = _Report(path)
    for section, key, problem in startup_problems(cfg, role):
        report.add(section.split("]["), key, problem)      # "servers][NAME": a subsection
    return report.lines()


def load_for_start(path, role, remap=None):
    """:func:`load_config`, then every check the daemon makes before it starts.

    ConfigError lists every problem, the file's and those of the files it
    names (:func:`afb.file_checks.startup_problems`), each with the line of
    its key where the file has one.  ``remap(cfg, role)``, if given, may change
    the loaded config's paths before the files are checked: ``afb config
    restore`` checks a config unpacked in a staging folder against the files
    unpacked beside it, not those of ``/etc/afb``.
    """
    cfg = load_config(path, role)
    if remap is not None:
        remap(cfg, role)
    lines = _startup_lines(path, cfg, role)
    if lines:
        raise ConfigError("%s: %d problem(s) that stop afb %s" % (path, len(lines), role),
                          errors=lines)
    return cfg


def check_config(path, role=None, remap=None):
    """Every problem of the config file ``path`` as a list of lines (empty if OK).

    The lines ``afb ROLE -c PATH`` would refuse to start with
    (:func:`load_for_start`, ``remap`` as there); ``role`` is guessed from
    the file's sections when None.
    """
    try:
        load_for_start(path, role or guess_role(path), remap=remap)
    except ConfigError as exc:
        return exc.errors or [str(exc)]
    return []
