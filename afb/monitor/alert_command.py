"""``[alerts] alert_command``: a program run with each alert as JSON on its stdin.

The daemon is one gevent loop carrying every tunnel, so the command must
never hold it: it runs under :mod:`gevent.subprocess` in a greenlet of its
own, its stdin written and its output read cooperatively, killed after
``alert_command_timeout`` seconds with every process it started (it runs
in a session of its own).  At most :data:`MAX_RUNNING` run at once;
an alert arriving while that many still run is not run (one log line): a
storm of alerts must not become a storm of processes.  Whatever goes wrong
(not found, exit status, timeout) is one WARNING line, never a traceback.

The command is split shell-like (``afb.config_values.split_command``) and
run without a shell; ``sh -c '...'`` gives one where wanted.  Its input is
the ALERT dict of docs/control-protocol.rst plus ``"state"`` (``"active"``
when it starts, ``"cleared"`` when it ends), ``"role"`` and ``"host"``,
one JSON object and a newline.
"""

import json
import logging
import os
import signal
import socket

import gevent
from gevent import subprocess

from afb.config_values import split_command

log = logging.getLogger(__name__)
#: Commands running at once, at most.
MAX_RUNNING = 4
#: Characters of the command's output kept for the failure line.
_SHOWN = 200


class AlertCommand:
    """``run(alert, state)`` starts the command for one alert and returns at once."""

    def __init__(self, command, timeout=10.0, role="server"):
        self.argv = split_command(command) if isinstance(command, str) else list(command)
        self.timeout = timeout
        self.role = role
        self.running = set()

    def run(self, alert, state):
        """-> the greenlet running it, or None (no command, or too many running)."""
        if not self.argv:
            return None
        if len(self.running) >= MAX_RUNNING:
            log.warning("alert_command not run for alert=%s: %d still running",
                        alert.get("name"), len(self.running))
            return None
        data = dict(alert, state=state, role=self.role, host=socket.gethostname())
        task = gevent.spawn(self._run, (json.dumps(data) + "\n").encode("utf-8"),
                            alert.get("name"))
        self.running.add(task)
        task.link(self.running.discard)
        return task

    def _run(self, payload, name):
        """-> the exit status, or None when it could not run or took too long."""
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, close_fds=True,
                                    start_new_session=True)
        except OSError as exc:
            log.warning("alert_command %s failed for alert=%s: %s", self.argv[0], name,
                        exc.strerror or exc)
            return None
        try:
            output, _ = proc.communicate(payload, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            log.warning("alert_command %s for alert=%s killed after %.1f s", self.argv[0],
                        name, self.timeout)
            return None
        except OSError as exc:          # it exited without reading its stdin, ...
            self._kill(proc)
            log.warning("alert_command %s failed for alert=%s: %s", self.argv[0], name,
                        exc.strerror or exc)
            return None
        if proc.returncode != 0:
            text = output.decode("utf-8", "replace").strip().replace("\n", " | ")
            log.warning("alert_command %s for alert=%s exited with status %d%s", self.argv[0],
                        name, proc.returncode, ": " + text[:_SHOWN] if text else "")
        return proc.returncode

    @staticmethod
    def _kill(proc):
        """Kill its whole process group: a shell script's children (``sleep``) would
        otherwise keep its output pipe open, and the command running, after it."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            proc.communicate(timeout=5)     # EOF now: the readers end, the process is reaped
        except (subprocess.TimeoutExpired, OSError):
            proc.kill()

    def wait(self, timeout=None):
        """Wait for the commands still running (at stop), up to ``timeout`` seconds."""
        gevent.joinall(list(self.running), timeout=timeout)
