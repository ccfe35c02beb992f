"""Latency under load: an echo stream's round trips, idle and beside a bulk download.

Used by ``tests/test_latency_under_load.py`` and ``bench/latency_under_load``.
A :class:`Rig` starts real processes: a target process (an echo server and
an endless source of bytes), ``afb server`` and ``afb client``, either all on
loopback or in two network namespaces the rig makes, joined by a veth pair
shaped with ``tc netem`` (rate and delay on both sides).  :meth:`Rig.measure`
runs :data:`PROBE` where the client is: it opens one echo stream through the
client's SOCKS5 port, times ``samples`` echoes idle, then starts a reader
process that downloads from the source through the same tunnel as fast as
it can, waits ``warmup`` seconds and times as many echoes again; it returns
the RTTs (ms) of both phases and the download's rate in the loaded phase.
"""

import json
import os
import shutil
import subprocess
import sys
import time

from tests.netns import Netns
from tests.support import ROOT, Setup, free_port, wait_port

#: The target process: ``python -c TARGETS HOST ECHO_PORT SOURCE_PORT``.
TARGETS = r'''
import socket, sys, threading

host, echo_port, source_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
blob = bytes(1 << 20)


def listen(port):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    return sock


def echo(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)


def source(conn):
    with conn:
        try:
            while True:
                conn.sendall(blob)
        except OSError:
            return


def serve(sock, handler):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


threading.Thread(target=serve, args=(listen(echo_port), echo), daemon=True).start()
serve(listen(source_port), source)
'''

#: Where the client is: ``python -c PROBE probe|reader ARGS_JSON``; prints one JSON object.
PROBE = r'''
import json, socket, struct, subprocess, sys, time

mode, args = sys.argv[1], json.loads(sys.argv[2])


def socks(port):
    sock = socket.create_connection(("127.0.0.1", args["socks"]), timeout=20)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"\x05\x01\x00")        # one step at a time: trojan's client wants that
    recv_exact(sock, 2)
    sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(args["target"]) + struct.pack("!H", port))
    reply = recv_exact(sock, 10)
    if reply[1] != 0:
        raise SystemExit("SOCKS5 CONNECT failed: %r" % reply)
    return sock


def recv_exact(sock, size):
    buf = b""
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise SystemExit("EOF")
        buf += chunk
    return buf


def echoes(sock, count, interval):
    rtts = []
    payload = b"e" * 64
    for _ in range(count):
        started = time.perf_counter()
        sock.sendall(payload)
        recv_exact(sock, 64)
        rtts.append((time.perf_counter() - started) * 1000.0)
        time.sleep(interval)
    return rtts


if mode == "reader":
    import threading

    stop = []
    threading.Thread(target=lambda: (sys.stdin.read(), stop.append(1)), daemon=True).start()
    sock = socks(args["source"])
    buf = bytearray(1 << 20)
    started = time.monotonic()
    window_start = started + args["warmup"]
    total = at_window = 0
    in_window = False
    while not stop:
        n = sock.recv_into(buf)
        if not n:
            break
        total += n
        if not in_window and time.monotonic() >= window_start:
            in_window, at_window, window_start = True, total, time.monotonic()
    seconds = time.monotonic() - window_start if in_window else 0.0
    print(json.dumps({"bytes": total - at_window, "seconds": seconds, "total": total}))
    sys.exit(0)

sock = socks(args["echo"])
echoes(sock, 20, 0.005)
idle = echoes(sock, args["samples"], args["interval"])
reader = subprocess.Popen([sys.executable, "-c", args["script"], "reader", json.dumps(args)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
time.sleep(args["warmup"])
loaded = echoes(sock, args["samples"], args["interval"])
out = reader.communicate(b"", timeout=30)[0]
print(json.dumps({"idle": idle, "loaded": loaded, "download": json.loads(out)}))
'''


def percentile(values, q):
    """The ``q`` quantile (0-1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tools_missing(netem):
    """Why this rig cannot run here (a skip reason), or None."""
    if shutil.which("ip") is None:
        return "iproute2 'ip' is not installed"
    if netem:
        if os.geteuid() != 0:
            return "network namespaces need root"
        if shutil.which("tc") is None:
            return "'tc' is not installed"
    return None


class _ClientSetup(Setup):
    """A :class:`Setup` whose client dials ``server_host`` (the server's namespace)."""

    def __init__(self, directory, server_host, **kwargs):
        self.server_host = server_host
        super().__init__(directory, listen_host=server_host, **kwargs)

    @property
    def url(self):
        return "%s://%s:%d/tunnel" % ("wss" if self.tls else "ws", self.server_host,
                                      self.server_port)


class Rig:
    """Targets, ``afb server`` and ``afb client`` on loopback or across a netem link.

    ``netem``: None (loopback) or ``(rate, delay)`` for ``tc qdisc ... netem
    delay DELAY rate RATE`` on both ends of the veth (e.g. ``("20mbit",
    "20ms")``: 40 ms RTT).  ``checkout``: a directory holding another
    revision's ``afb`` package to run instead of this one (a benchmark's
    base).  ``rival``: another tunnel instead of afb (bench/peers.py's
    ``V2ray`` or ``Trojan``): an object whose ``configs(directory, (server
    host, port), (socks host, port), fallback_port)`` writes its files and
    returns ``(server argv, client argv, env)``.  ``userspace_delay``: where the
    kernel has no netem (HTB shapes the rate), add the delay with
    tests/userspace_netem.py on each end of the veth (20 ms each way = 40 ms
    RTT).  A context manager; everything it started is stopped on
    exit.
    """

    def __init__(self, directory, netem=None, checkout=None, tls=True, e2e=True,
                 server_extra="", client_extra="", rival=None, userspace_delay=False):
        self.dir = str(directory)
        self.userspace_delay = userspace_delay
        self.netem = netem
        self.checkout = checkout
        self.tls = tls
        self.e2e = e2e
        self.server_extra = server_extra
        self.client_extra = client_extra
        self.rival = rival
        self.proxy_port = None
        self.spaces = []
        self.procs = []
        self.logs = []
        self.server_ns = self.client_ns = None
        self.shaper = "loopback"

    # --- set-up ---------------------------------------------------------------------------

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _start(self):
        if self.netem:
            server_host = self._link()
        else:
            server_host = "127.0.0.1"
        if self.rival is not None:
            self._start_rival(server_host)
            return
        self.setup = _ClientSetup(self.dir, server_host, tls=self.tls, e2e=self.e2e,
                                  server_extra=self.server_extra,
                                  client_extra=self.client_extra)
        for conf in (self.setup.server_conf, self.setup.client_conf):
            with open(conf) as handle:
                text = handle.read().replace("log_level = debug", "log_level = info")
            with open(conf, "w") as handle:
                handle.write(text)
        self._start_targets()
        afb = [sys.executable, "-m", "afb"]
        self._spawn(self.server_ns, "server", afb + ["server", "-c", self.setup.server_conf])
        self._wait(self.server_ns, server_host, self.setup.server_port)
        self._wait(self.server_ns, "127.0.0.1", self.echo_port)
        self._spawn(self.client_ns, "client", afb + ["client", "-c", self.setup.client_conf])
        self._wait(self.client_ns, "127.0.0.1", self.setup.proxy_port)
        self.proxy_port = self.setup.proxy_port

    def _start_rival(self, server_host):
        self._start_targets()
        server_port, self.proxy_port = free_port(), free_port()
        server, client, env = self.rival.configs(self.dir, (server_host, server_port),
                                                 ("127.0.0.1", self.proxy_port), self.echo_port)
        self._spawn(self.server_ns, "server", server, env)
        self._wait(self.server_ns, server_host, server_port)
        self._spawn(self.client_ns, "client", client, env)
        self._wait(self.client_ns, "127.0.0.1", self.proxy_port)

    def _start_targets(self):
        self.echo_port = free_port()
        self.source_port = free_port()
        self._spawn(self.server_ns, "targets", [sys.executable, "-c", TARGETS, "127.0.0.1",
                                                 str(self.echo_port), str(self.source_port)])

    def _link(self):
        """Two namespaces joined by a veth pair shaped with netem; the server's address."""
        rate, delay = self.netem
        server, client = Netns("afb-lat-s-"), Netns("afb-lat-c-")
        for space in (server, client):
            space.create()
            self.spaces.append(space)
        self.server_ns, self.client_ns = server, client
        suffix = server.name[-8:]
        veth_s, veth_c = "vs" + suffix, "vc" + suffix
        subprocess.run(["ip", "link", "add", veth_s, "netns", server.name, "type", "veth",
                        "peer", "name", veth_c, "netns", client.name], check=True,
                       capture_output=True, timeout=10)
        for space, dev, addr in ((server, veth_s, "10.213.0.1/24"),
                                 (client, veth_c, "10.213.0.2/24")):
            space.run(["ip", "addr", "add", addr, "dev", dev], check=True)
            space.run(["ip", "link", "set", dev, "up"], check=True)
            self._shape(space, dev, rate, delay)
        if self.userspace_delay and not self.shaper.startswith("netem"):
            for space, dev in ((client, veth_c), (server, veth_s)):
                self._userspace_delay(space, dev, delay)
            self.shaper = "htb rate %s + userspace netem delay %s each way" % (rate, delay)
        return "10.213.0.1"

    def _userspace_delay(self, space, dev, delay):
        """tests/userspace_netem.py delaying what arrives on ``dev`` by ``delay``."""
        from tests import userspace_netem

        for argv in userspace_netem.rules(dev, 5):
            space.run(argv, check=True)
        proc = space.popen([sys.executable, userspace_netem.__file__, "--queue", "5",
                            "--delay", delay.rstrip("ms")], stdout=subprocess.PIPE)
        self.procs.append(proc)
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("userspace netem did not start in %s" % space.name)

    def _shape(self, space, dev, rate, delay):
        """netem's rate and delay on ``dev``; without netem (a kernel built without
        it), HTB at the same rate over the default 1,000-packet FIFO, no delay."""
        netem = space.run(["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", delay,
                           "rate", rate])
        if netem.returncode == 0:
            self.shaper = "netem delay %s rate %s" % (delay, rate)
            return
        space.run(["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb",
                   "default", "1"], check=True)
        space.run(["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
                   "rate", rate, "ceil", rate], check=True)
        self.shaper = "htb rate %s (no netem in this kernel: no delay)" % rate

    def _env(self, base=None):
        env = dict(base or os.environ)
        for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                     "ALL_PROXY"):
            env.pop(name, None)
        env["PYTHONPATH"] = self.checkout or ROOT
        return env

    def _spawn(self, space, name, argv, env=None):
        log_path = os.path.join(self.dir, name + ".log")
        log = open(log_path, "ab")
        self.logs.append(log)
        if space is not None:
            argv = space.argv(argv)
        self.procs.append(subprocess.Popen(argv, cwd=self.dir, stdout=log,
                                           stderr=subprocess.STDOUT, env=self._env(env)))

    def _wait(self, space, host, port, timeout=20.0):
        if space is None:
            wait_port(port, host, timeout)
            return
        code = ("import socket,sys,time\nd=time.monotonic()+%r\nwhile True:\n try:\n"
                "  socket.create_connection((%r,%d),0.5).close();break\n except OSError:\n"
                "  time.sleep(0.05)\n  if time.monotonic()>d: sys.exit(1)\n"
                % (timeout, host, port))
        if space.run([sys.executable, "-c", code], timeout=timeout + 5).returncode:
            raise RuntimeError("nothing listens on %s:%d in %s\n%s"
                               % (host, port, space.name, self.output()))

    def output(self):
        """The logs of every process started (for failure messages)."""
        out = []
        for log in self.logs:
            log.flush()
            with open(log.name, "rb") as handle:
                out.append("--- %s\n%s" % (log.name, handle.read()[-3000:].decode(
                    "utf-8", "replace")))
        return "\n".join(out)

    def close(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs = []
        for log in self.logs:
            log.close()
        for space in self.spaces:
            space.destroy()
        self.spaces = []

    # --- the measurement -------------------------------------------------------------------

    def measure(self, samples=300, interval=0.01, warmup=1.5, timeout=60.0):
        """``{"idle": [ms], "loaded": [ms], "download": {"bytes", "seconds"}}``."""
        args = dict(socks=self.proxy_port, target="127.0.0.1", echo=self.echo_port,
                    source=self.source_port, samples=samples, interval=interval,
                    warmup=warmup, script=PROBE)
        argv = [sys.executable, "-c", PROBE, "probe", json.dumps(args)]
        if self.client_ns is not None:
            argv = self.client_ns.argv(argv)
        started = time.monotonic()
        res = subprocess.run(argv, capture_output=True, timeout=timeout, env=self._env())
        if res.returncode != 0:
            raise RuntimeError("the probe failed after %.1f s: %s\n%s" % (
                time.monotonic() - started, res.stderr.decode("utf-8", "replace")[-2000:],
                self.output()))
        return json.loads(res.stdout)


def summary(result):
    """p50/p99 of both phases (ms) and the download's rate (bytes/s) of :meth:`Rig.measure`."""
    download = result["download"]
    return {
        "idle_p50": percentile(result["idle"], 0.5),
        "idle_p99": percentile(result["idle"], 0.99),
        "loaded_p50": percentile(result["loaded"], 0.5),
        "loaded_p99": percentile(result["loaded"], 0.99),
        "rate": download["bytes"] / download["seconds"] if download["seconds"] else 0.0,
    }
