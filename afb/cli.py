"""The ``afb`` command line: argument parsing and the small administrative commands.

:mod:`afb.entry` patches gevent first for ``server``, ``client`` and ``demo``;
this module never imports gevent and loads the daemons lazily, and the
``token`` commands from :mod:`afb.cli_tokens`, ``report`` from :mod:`afb.cli_report`,
``config backup|restore`` from :mod:`afb.cli_backup`.
"""

import argparse
import os
import sys

import afb
from afb.cli_common import (
    DEFAULT_CLIENT_CONF,
    DEFAULT_DEMO_DIR,
    DEFAULT_KEY_DIR,
    DEFAULT_SERVER_CONF,
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    _err,
    _load,
    _utc,
)
from afb.errors import ConfigError


def _run_daemon(role, path):
    """Load the config, then run the daemon; a listener it cannot have ends in one line.

    ``bind``/``listen`` are the only calls on the daemons' way up that raise
    OSError out of ``run_server``/``run_client`` (every other start-up
    failure is reported there, or by the config checks before).
    """
    cfg = _load(path, role, start=True)
    if cfg is None:
        return EXIT_CONFIG
    from afb import logsetup

    logsetup.configure_from(cfg[role])
    if role == "server":
        from afb.apps.server import run_server as run
    else:
        from afb.apps.client import run_client as run
    try:
        return run(cfg)
    except OSError as exc:
        from afb.config_values import parse_hostport
        from afb.errors import listen_failure

        _err("afb %s: %s" % (role, listen_failure(role, *parse_hostport(cfg[role]["listen"]),
                                                   exc)))
        return EXIT_FAILURE


def cmd_server(args):
    return _run_daemon("server", args.config)


def cmd_client(args):
    return _run_daemon("client", args.config)


def cmd_demo(args):
    from afb import logsetup

    logsetup.configure("info")
    from afb.apps.demo import run_demo

    return run_demo(args.dir)


def cmd_tui(args):
    """The dashboard, in this process: gevent was never loaded (afb/entry.py)."""
    try:
        from tui.app import run
    except ImportError as exc:
        _err("afb tui: the dashboard needs Textual (pip install 'textual>=2.1', or the "
             "afb-tui package): %s" % exc)
        return EXIT_FAILURE
    return run(args.connect)


def cmd_keygen(args):
    from afb.keys import DEFAULT_NAMES, generate_server_keys

    if args.show:
        return _keygen_show(args)
    if args.rotate:
        return _keygen_rotate(args)
    if args.grace is not None:
        _err("afb keygen: --grace only goes with --rotate")
        return EXIT_FAILURE
    names = args.names or list(DEFAULT_NAMES)
    try:
        result = generate_server_keys(args.dir, names=names, days=args.days, force=args.force,
                                      algorithm=args.algorithm or "EdDSA")
    except (OSError, ValueError) as exc:
        _err("afb keygen: %s" % _cannot_write(args.dir, exc))
        return EXIT_FAILURE
    for what in ("cert", "key", "jwt_private_key", "jwt_public_key", "jwt_secret", "keyring",
                 "e2e_key"):
        if what in result:
            print("%s: %s" % (what, result[what]))
    print("kid: %s" % result["kid"])
    print("names: %s" % ", ".join(names))
    print("pin: %s" % result["pin"])
    print("e2e public key: %s" % result["e2e_public_key"])
    return EXIT_OK


def _cannot_write(directory, exc):
    """``cannot write the keys in DIR: read-only file system`` for an OSError of the
    system (not the temporary file's name); afb's own messages as they are."""
    if isinstance(exc, OSError) and exc.strerror:
        return "cannot write the keys in %s: %s" % (directory, exc.strerror.lower())
    return str(exc)


def _keygen_show(args):
    """The pin and the E2E public key of the keys in --dir again (clients need them)."""
    from afb.keys import show_public

    extra = [name for name, value in (("--rotate", args.rotate), ("--force", args.force),
                                      ("--name", args.names), ("--grace", args.grace),
                                      ("--algorithm", args.algorithm)) if value]
    if extra:
        _err("afb keygen --show: only reads the keys in --dir; %s does not apply"
             % ", ".join(extra))
        return EXIT_FAILURE
    try:
        shown = show_public(args.dir)
    except (OSError, ValueError, ConfigError) as exc:
        _err("afb keygen --show: %s" % exc)
        return EXIT_FAILURE
    print("cert: %s" % shown["cert"])
    print("names: %s" % ", ".join(shown["names"]))
    print("expires: %s" % _utc(shown["not_after"].timestamp()))
    print("pin: %s" % shown["pin"])
    print("e2e public key: %s" % shown["e2e_public_key"])
    return EXIT_OK


def _keygen_rotate(args):
    from afb.keys import rotate_jwt_keys
    from afb.policy.auth import parse_ttl

    if args.names or args.force:
        _err("afb keygen: --rotate makes a JWT key only; --name and --force do not apply")
        return EXIT_FAILURE
    try:
        grace = None if args.grace is None else parse_ttl(args.grace, allow_zero=True)
        result = rotate_jwt_keys(args.dir, algorithm=args.algorithm, grace=grace)
    except (OSError, ValueError) as exc:
        _err("afb keygen --rotate: %s" % _cannot_write(args.dir, exc))
        return EXIT_FAILURE
    print("new signing key: %s (%s)" % (result["kid"], result["alg"]))
    for path in result["files"]:
        print("file: %s" % path)
    for kid, until in result["retired"]:
        print("retired: %s (verifies tokens until %s)" % (
            kid, _utc(until) if until is not None else "[auth] rotation_grace after now"))
    print("keyring: %s" % result["keyring"])
    return EXIT_OK


def cmd_config_check(args):
    """Every problem the daemon would refuse to start with; no FILE: the daemons' defaults."""
    from afb.config import check_config

    if args.file:
        files = [(args.file, args.role)]
    else:
        wanted = [(path, role) for path, role in ((DEFAULT_SERVER_CONF, "server"),
                                                  (DEFAULT_CLIENT_CONF, "client"))
                  if args.role in (None, role)]
        files = [(path, role) for path, role in wanted if os.path.exists(path)]
        if not files:
            missing = [path for path, _role in wanted]
            _err("afb config check: %s; name the file to check: afb config check FILE" % (
                "neither %s nor %s exists" % tuple(missing) if len(missing) == 2
                else "%s does not exist" % missing[0]))
            return EXIT_CONFIG
    status = EXIT_OK
    for path, role in files:
        errors = check_config(path, role)
        if errors:
            print("\n".join(errors))
            status = EXIT_FAILURE
        else:
            print("%s: OK" % path)
    return status


def _days(text):
    """argparse type of ``--days``: what a certificate can hold (datetime ends in 9999)."""
    if not text.isdigit() or not 1 <= int(text) <= 36500:
        raise argparse.ArgumentTypeError("a whole number of days from 1 to 36500, not %r" % text)
    return int(text)


def _cert_name(text):
    """argparse type of ``--name``: an IP address, a host name or a ``*.`` wildcard name."""
    import ipaddress
    import re

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text[2:] if text.startswith("*.") else text
    if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$",
                    name) or len(name) > 253:
        raise argparse.ArgumentTypeError("%r is neither a host name nor an IP address" % text)
    return text


def build_parser():
    parser = argparse.ArgumentParser(
        prog="afb", description="Anti-Filter Bridge: SOCKS5/HTTP CONNECT over a WebSocket tunnel.")
    parser.add_argument("--version", action="version", version="afb %s" % afb.__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("server", help="run the tunnel server")
    p.add_argument("-c", "--config", default=DEFAULT_SERVER_CONF,
                   help="server config file (default %(default)s)")
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("client", help="run the local proxy and tunnel client")
    p.add_argument("-c", "--config", default=DEFAULT_CLIENT_CONF,
                   help="client config file (default %(default)s)")
    p.set_defaults(func=cmd_client)

    p = sub.add_parser("demo", help="server + client on loopback with generated keys")
    p.add_argument("--dir", default=None, help="folder for its keys, token and configs, reused "
                                               "on the next run (default %s)" % DEFAULT_DEMO_DIR)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tui", help="terminal dashboard of a running afb client or server",
                       description="Live connections, bandwidth, logs and alerts of a running "
                                   "afb client or server, read from its control socket.")
    p.add_argument("--connect", metavar="SOCKET",
                   help="the daemon's control socket (default: $AFB_CONTROL_SOCKET, else the "
                        "first answering *.sock in /run/afb, $XDG_RUNTIME_DIR/afb, ./demo, "
                        "%s; client.sock first)" % DEFAULT_DEMO_DIR)
    p.set_defaults(func=cmd_tui)

    p = sub.add_parser("keygen", help="create the server's TLS key, certificate, JWT keys and "
                                      "E2E key")
    p.add_argument("--dir", default=DEFAULT_KEY_DIR, help="output directory (default %(default)s)")
    p.add_argument("--name", dest="names", action="append", metavar="NAME", type=_cert_name,
                   help="host name or IP address for the certificate (repeatable; "
                        "default localhost, 127.0.0.1, ::1)")
    p.add_argument("--days", type=_days, default=365, help="certificate lifetime (default 365)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--algorithm", choices=("EdDSA", "ES256", "HS256"),
                   help="JWT key type (default EdDSA; with --rotate: that of the current key)")
    p.add_argument("--rotate", action="store_true",
                   help="only add a new JWT signing key to the key ring in --dir; the "
                        "previous one keeps verifying until its grace period ends")
    p.add_argument("--show", action="store_true",
                   help="print the pin and the E2E public key of the keys in --dir again "
                        "(what clients need); changes nothing")
    p.add_argument("--grace", metavar="TIME",
                   help="with --rotate: how long the previous key stays valid, e.g. 0, 12h, "
                        "7d (default: the server's [auth] rotation_grace)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("token", help="user tokens")
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION")
    p.set_defaults(func=lambda args, parser=p: _usage(parser))
    t = tsub.add_parser("issue", help="issue a token (JWT) for a user")
    t.add_argument("--sub", required=True, help="user name (token subject)")
    t.add_argument("--ttl", default="30d", help="lifetime: 3600, 15m, 12h, 30d (default 30d)")
    src = t.add_mutually_exclusive_group()
    src.add_argument("-c", "--config", help="server config for key path, audience and issuer "
                                            "(default %s)" % DEFAULT_SERVER_CONF)
    src.add_argument("--key", help="private key file (HS256: secret file) instead of -c; "
                                   "the token is then not recorded for `afb token list`")
    t.add_argument("--algorithm", choices=("EdDSA", "ES256", "HS256"),
                   help="with --key: the key's algorithm (default EdDSA)")
    t.add_argument("--audience", help="override the audience (default from config, or afb)")
    t.add_argument("--issuer", help="override the issuer (default from config, or afb)")
    t.add_argument("--out", help="write the token to this file (mode 0600) instead of stdout")
    t.set_defaults(func=_tokens("cmd_token_issue"))
    t = tsub.add_parser("revoke", help="revoke one token with its refreshes (--jti) or every "
                                       "token of a user (--sub)")
    what = t.add_mutually_exclusive_group(required=True)
    what.add_argument("--jti", help="token id (see afb token list): refuses that token and "
                                    "every token refreshed from the same first token")
    what.add_argument("--sub", help="user: refuse every token issued to it until now")
    t.add_argument("-c", "--config", help="server config (default %s)" % DEFAULT_SERVER_CONF)
    t.add_argument("--reason", default="", help="short note kept with the revocation")
    t.set_defaults(func=_tokens("cmd_token_revoke"))
    t = tsub.add_parser("list", help="list issued tokens and revocations")
    t.add_argument("-c", "--config", help="server config (default %s)" % DEFAULT_SERVER_CONF)
    t.set_defaults(func=_tokens("cmd_token_list"))

    from afb import cli_report

    cli_report.add_parser(sub).set_defaults(func=cli_report.cmd_report)

    from afb import cli_users

    user = cli_users.add_parser(sub)
    user.set_defaults(func=lambda args, parser=user: _usage(parser))

    p = sub.add_parser("config", help="configuration files")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    p.set_defaults(func=lambda args, parser=p: _usage(parser))
    c = csub.add_parser("check", help="print every problem the daemon would refuse to start "
                                      "with: the file's and those of the files it names")
    c.add_argument("file", nargs="?",
                   help="config file (default: %s and %s, those that exist)"
                        % (DEFAULT_SERVER_CONF, DEFAULT_CLIENT_CONF))
    c.add_argument("--role", choices=("server", "client"),
                   help="file kind (default: guessed from its [server]/[client] section)")
    c.set_defaults(func=cmd_config_check)
    from afb import cli_backup

    cli_backup.add_parsers(csub)
    return parser


def _tokens(name):
    """The token command ``name`` of :mod:`afb.cli_tokens`, imported when it runs."""
    def command(args):
        from afb import cli_tokens

        return getattr(cli_tokens, name)(args)
    return command


def _usage(parser):
    parser.print_usage(sys.stderr)
    return EXIT_CONFIG


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if not getattr(args, "func", None):
        return _usage(parser)
    try:
        status = args.func(args)
        sys.stdout.flush()      # here, where a closed pipe is still ours to report
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `afb keygen --rotate | head -1`: the reader has gone; nothing is wrong with afb.
        # Point stdout at /dev/null so that the interpreter's last flush fails no more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
