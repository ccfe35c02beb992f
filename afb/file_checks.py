"""What a daemon refuses to start with, checked without starting anything.

``afb server`` and ``afb client`` load their config with
:func:`afb.config.load_for_start`, which runs these checks after the
config's own (syntax, values, cross-field rules) and refuses to start on
any problem; ``afb config check`` prints the very same lines
(:func:`startup_problems`), so the two cannot drift apart.  Every check is
a row ``(section, key, path, check)``: ``check(path)`` raises
:class:`~afb.errors.ConfigError` (or OSError / ValueError) with one line
that says what is wrong and how to fix it, and a ``path`` that does not
exist gets a line of its own, with the command that makes it.  Nothing is
created, started or bound.

* server: the TLS key (0600) and certificate (readable, one pair), the
  state folder (writable, or creatable; an existing store is SQLite), what
  verifies tokens (the JWT key ring and the files it names, or the single
  public key or HS256 secret), the E2E key (0600, an X25519 key), the
  decoy folder, ``[acl] allow`` entries naming one of the host's addresses;
* client: the server URL (not the example's placeholder), the token file
  (0600, not empty, a JWT) or a config holding the token inline (0600),
  the users file and the CA file (trusted, readable, well formed);
* both: ``[alerts] alert_command``'s program (found, executable).

``afb client`` also runs the client rows itself
(:func:`run_file_checks`, first problem raised), as ``afb server``'s
constructor makes the same checks on its own files.
"""

import os
import stat

from afb.errors import ConfigError
from afb.file_trust import check_secret_file, check_trusted_file

#: The host of the shipped client config's ``server`` URL, to be replaced.
PLACEHOLDER_HOST = "your.server.example"
#: The first bytes of an SQLite 3 database file.
SQLITE_MAGIC = b"SQLite format 3\0"


def _refuse(msg):
    return ConfigError(msg, errors=[msg])


def check_inline_token_config(path):
    """A config that holds a token inline is a secret file: 0600, or a token_file."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise _refuse("client config %s holds the token inline ([client] token) and has mode "
                      "%04o: group or others can read it; fix: use token_file, or chmod 600 %s"
                      % (path, mode, path))


def check_token_text(token, where):
    """A token must be a JWT: three base64url parts separated by dots."""
    if not token:
        raise _refuse("%s is empty; put the user's token in it (afb token issue on the server)"
                      % where)
    if token.count(".") != 2 or any(ch.isspace() for ch in token):
        raise _refuse("%s does not hold a token (expected a JWT: three parts separated by "
                      "dots, as afb token issue prints)" % where)


def check_token_file(path):
    check_secret_file(path, "token file")
    with open(path, encoding="ascii", errors="replace") as handle:
        check_token_text(handle.read().strip(), "token file %s" % path)


def check_server_url(url):
    """The shipped example's placeholder host left in ``[client] server``."""
    from urllib.parse import urlsplit

    if (urlsplit(url).hostname or "").lower() == PLACEHOLDER_HOST:
        raise _refuse("%s is the example's placeholder: set the URL of your afb server, "
                      "wss://HOST[:PORT]/PATH with the PATH of its [server] path" % url)


def check_users_file(path):
    from afb.policy.proxy_users import ProxyUsers

    check_trusted_file(path, "users file", secret=True)
    ProxyUsers.from_file(path)


def check_ca_file(path):
    import ssl

    check_trusted_file(path, "CA file")
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError:
        raise _refuse("CA file %s holds no PEM certificate" % path) from None


def _load_private_key(path):
    from cryptography.hazmat.primitives import serialization

    with open(path, "rb") as handle:
        try:
            return serialization.load_pem_private_key(handle.read(), None)
        except (ValueError, TypeError):
            raise _refuse("TLS private key %s is not an unencrypted PEM private key; fix: "
                          "point key at the key of the certificate" % path) from None


def check_tls_key(path):
    check_secret_file(path, "TLS private key")
    _load_private_key(path)


def check_cert_pair(cert, key):
    """The certificate loads, as the server's TLS context loads it, with its key."""
    import ssl

    from cryptography import x509

    with open(cert, "rb") as handle:
        try:
            x509.load_pem_x509_certificate(handle.read())
        except ValueError:
            raise _refuse("TLS certificate %s is not a PEM certificate" % cert) from None
    try:
        _load_private_key(key)
    except (ConfigError, OSError):
        return                      # the key's own row says what is wrong with it
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise _refuse("TLS certificate %s and key %s are not one pair; fix: point cert and "
                          "key at the files of one pair (afb keygen makes one)"
                          % (cert, key)) from None
        raise _refuse("TLS certificate %s / key %s: %s" % (cert, key, exc)) from None


def check_state_dir(directory):
    """Writable, or creatable (nothing is created); an existing store is an SQLite file."""
    from afb.state import store_path

    if os.path.isdir(directory):
        if not os.access(directory, os.W_OK | os.X_OK):
            raise _refuse("state folder %s is not writable; fix: chown it to the user afb runs "
                          "as, or choose another" % directory)
        store = store_path(directory)
        if os.path.isfile(store) and os.path.getsize(store):
            with open(store, "rb") as handle:
                if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                    raise _refuse("state store %s is not an SQLite database; fix: move it "
                                  "away (afb makes a new, empty one)" % store)
        return
    if os.path.lexists(directory):
        raise _refuse("state folder %s is not a folder" % directory)
    parent = os.path.dirname(os.path.abspath(directory))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise _refuse("state folder %s cannot be created: %s is not a writable folder; fix: "
                      "create it for the user afb runs as, or choose another"
                      % (directory, parent))


def check_e2e_key(path):
    from afb import keys  # cryptography: only when there is a key to check

    check_secret_file(path, "E2E private key ([e2e] key; made by afb keygen)")
    keys.load_static_key(path)


def check_site_dir(path):
    if not os.path.isdir(path) or not os.access(path, os.R_OK | os.X_OK):
        raise _refuse("decoy folder %s is not a folder afb can read; fix the path, or leave "
                      "[decoy] dir empty for the built-in site" % path)


def check_allow_names_no_own_address(entries):
    """An ``[acl] allow`` entry naming one of this host's addresses (how its other ports
    were opened before allow meant "only these"): now it would refuse everything."""
    from afb.host_addresses import interface_addresses
    from afb.policy.acl import classify_address
    from afb.policy.acl_rules import parse_rule

    own = interface_addresses()
    for entry in entries:
        rule = parse_rule(entry)
        if rule.kind != "net" or rule.value.num_addresses != 1:
            continue
        address = rule.value.network_address
        # loopback follows allow_private, as in the ACL (and a private one is refused anyway)
        if str(address) in own and classify_address(address) not in ("loopback", "unspecified"):
            raise _refuse("%s is an address of this host, which allow never opens: allow now "
                          "lists the only destinations users may reach; to let users reach "
                          "this host's other ports, move it to allow_private_to" % entry)


def check_alert_command(command):
    """``[alerts] alert_command``'s program exists and may be run (it runs without a shell)."""
    import shutil

    from afb.config_values import split_command

    program = split_command(command)[0]
    if "/" not in program:
        if shutil.which(program) is None:
            raise _refuse("%s is not found in PATH (%s); give its full path" % (
                program, os.environ.get("PATH", "")))
        return
    if not os.path.isfile(program):
        raise _refuse("%s does not exist or is not a file" % program)
    if not os.access(program, os.X_OK):
        raise _refuse("%s is not executable; fix: chmod +x %s" % (program, program))


def _alert_rows(cfg):
    command = cfg["alerts"]["alert_command"] if "alerts" in cfg else ""
    if not command.strip():
        return []
    return [("alerts", "alert_command", None, lambda _path: check_alert_command(command))]


def client_file_checks(cfg):
    """The ``(section, key, path, check)`` rows of a client config."""
    client = cfg["client"]
    rows = []
    if client.get("server") is not None:
        rows.append(("client", "server", None, lambda _path: check_server_url(client["server"])))
    rows += _token_rows(cfg, "client", client)
    if client["users_file"]:
        rows.append(("client", "users_file", client["users_file"], check_users_file))
    if client["ca_file"]:     # whoever may write it may add a CA that signs their server
        rows.append(("client", "ca_file", client["ca_file"], check_ca_file))
    servers = cfg["servers"] if "servers" in cfg else {}
    for name in getattr(servers, "sections", ()):     # [servers] [[NAME]]
        entry, where = servers[name], "servers][" + name
        rows.append((where, "url", None, lambda _path, url=entry["url"]: check_server_url(url)))
        rows += _token_rows(cfg, where, entry)
        if entry["ca_file"]:
            rows.append((where, "ca_file", entry["ca_file"], check_ca_file))
    return rows + _alert_rows(cfg)


def _token_rows(cfg, where, section):
    """The checks of the token or token file of ``section`` ([client], a server's)."""
    rows = []
    if section["token_file"]:
        rows.append((where, "token_file", section["token_file"], check_token_file))
    if section["token"]:
        rows.append((where, "token", None, lambda _path: check_token_text(
            section["token"], "[%s] token" % where)))
        if getattr(cfg, "filename", None):
            rows.append((where, "token", cfg.filename, check_inline_token_config))
    return rows


def server_file_checks(cfg):
    """The ``(section, key, path, check)`` rows of a server config."""
    from afb.policy.keyring import keyring_path, make_verifier

    server, auth, e2e = cfg["server"], cfg["auth"], cfg["e2e"]
    rows = []
    if server["tls"]:
        rows.append(("server", "key", server["key"], check_tls_key))
        rows.append(("server", "cert", server["cert"],
                     lambda path: check_cert_pair(path, server["key"])))
    rows.append(("server", "state_dir", None, lambda _path: check_state_dir(server["state_dir"])))
    ring = keyring_path(cfg)
    if ring:
        where = ("keyring", ring)
    elif auth["algorithm"] == "HS256":
        where = ("jwt_private_key", auth["jwt_private_key"])
    else:
        where = ("jwt_public_key", auth["jwt_public_key"])
    rows.append(("auth",) + where + (lambda _path: make_verifier(cfg),))
    if e2e["mode"] != "off":
        rows.append(("e2e", "key", e2e["key"], check_e2e_key))
    if cfg["decoy"]["dir"]:
        rows.append(("decoy", "dir", None, lambda _path: check_site_dir(cfg["decoy"]["dir"])))
    if cfg["acl"]["allow"]:
        rows.append(("acl", "allow", None,
                     lambda _path: check_allow_names_no_own_address(cfg["acl"]["allow"])))
    return rows + _alert_rows(cfg)


def run_file_checks(rows):
    """The daemons' form: raise the first problem."""
    for _section, _key, path, check in rows:
        check(path)


#: How to make a missing file, by (section, key); %s is the file.
_MAKE = {
    ("client", "token_file"): "put the user's token there: on the server, afb token issue "
                              "--sub NAME --out NAME.token; here, install -m 600 NAME.token %s",
}
_KEYGEN = "make it with afb keygen --dir %s, or fix the path"


def startup_problems(cfg, role):
    """``[(section, key, message)]``: every problem ``afb ROLE`` would refuse to start with."""
    rows = server_file_checks(cfg) if role == "server" else client_file_checks(cfg)
    problems = []
    for section, key, path, check in rows:
        if path is not None and not os.path.lexists(path):
            make = _MAKE.get(("client" if section.startswith("servers]") else section, key))
            fix = make % path if make else (
                _KEYGEN % os.path.dirname(path) if role == "server" else "fix the path")
            problems.append((section, key, "%s does not exist; %s" % (path, fix)))
            continue
        try:
            check(path)
        except (ConfigError, OSError, ValueError) as exc:
            problems.append((section, key, str(exc)))
    return problems
