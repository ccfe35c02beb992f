"""Which control socket the dashboard talks to, found without being told.

Order: ``--connect PATH``; the ``AFB_CONTROL_SOCKET`` environment variable;
then the ``*.sock`` files that accept a connection in ``/run/afb/`` (the
packaged daemons), ``$XDG_RUNTIME_DIR/afb/`` and ``~/.local/state/afb/`` (a
client run by a user), ``/var/lib/afb/`` (a server that could not write
/run/afb), ``./demo/`` (``make demo``) and ``~/.local/share/afb/demo/`` (``afb demo``
without ``--dir``).  In each folder ``client.sock`` comes before
``server.sock``: on a machine that runs both (the demo), the client's view
(apps, the tunnel's RTT) is the one a user sitting there wants first.

A path given by the user is used as it is, even when nothing listens there
yet: the dashboard then says so and keeps trying.  A socket found by looking
must accept a connection now, so that a stale file left by a killed daemon
does not hide a live one further down the list.
"""

import errno
import logging
import os
import socket

log = logging.getLogger(__name__)

ENV_VAR = "AFB_CONTROL_SOCKET"
#: What the messages name when nothing was found: the packaged client's socket.
DEFAULT_SOCKET = "/run/afb/client.sock"
PREFERRED = ("client.sock", "server.sock")


def search_dirs(environ=None, cwd=None):
    """The folders looked in, in order (those that do not exist included)."""
    environ = os.environ if environ is None else environ
    dirs = ["/run/afb"]
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        dirs.append(os.path.join(runtime, "afb"))
    home = environ.get("HOME")
    if home:                    # a client run by a user without $XDG_RUNTIME_DIR
        dirs.append(os.path.join(home, ".local", "state", "afb"))
    dirs.append("/var/lib/afb")     # a server whose /run/afb could not be written
    dirs.append(os.path.join(cwd or os.getcwd(), "demo"))
    if home:
        dirs.append(os.path.join(home, ".local", "share", "afb", "demo"))
    return dirs


def candidates(directory):
    """The ``*.sock`` files of ``directory``: client.sock, server.sock, then the rest by name."""
    try:
        names = [name for name in os.listdir(directory) if name.endswith(".sock")]
    except OSError:
        return []
    order = {name: rank for rank, name in enumerate(PREFERRED)}
    names.sort(key=lambda name: (order.get(name, len(order)), name))
    return [os.path.join(directory, name) for name in names]


def accepts(path, timeout=0.5):
    """True when something accepts a connection on the Unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
        return True
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            log.debug("control socket %s: %s", path, exc)
        return False
    finally:
        probe.close()


def explicit(connect=None, environ=None):
    """The socket the user named (``--connect``, then the environment), or None."""
    environ = os.environ if environ is None else environ
    return connect or environ.get(ENV_VAR) or None


def discover(environ=None, cwd=None, probe=accepts):
    """The first socket that accepts a connection in the usual places, or None."""
    for directory in search_dirs(environ, cwd):
        for path in candidates(directory):
            if probe(path):
                return path
    return None


def find_socket(connect=None, environ=None, cwd=None):
    """(path, named): the socket to dial now and whether the user named it.

    ``path`` is None when nothing was named and nothing answers.
    """
    named = explicit(connect, environ)
    if named:
        return named, True
    return discover(environ, cwd), False
