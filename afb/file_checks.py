"""The files a daemon refuses to start with, checked without starting it.

``afb client`` checks its token, users and CA files before it starts (and a
config that holds the token inline); ``afb server`` its TLS and E2E keys and
what verifies tokens (the JWT key ring and the files it names, or the single
public key).  ``afb config check`` runs the same checks through
:func:`file_problems`, so that an operator hears about a file others can
write, or read, before the service refuses to start.  A file that does not
exist (yet) is left to the daemon: the shipped example configs name
``/etc/afb/...`` files that a fresh machine does not have.

Each check is a ``(section, key, path, check)`` row; ``check(path)`` raises
:class:`~afb.errors.ConfigError` (or OSError / ValueError) with one line
that says what is wrong and how to fix it.
"""

import os
import stat

from afb.errors import ConfigError
from afb.file_trust import check_secret_file, check_trusted_file


def check_inline_token_config(path):
    """A config that holds a token inline is a secret file: 0600, or a token_file."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        msg = ("client config %s holds the token inline ([client] token) and has mode %04o: "
               "group or others can read it; fix: use token_file, or chmod 600 %s"
               % (path, mode, path))
        raise ConfigError(msg, errors=[msg])


def client_file_checks(cfg):
    """The ``(section, key, path, check)`` rows of a client config."""
    client = cfg["client"]
    rows = []
    if client["token_file"]:
        rows.append(("client", "token_file", client["token_file"],
                     lambda path: check_secret_file(path, "token file")))
    if client["token"] and getattr(cfg, "filename", None):
        rows.append(("client", "token", cfg.filename, check_inline_token_config))
    if client["users_file"]:
        rows.append(("client", "users_file", client["users_file"],
                     lambda path: check_trusted_file(path, "users file", secret=True)))
    if client["ca_file"]:     # whoever may write it may add a CA that signs their server
        rows.append(("client", "ca_file", client["ca_file"],
                     lambda path: check_trusted_file(path, "CA file")))
    return rows


def server_file_checks(cfg):
    """The ``(section, key, path, check)`` rows of a server config (what TunnelServer checks)."""
    from afb.policy.keyring import keyring_path, make_verifier

    server, auth, e2e = cfg["server"], cfg["auth"], cfg["e2e"]
    rows = []
    if server["tls"]:
        rows.append(("server", "key", server["key"],
                     lambda path: check_secret_file(path, "TLS private key")))
    if e2e["mode"] != "off":
        rows.append(("e2e", "key", e2e["key"],
                     lambda path: check_secret_file(
                         path, "E2E private key ([e2e] key; made by afb keygen)")))
    ring = keyring_path(cfg)
    if ring:
        where = ("keyring", ring)
    elif auth["algorithm"] == "HS256":
        where = ("jwt_private_key", auth["jwt_private_key"])
    else:
        where = ("jwt_public_key", auth["jwt_public_key"])
    rows.append(("auth",) + where + (lambda _path: make_verifier(cfg),))
    return rows


def run_file_checks(rows):
    """The daemons' form: raise the first problem."""
    for _section, _key, path, check in rows:
        check(path)


def file_problems(cfg, role):
    """``[(section, key, message)]`` of the files that exist; for ``afb config check``."""
    rows = server_file_checks(cfg) if role == "server" else client_file_checks(cfg)
    problems = []
    for section, key, path, check in rows:
        if not os.path.exists(path):
            continue
        try:
            check(path)
        except (ConfigError, OSError, ValueError) as exc:
            problems.append((section, key, str(exc)))
    return problems
