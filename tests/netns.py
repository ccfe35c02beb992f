"""A throw-away network namespace with only ``lo`` up, for tests that must not reach any network.

Needs root and iproute2 (``ip netns``).  Nothing is routed out of such a
namespace: a connect to anything but a loopback address fails at once with
ENETUNREACH, so no packet can leave the machine even if the code under test
misbehaves.

``ip netns exec NAME CMD`` bind-mounts every file of ``/etc/netns/NAME/`` over
the same-named file in ``/etc`` for CMD only; :meth:`Netns.write_etc` uses that
to give the processes in the namespace their own ``/etc/hosts`` without
touching the host's.
"""

import os
import secrets
import shutil
import subprocess

ETC_NETNS = "/etc/netns"


def unavailable():
    """Why a namespace cannot be made here (a pytest.skip reason), or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 'ip' is not installed"
    try:
        probe = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "'ip netns' does not run: %s" % exc
    if probe.returncode != 0:
        return "'ip netns' is not available: %s" % probe.stderr.decode(errors="replace").strip()
    return None


class Netns:
    """``with Netns() as ns:`` creates ``afb-ssrf-<random>`` with ``lo`` up and removes it after.

    :meth:`create` raises RuntimeError when ``ip netns add`` fails (callers may
    turn that into a skip).  :meth:`destroy` removes only what this object made:
    the namespace and ``/etc/netns/NAME`` (and ``/etc/netns`` itself if this
    object created it and it is empty).  Processes started with :meth:`popen`
    are not tracked: stop them before :meth:`destroy`.
    """

    def __init__(self, prefix="afb-ssrf-"):
        self.name = prefix + secrets.token_hex(4)
        self.etc_dir = os.path.join(ETC_NETNS, self.name)
        self._created = False
        self._made_etc_netns = False

    # --- life cycle -------------------------------------------------------------

    def create(self):
        result = subprocess.run(["ip", "netns", "add", self.name], capture_output=True, timeout=10)
        if result.returncode != 0:
            raise RuntimeError("ip netns add %s failed: %s"
                               % (self.name, result.stderr.decode(errors="replace").strip()))
        self._created = True
        try:
            self.run(["ip", "link", "set", "lo", "up"], check=True)
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self):
        if os.path.isdir(self.etc_dir):
            shutil.rmtree(self.etc_dir, ignore_errors=True)
        if self._made_etc_netns:
            try:
                os.rmdir(ETC_NETNS)     # only if empty: someone else may use it now
            except OSError:
                pass
            self._made_etc_netns = False
        if self._created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)
            self._created = False

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.destroy()

    # --- inside the namespace ---------------------------------------------------------

    def write_etc(self, filename, text):
        """Make ``/etc/FILENAME`` read ``text`` for processes started from now on."""
        if not os.path.isdir(ETC_NETNS):
            os.mkdir(ETC_NETNS, 0o755)
            self._made_etc_netns = True
        os.makedirs(self.etc_dir, 0o755, exist_ok=True)
        with open(os.path.join(self.etc_dir, filename), "w") as handle:
            handle.write(text)

    def argv(self, argv):
        """``argv`` prefixed to run inside the namespace (``ip netns exec`` execs, so
        the process id of a Popen of this is the command's own)."""
        return ["ip", "netns", "exec", self.name] + list(argv)

    def run(self, argv, **kwargs):
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("timeout", 30)
        return subprocess.run(self.argv(argv), **kwargs)

    def popen(self, argv, **kwargs):
        return subprocess.Popen(self.argv(argv), **kwargs)
