"""What the daemons start to be watched: the monitor, the log ring, the control socket.

Both daemons make a :class:`~afb.monitor.stats.Monitor` at construction (the
tunnels' tallies hang off it) and call :func:`start_monitoring` /
:meth:`Monitoring.stop` around their life.  The control socket is where the
dashboard and scripts read the monitor; it is not needed to carry traffic,
so a control socket that cannot be made is one WARNING line and the daemon
runs on without it (``afb config check`` reports the same problem first).
"""

import logging
import os

from afb.errors import AfbError
from afb.transport.control_server import ControlServer

log = logging.getLogger(__name__)

__all__ = ["Monitoring", "start_monitoring", "control_socket_path", "RUN_DIR"]

#: Where the daemons' control sockets live by default (systemd's RuntimeDirectory=afb).
RUN_DIR = "/run/afb"


def _client_fallback_dir():
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "afb")
    return os.path.join(os.path.expanduser("~"), ".local", "state", "afb")


def control_socket_path(cfg, role):
    """The control socket of ``role`` under ``cfg``: None when ``control_socket = off``.

    Empty: ``/run/afb/ROLE.sock`` when /run/afb can be written (or made);
    else the server's ``state_dir``, the client's ``$XDG_RUNTIME_DIR/afb``
    (or ``~/.local/state/afb``).
    """
    section = cfg[role]
    configured = section.get("control_socket", "")
    if configured == "off":
        return None
    if configured:
        return configured
    name = "%s.sock" % role
    if _writable(RUN_DIR):
        return os.path.join(RUN_DIR, name)
    folder = section["state_dir"] if role == "server" else _client_fallback_dir()
    return os.path.join(folder, name)


def _writable(folder):
    if os.path.isdir(folder):
        return os.access(folder, os.W_OK | os.X_OK)
    parent = os.path.dirname(folder)
    return os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)


class Monitoring:
    """The running parts around one monitor; :meth:`stop` ends them all."""

    def __init__(self, monitor):
        self.monitor = monitor
        self.control = None
        self.parts = []             # more running parts, each with stop()

    def stop(self):
        for part in reversed(self.parts):
            try:
                part.stop()
            except Exception:  # noqa: BLE001  (one part's failure must not skip the others)
                log.exception("stopping %r failed", part)
        self.parts = []
        if self.control is not None:
            self.control.stop()
            self.control = None
        self.monitor.logs.remove()


def start_monitoring(monitor, cfg, role):
    """Install the log ring, open the control socket (a warning if it cannot be)."""
    monitoring = Monitoring(monitor)
    monitor.logs.install()
    path = control_socket_path(cfg, role)
    if path is not None:
        control = ControlServer(path, monitor)
        try:
            control.start()
        except AfbError as exc:
            log.warning("no control socket (afb tui and scripts cannot watch this %s): %s",
                        role, exc)
        else:
            monitoring.control = control
    return monitoring
