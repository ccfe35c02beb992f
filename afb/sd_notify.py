"""systemd's readiness messages (sd_notify(3)) in a few lines, without libsystemd.

Under ``Type=notify`` systemd starts a daemon with ``$NOTIFY_SOCKET`` set to an
AF_UNIX datagram socket: a path, or ``@name`` for the abstract namespace.  The
unit becomes active when the daemon sends ``READY=1`` (afb: once its listeners
accept connections, so ``systemctl start`` returns when the port is really
open), and ``STOPPING=1`` says a drain has begun.  Outside systemd the
variable is unset and :func:`notify` does nothing, so the tests and the dev
venv pay nothing.  A failure is one log line, never an exception: a lost
notification must not stop a daemon (systemd times the start out by itself).
"""

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state, environ=None):
    """Send ``state`` (``"READY=1"``, ``"STOPPING=1"``, ...) to ``$NOTIFY_SOCKET``.

    -> True when it was sent; False when there is no socket or sending failed.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):       # vsock:... (VMs) is not for afb
        log.warning("sd_notify: NOTIFY_SOCKET %r is not a unix socket; ignored", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.warning("sd_notify: cannot tell systemd %r: %s", state.split("\n", 1)[0], exc)
        return False
    return True
