"""``afb report``: usage per user and per UTC day, from the server's state store.

Loaded by :mod:`afb.cli` when ``report`` runs; never imports gevent.  The
rows are those :mod:`afb.monitor.usage` writes (a running server adds to
them every ``report_flush`` seconds, so a report is at most that old).
The store is found as ``afb token list`` finds it: ``[server] state_dir``
of the server config (``-c``, default /etc/afb/server.conf).

Formats: ``table`` for people (sizes in decimal units, a total line),
``csv`` and ``json`` for scripts (exact integers; tunnel time in seconds).
"""

import csv
import datetime
import json
import os
import re
import sys

from afb.cli_common import DEFAULT_SERVER_CONF, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, _err, _load
from afb.state import STORE_ERRORS

FIELDS = ("day", "user", "bytes_up", "bytes_down", "streams", "peak_streams", "tunnel_seconds")
_RELATIVE_RE = re.compile(r"^(\d{1,5})d$")


def parse_day(text, today=None):
    """``YYYY-MM-DD``, ``today``, ``yesterday`` or ``Nd`` (N days ago) -> ``'YYYY-MM-DD'``.

    ValueError (the message is the argparse error) for anything else.
    """
    today = today or datetime.datetime.now(datetime.timezone.utc).date()
    text = str(text).strip().lower()
    if text == "today":
        return today.isoformat()
    if text == "yesterday":
        return (today - datetime.timedelta(days=1)).isoformat()
    match = _RELATIVE_RE.match(text)
    if match:
        return (today - datetime.timedelta(days=int(match.group(1)))).isoformat()
    try:
        if not re.match(r"^\d{4}-\d{2}-\d{2}$", text):
            raise ValueError
        return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError("%r is not a date (YYYY-MM-DD, today, yesterday or Nd: N days ago)"
                         % text) from None


def day_argument(text):
    """argparse type of ``--since`` / ``--until``."""
    import argparse

    try:
        return parse_day(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def human(size):
    for unit, step in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= step:
            return "%.1f %s" % (size / step, unit)
    return "%d B" % size


def duration(seconds):
    seconds = int(seconds)
    return "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)


def render(rows, fmt, out=None):
    """Write ``rows`` (dicts with FIELDS) to ``out`` as ``table``, ``csv`` or ``json``."""
    out = out or sys.stdout
    if fmt == "json":
        json.dump([{f: r[f] for f in FIELDS} for r in rows], out, indent=1)
        out.write("\n")
        return
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(FIELDS)
        for r in rows:
            writer.writerow([r[f] for f in FIELDS])
        return
    if not rows:
        out.write("no usage recorded in that period\n")
        return
    line = "%-10s  %-16s  %10s  %10s  %8s  %5s  %10s\n"
    out.write(line % ("DAY", "USER", "UP", "DOWN", "STREAMS", "PEAK", "TUNNEL"))
    for r in rows:
        out.write(line % (r["day"], r["user"], human(r["bytes_up"]), human(r["bytes_down"]),
                          r["streams"], r["peak_streams"], duration(r["tunnel_seconds"])))
    if len(rows) > 1:
        out.write(line % ("total", "%d users" % len({r["user"] for r in rows}),
                          human(sum(r["bytes_up"] for r in rows)),
                          human(sum(r["bytes_down"] for r in rows)),
                          sum(r["streams"] for r in rows),
                          max(r["peak_streams"] for r in rows),
                          duration(sum(r["tunnel_seconds"] for r in rows))))


def cmd_report(args):
    from afb.state import describe_store, open_store

    cfg = _load(args.config or DEFAULT_SERVER_CONF, "server")
    if cfg is None:
        return EXIT_CONFIG
    if args.since and args.until and args.since > args.until:
        _err("afb report: --since %s is after --until %s" % (args.since, args.until))
        return EXIT_FAILURE
    if not cfg["server"]["state"] and not os.path.isdir(cfg["server"]["state_dir"]):
        rows = []
    else:
        try:
            store = open_store(cfg, create=True)
        except (OSError, *STORE_ERRORS) as exc:
            _err("afb report: %s: %s" % (describe_store(cfg), exc))
            return EXIT_FAILURE
        try:
            rows = store.usage(since=args.since, until=args.until, user=args.user)
        except STORE_ERRORS as exc:        # locked, broken, unreachable...
            _err("afb report: %s: %s" % (describe_store(cfg), exc))
            return EXIT_FAILURE
        finally:
            store.close()
    render(rows, args.format)
    return EXIT_OK


def add_parser(sub):
    """The ``report`` subcommand on ``sub`` (argparse subparsers)."""
    p = sub.add_parser("report", help="usage per user and per day (server)")
    p.add_argument("-c", "--config", help="server config (default %s)" % DEFAULT_SERVER_CONF)
    p.add_argument("--since", type=day_argument, metavar="DATE",
                   help="first day: YYYY-MM-DD, today, yesterday or Nd (N days ago); UTC")
    p.add_argument("--until", type=day_argument, metavar="DATE", help="last day (included)")
    p.add_argument("--user", help="only this user (token subject)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="output (default %(default)s)")
    return p
