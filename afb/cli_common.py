"""What every ``afb`` command shares: default paths, exit codes, error lines, config loading.

A module of its own so that :mod:`afb.cli`, :mod:`afb.cli_tokens` and
:mod:`afb.apps.demo` can all use it without importing each other.  No gevent.
"""

import os
import sys
import time

from afb.errors import ConfigError

DEFAULT_SERVER_CONF = "/etc/afb/server.conf"
DEFAULT_CLIENT_CONF = "/etc/afb/client.conf"
DEFAULT_KEY_DIR = "/etc/afb"
#: Where ``afb demo`` keeps its keys and configs without --dir.
DEFAULT_DEMO_DIR = os.path.join("~", ".local", "share", "afb", "demo")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _err(*lines):
    for line in lines:
        print(line, file=sys.stderr)


def _load(path, role, start=False):
    """The validated config, or None after printing every error line.

    ``start``: also every check the daemon makes before it starts (the files
    it names), as ``afb config check`` does.
    """
    from afb.config import load_config, load_for_start

    try:
        return (load_for_start if start else load_config)(path, role)
    except ConfigError as exc:
        _err(*(exc.errors or [str(exc)]))
        return None


def _utc(ts):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
