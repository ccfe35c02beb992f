"""The ``afb`` command line: argument parsing and the small administrative commands.

:mod:`afb.entry` patches gevent first for ``server``, ``client`` and ``demo``;
this module never imports gevent and loads the daemons lazily.
"""

import argparse
import sys
import time

import afb
from afb.errors import ConfigError

DEFAULT_SERVER_CONF = "/etc/afb/server.conf"
DEFAULT_CLIENT_CONF = "/etc/afb/client.conf"
DEFAULT_KEY_DIR = "/etc/afb"

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _err(*lines):
    for line in lines:
        print(line, file=sys.stderr)


def _load(path, role):
    """The validated config, or None after printing every error line."""
    from afb.config import load_config

    try:
        return load_config(path, role)
    except ConfigError as exc:
        _err(*(exc.errors or [str(exc)]))
        return None


def cmd_server(args):
    cfg = _load(args.config, "server")
    if cfg is None:
        return EXIT_CONFIG
    from afb import logsetup

    logsetup.configure(cfg["server"]["log_level"])
    from afb.apps.server import run_server

    return run_server(cfg)


def cmd_client(args):
    cfg = _load(args.config, "client")
    if cfg is None:
        return EXIT_CONFIG
    from afb import logsetup

    logsetup.configure(cfg["client"]["log_level"])
    from afb.apps.client import run_client

    return run_client(cfg)


def cmd_demo(args):
    from afb import logsetup

    logsetup.configure("info")
    from afb.apps.demo import run_demo

    return run_demo(args.dir)


def cmd_keygen(args):
    from afb.keys import DEFAULT_NAMES, generate_server_keys

    names = args.names or list(DEFAULT_NAMES)
    try:
        result = generate_server_keys(args.dir, names=names, days=args.days, force=args.force)
    except (OSError, ValueError) as exc:
        _err("afb keygen: %s" % exc)
        return EXIT_FAILURE
    for what in ("cert", "key", "jwt_private_key", "jwt_public_key"):
        print("%s: %s" % (what, result[what]))
    print("names: %s" % ", ".join(names))
    print("pin: %s" % result["pin"])
    return EXIT_OK


def cmd_token_issue(args):
    from afb.keys import write_secret
    from afb.policy.auth import issue_token, parse_ttl

    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as exc:
        _err("afb token issue: %s" % exc)
        return EXIT_FAILURE
    audience, issuer, key_path = "afb", "afb", args.key
    if key_path is None:
        cfg = _load(args.config or DEFAULT_SERVER_CONF, "server")
        if cfg is None:
            return EXIT_CONFIG
        key_path = cfg["auth"]["jwt_private_key"]
        audience, issuer = cfg["auth"]["audience"], cfg["auth"]["issuer"]
    audience = args.audience or audience
    issuer = args.issuer or issuer
    try:
        with open(key_path, "rb") as fh:
            pem = fh.read()
        token = issue_token(pem, args.sub, ttl, audience=audience, issuer=issuer)
        if args.out:
            write_secret(args.out, token + "\n")
    except (OSError, ValueError, TypeError) as exc:
        _err("afb token issue: %s" % exc)
        return EXIT_FAILURE
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(time.time() + ttl))
    if args.out:
        print("token for %s written to %s (expires %s)" % (args.sub, args.out, expires))
    else:
        print(token)
        _err("token for %s expires %s" % (args.sub, expires))
    return EXIT_OK


def cmd_config_check(args):
    from afb.config import check_config

    errors = check_config(args.file, args.role)
    if errors:
        print("\n".join(errors))
        return EXIT_FAILURE
    print("%s: OK" % args.file)
    return EXIT_OK


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
    p.add_argument("--dir", default=None, help="working directory (default: a temporary one)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("keygen", help="create the server's TLS key, certificate and JWT keys")
    p.add_argument("--dir", default=DEFAULT_KEY_DIR, help="output directory (default %(default)s)")
    p.add_argument("--name", dest="names", action="append", metavar="NAME",
                   help="host name or IP address for the certificate (repeatable; "
                        "default localhost, 127.0.0.1, ::1)")
    p.add_argument("--days", type=int, default=825, help="certificate lifetime (default 825)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
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
    src.add_argument("--key", help="Ed25519 private key file (instead of -c)")
    t.add_argument("--audience", help="override the audience (default from config, or afb)")
    t.add_argument("--issuer", help="override the issuer (default from config, or afb)")
    t.add_argument("--out", help="write the token to this file (mode 0600) instead of stdout")
    t.set_defaults(func=cmd_token_issue)

    p = sub.add_parser("config", help="configuration files")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    p.set_defaults(func=lambda args, parser=p: _usage(parser))
    c = csub.add_parser("check", help="validate a config file and print every error")
    c.add_argument("file")
    c.add_argument("--role", choices=("server", "client"),
                   help="file kind (default: guessed from its [server]/[client] section)")
    c.set_defaults(func=cmd_config_check)
    return parser


def _usage(parser):
    parser.print_usage(sys.stderr)
    return EXIT_CONFIG


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if not getattr(args, "func", None):
        return _usage(parser)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
