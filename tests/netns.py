"""A throw-away network namespace with only ``lo`` up, for tests that must not reach any network.

Needs root and iproute2 (``ip netns``).  Nothing is routed out of such a
namespace: a connect to anything but a loopback address fails at once with
ENETUNREACH, so no packet can leave the machine even if the code under test
misbehaves.

``ip netns exec NAME CMD`` bind-mounts every file of ``/etc/netns/NAME/`` over
the same-named file in ``/etc`` for CMD only; :meth:`Netns.write_etc` uses that
to give the processes in the namespace their own ``/etc/hosts`` without
touching the host's.

:class:`NsDaemon` runs ``afb server`` or ``afb client`` inside a namespace;
:data:`PROBE` is a SOCKS5 prober script to run there (``python -c PROBE
ARGS_JSON``), which prints the reply code of each case as JSON.
"""

import os
import secrets
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def namespace_or_skip(hosts, prefix="afb-ssrf-", commands=()):
    """For a pytest fixture (``yield from`` it): a namespace whose ``/etc/hosts`` reads
    ``hosts``, after ``commands`` (argv lists) ran inside it; removed afterwards.
    Skips the tests when namespaces cannot be made here."""
    import pytest

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    space = Netns(prefix)
    try:
        space.create()
        for argv in commands:
            space.run(argv, check=True)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        space.destroy()
        pytest.skip("cannot set up a network namespace: %s" % exc)
    try:
        space.write_etc("hosts", hosts)
        yield space
    finally:
        space.destroy()


class NsDaemon:
    """``afb server|client -c FILE`` inside the namespace, logging to a file."""

    def __init__(self, space, role, conf, log_path):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = space.popen([sys.executable, "-m", "afb", role, "-c", conf], cwd=ROOT,
                                stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def output(self):
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")


# Runs inside the namespace: an optional echo target, SOCKS5 requests through
# the proxy, direct connects; prints one JSON object.
PROBE = r'''
import errno, json, socket, struct, sys, threading, time

args = json.loads(sys.argv[1])
out = {"replies": {}, "direct": {}, "echo": None}


def wait_port(port, deadline):
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("nothing listening on 127.0.0.1:%d" % port)
            time.sleep(0.05)


def echo_target(port):
    lsock = socket.socket(socket.AF_INET6)
    lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)   # 127.0.0.1 and ::1
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("::", port))
    lsock.listen(16)

    def serve(conn):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)

    def accept():
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise EOFError("closed after %d of %d bytes" % (len(buf), n))
        buf += data
    return buf


def socks_open(atyp, host, port):
    """(reply code, socket) for a SOCKS5 CONNECT through the proxy."""
    sock = socket.create_connection(("127.0.0.1", args["proxy_port"]), timeout=10)
    if atyp == 1:
        addr = b"\x01" + socket.inet_pton(socket.AF_INET, host)
    elif atyp == 4:
        addr = b"\x04" + socket.inet_pton(socket.AF_INET6, host)
    else:
        name = host.encode()
        addr = b"\x03" + bytes([len(name)]) + name
    sock.sendall(b"\x05\x01\x00" + b"\x05\x01\x00" + addr + struct.pack("!H", port))
    try:
        if recv_exact(sock, 2) != b"\x05\x00":
            raise ValueError("bad method reply")
        head = recv_exact(sock, 4)
        rest = {1: 4, 4: 16}.get(head[3])
        if rest is None:
            rest = recv_exact(sock, 1)[0]
        recv_exact(sock, rest + 2)
    except (OSError, EOFError, ValueError) as exc:
        sock.close()
        return "error: %s" % exc, None
    return head[1], sock


deadline = time.monotonic() + 15
if args.get("echo_port"):
    echo_target(args["echo_port"])
wait_port(args["server_port"], deadline)
wait_port(args["proxy_port"], deadline)

for label, atyp, host, port in args["cases"]:
    code, sock = socks_open(atyp, host, port)
    if sock is not None:
        sock.close()
    out["replies"][label] = code

if args.get("round_trip"):
    atyp, host, port = args["round_trip"]
    code, sock = socks_open(atyp, host, port)
    if sock is None or code != 0:
        out["echo"] = "reply %r" % (code,)
    else:
        payload = b"ssrf-netns " * 1000
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            got += data
        sock.close()
        out["echo"] = got == payload

for label, host, port in args.get("direct", []):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family)
    sock.settimeout(5)
    try:
        sock.connect((host, port))
        out["direct"][label] = "connected"
    except OSError as exc:
        out["direct"][label] = errno.errorcode.get(exc.errno, str(exc))
    finally:
        sock.close()

print(json.dumps(out))
'''


# --- two namespaces joined by a veth, for the fault and slow-link tests ----------------

CLONE_NEWNET = 0x40000000


def _setns(fd):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, "setns: %s" % os.strerror(errno))


class inside:
    """``with inside(space): sock = socket.socket()``: sockets made in the block belong to
    ``space`` (a :class:`Netns`) and keep it after.  Only this thread moves; make the
    sockets and leave (a greenlet switch inside would make other greenlets' sockets
    there too)."""

    def __init__(self, space):
        self.path = "/run/netns/" + space.name

    def __enter__(self):
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(self.path, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        return self

    def __exit__(self, *exc):
        try:
            _setns(self.home)
        finally:
            os.close(self.home)


class Link:
    """Namespaces ``server`` and ``client`` joined by a veth pair (10.213.0.1 and
    10.213.0.2 by default), made and removed as a unit; :meth:`netem` delays and
    drops packets both ways with tests/userspace_netem.py."""

    def __init__(self, prefix="afb-f", subnet="10.213.0"):
        self.server, self.client = Netns(prefix + "s-"), Netns(prefix + "c-")
        self.server_addr, self.client_addr = subnet + ".1", subnet + ".2"
        suffix = self.server.name[-8:]
        self.server_dev, self.client_dev = "vs" + suffix, "vc" + suffix
        self.netems = []

    def create(self):
        try:
            for space in (self.server, self.client):
                space.create()
            subprocess.run(["ip", "link", "add", self.server_dev, "netns", self.server.name,
                            "type", "veth", "peer", "name", self.client_dev, "netns",
                            self.client.name], check=True, capture_output=True, timeout=10)
            for space, dev, addr in ((self.server, self.server_dev, self.server_addr),
                                     (self.client, self.client_dev, self.client_addr)):
                space.run(["ip", "addr", "add", addr + "/24", "dev", dev], check=True)
                space.run(["ip", "link", "set", dev, "up"], check=True)
        except BaseException:
            self.destroy()
            raise
        return self

    def netem(self, delay, jitter=0.0, loss=0.0, queue=7):
        """Delay (ms), jitter (ms) and loss (0-1) on each direction of the link: one
        tests/userspace_netem.py per namespace, on the packets arriving there."""
        from tests import userspace_netem

        for space, dev in ((self.client, self.client_dev), (self.server, self.server_dev)):
            for argv in userspace_netem.rules(dev, queue):
                space.run(argv, check=True)
            proc = space.popen([sys.executable, userspace_netem.__file__, "--queue", str(queue),
                                "--delay", str(delay), "--jitter", str(jitter), "--loss",
                                str(loss)], stdout=subprocess.PIPE)
            self.netems.append(proc)
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError("userspace netem did not start in %s" % space.name)

    def stop_netem(self):
        """The netems' counts (``seen``, ``dropped``), each stopped."""
        import json

        counts = []
        for proc in self.netems:
            if proc.poll() is None:
                proc.terminate()
            out = proc.communicate(timeout=10)[0].strip().splitlines()
            counts.append(json.loads(out[-1]) if out else {})
        self.netems = []
        return counts

    def destroy(self):
        for proc in self.netems:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.netems = []
        for space in (self.server, self.client):
            space.destroy()

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.destroy()
