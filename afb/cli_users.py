"""``afb user limit`` / ``afb user limits``: per-user bandwidth limits in the state store.

Loaded by :mod:`afb.cli` when ``user`` runs; never imports gevent.  The
limits are rows of the server's state store (``[server] state_dir`` of the
server config, as ``afb token list`` finds it), which the server reads at
start and on SIGHUP (see :mod:`afb.transport.shaper` for why the store and
not a token claim).  Unset values fall back to the config's ``[qos]``.
"""

import argparse

from afb.cli_common import DEFAULT_SERVER_CONF, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, _err, _load
from afb.state import STORE_ERRORS


def rate_argument(text):
    """argparse type of ``--down`` / ``--up``: a rate (10M, 500K, 80Mbit; 0 = unlimited)."""
    from afb.config_values import parse_rate  # configobj: only when the command runs

    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def weight_argument(text):
    try:
        weight = float(text)
    except ValueError:
        weight = 0
    if not 0 < weight <= 1000:
        raise argparse.ArgumentTypeError("weight must be a number above 0, at most 1000")
    return weight


def _rate(value):
    if value is None:
        return "default"
    if not value:
        return "unlimited"
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return "%g%s" % (round(value / size, 3), unit)
    return "%g" % value


def _store(args):
    from afb.state import describe_store, open_store

    cfg = _load(args.config or DEFAULT_SERVER_CONF, "server")
    if cfg is None:
        return None, EXIT_CONFIG
    try:
        return open_store(cfg, create=True), EXIT_OK
    except (OSError, *STORE_ERRORS) as exc:
        _err("afb user: %s: %s" % (describe_store(cfg), exc))
        return None, EXIT_FAILURE


def cmd_user_limit(args):
    if args.clear and (args.down is not None or args.up is not None or args.weight is not None):
        _err("afb user limit: --clear takes no other limit")
        return EXIT_CONFIG
    if not args.clear and args.down is None and args.up is None and args.weight is None:
        _err("afb user limit: give --down, --up, --weight or --clear")
        return EXIT_CONFIG
    store, status = _store(args)
    if store is None:
        return status
    try:
        if args.clear:
            had = store.clear_user_limits(args.user)
            print("%s: %s" % (args.user, "back to the [qos] defaults" if had else
                              "had no limits of its own"))
        else:
            store.set_user_limits(args.user, rate_down=args.down, rate_up=args.up,
                                  weight=args.weight)
            row = store.user_limits()[args.user]
            print("%s: down %s, up %s, weight %g" % (args.user, _rate(row["rate_down"]),
                                                     _rate(row["rate_up"]), row["weight"] or 1))
    except STORE_ERRORS as exc:
        _err("afb user limit: state store: %s" % exc)
        return EXIT_FAILURE
    finally:
        store.close()
    print("a running server applies it on reload: systemctl reload afb-server (SIGHUP)")
    return EXIT_OK


def cmd_user_limits(args):
    store, status = _store(args)
    if store is None:
        return status
    try:
        rows = store.user_limits()
    except STORE_ERRORS as exc:
        _err("afb user limits: state store: %s" % exc)
        return EXIT_FAILURE
    finally:
        store.close()
    print("%-24s %10s %10s %6s" % ("USER", "DOWN", "UP", "WEIGHT"))
    for user, row in rows.items():
        print("%-24s %10s %10s %6s" % (user, _rate(row["rate_down"]), _rate(row["rate_up"]),
                                       "%g" % (row["weight"] or 1)))
    return EXIT_OK


def add_parser(sub):
    """The ``user`` subcommand on ``sub`` (argparse subparsers)."""
    p = sub.add_parser("user", help="per-user bandwidth limits (server)")
    usub = p.add_subparsers(dest="user_command", metavar="ACTION")
    u = usub.add_parser("limit", help="set (or --clear) one user's limits; SIGHUP applies them")
    u.add_argument("user", help="user name (token subject)")
    u.add_argument("--down", type=rate_argument, metavar="RATE",
                   help="bytes/s towards the user: 10M, 500K, 80Mbit; 0 = unlimited")
    u.add_argument("--up", type=rate_argument, metavar="RATE", help="bytes/s from the user")
    u.add_argument("--weight", type=weight_argument,
                   help="share of [qos] max_down/max_up against other users (default 1)")
    u.add_argument("--clear", action="store_true", help="back to the [qos] defaults")
    u.add_argument("-c", "--config", help="server config (default %s)" % DEFAULT_SERVER_CONF)
    u.set_defaults(func=cmd_user_limit)
    u = usub.add_parser("limits", help="list the users with limits of their own")
    u.add_argument("-c", "--config", help="server config (default %s)" % DEFAULT_SERVER_CONF)
    u.set_defaults(func=cmd_user_limits)
    return p
