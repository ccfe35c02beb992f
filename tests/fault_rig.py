"""The rig of the fault injection tests (issue 15, part 3) and of ``bench/faults``.

A :class:`FaultRig` is two network namespaces joined by a veth
(:class:`tests.netns.Link`): ``afb server`` and the destinations (an echo
target, a hash target, and the misbehaving ones of the tests) in the server's,
``afb client`` in the client's.  The apps run in this process (gevent) on
sockets made inside the client's namespace (:class:`tests.netns.inside`), so
that the test reads their errors and timings directly; nothing reaches the
host's network and no rule goes into the host's namespace.

:class:`Transfer` uploads and downloads through the tunnel, checking every
byte (SHA-256 of both ways, compared with the hash target's) and recording
progress; :class:`Echoer` sends numbered lines and checks each answer, its
slowest round trip after a fault being the time to recover.
"""

import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

import gevent

from tests.netns import Link, inside
from tests.support import ROOT, EchoTarget, HashTarget, Setup, recv_exact, send_pattern

PATTERN = os.urandom(1 << 20)

#: Why the cases that add iptables rules (the userspace netem, a black hole) cannot
#: run here, or None.
NO_IPTABLES = (None if shutil.which("iptables-legacy")
               else "iptables-legacy is not installed (Debian: iptables)")

#: case -> its figures, filled by the tests as they pass (bench/faults prints them).
FIGURES = {}


def record(case, bytes_lost, recover, note):
    """The figures of a fault case: bytes lost (None: the case ends in an error the app
    sees, by design), the time to recover or to the clean error (s), and a note."""
    FIGURES[case] = {"bytes_lost": bytes_lost, "recover": recover, "note": note}


class FaultRig:
    """Namespaces, targets and both daemons; ``grace``: ``resume_grace`` on both ends;
    ``client_extra`` / ``server_extra``: lines for their ``[tunnel]`` sections;
    ``fast_open``: the client's (False: SOCKS replies wait for the server's connect)."""

    def __init__(self, directory, grace=30, client_extra="", server_extra="", fast_open=True):
        self.dir = str(directory)
        self.fast_open = fast_open
        self.grace = grace
        self.client_extra, self.server_extra = client_extra, server_extra
        self.link = Link()
        self.server = self.client = None
        self.logs = []
        self.targets = []

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
        self.link.create()
        self.setup = Setup(self.dir, listen_host=self.link.server_addr, fast_open=self.fast_open)
        url = "://127.0.0.1:%d/tunnel" % self.setup.server_port
        for conf, extra in ((self.setup.server_conf, self.server_extra),
                            (self.setup.client_conf, self.client_extra)):
            with open(conf) as handle:
                text = handle.read().replace("log_level = debug", "log_level = info")
            text = text.replace(url, "://%s:%d/tunnel" % (self.link.server_addr,
                                                          self.setup.server_port))
            if "[tunnel]" not in text:
                text += "[tunnel]\n"
            text = text.replace("[tunnel]\n", "[tunnel]\nresume_grace = %s\n%s"
                                % (self.grace, extra), 1)
            with open(conf, "w") as handle:
                handle.write(text)
        with inside(self.link.server):
            self.hash_target = HashTarget(PATTERN)
            self.echo = EchoTarget()
        self.targets += [self.hash_target, self.echo]
        self.start_server()
        self.client = self._daemon(self.link.client, "client", self.setup.client_conf)
        self.wait_port(self.link.client, "127.0.0.1", self.setup.proxy_port)
        self.wait_log(self.client, "tunnel up to")

    def start_server(self):
        self.server = self._daemon(self.link.server, "server", self.setup.server_conf)
        self.wait_port(self.link.server, self.link.server_addr, self.setup.server_port)
        return self.server

    def _daemon(self, space, role, conf):
        count = sum(1 for name in os.listdir(self.dir) if name.startswith(role + "-"))
        log = open(os.path.join(self.dir, "%s-%d.log" % (role, count)), "ab")
        self.logs.append(log)
        env = dict(os.environ, PYTHONPATH=ROOT)
        return space.popen([sys.executable, "-m", "afb", role, "-c", conf], cwd=ROOT, env=env,
                           stdout=log, stderr=subprocess.STDOUT)

    def listen(self, handler, host="127.0.0.1"):
        """A destination in the server's namespace: ``handler(sock, address)`` per
        connection; its port."""
        from gevent.server import StreamServer

        with inside(self.link.server):
            server = StreamServer((host, 0), handler)
            server.start()
        self.targets.append(server)
        return server.server_port

    @staticmethod
    def wait_port(space, host, port, timeout=20.0):
        deadline = time.monotonic() + timeout
        while True:
            with inside(space):
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            try:
                sock.settimeout(0.5)
                sock.connect((host, port))
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError("nothing listens on %s:%d in %s" % (
                        host, port, space.name)) from exc
                gevent.sleep(0.05)
            finally:
                sock.close()

    def output(self, role):
        """Everything ``role`` (server or client) logged so far, all its runs."""
        out = []
        for log in self.logs:
            if os.path.basename(log.name).startswith(role + "-"):
                log.flush()
                with open(log.name, "rb") as handle:
                    out.append(handle.read().decode("utf-8", "replace"))
        return "\n".join(out)

    def wait_log(self, proc, text, timeout=20.0, count=1):
        role = "server" if proc is self.server else "client"
        deadline = time.monotonic() + timeout
        while self.output(role).count(text) < count:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("no %r from the %s:\n%s" % (text, role,
                                                                 self.output(role)[-3000:]))
            gevent.sleep(0.05)

    def socks(self, port, host="127.0.0.1", timeout=60):
        """A PySocks client socket made in the client's namespace, connected through the
        proxy to ``host:port`` (resolved in the server's)."""
        import socks

        with inside(self.link.client):
            sock = socks.socksocket(socket.AF_INET, socket.SOCK_STREAM)
        sock.set_proxy(socks.SOCKS5, "127.0.0.1", self.setup.proxy_port, rdns=True)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def socks_reply(self, port, host="127.0.0.1", timeout=60):
        """A hand-made SOCKS5 CONNECT from the client's namespace: ``(reply code, seconds,
        socket)``; the reply code is None when the proxy closed without one."""
        with inside(self.link.client):
            sock = socket.socket()
        sock.settimeout(timeout)
        started = time.monotonic()
        sock.connect(("127.0.0.1", self.setup.proxy_port))
        sock.sendall(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton(host)
                     + struct.pack("!H", port))
        try:
            recv_exact(sock, 2)
            code = recv_exact(sock, 10)[1]
        except EOFError:
            code = None
        return code, time.monotonic() - started, sock

    @staticmethod
    def descriptors(proc):
        return len(os.listdir("/proc/%d/fd" % proc.pid))

    @staticmethod
    def descriptor_list(proc):
        """What ``proc``'s descriptors point at (for failure messages)."""
        out = []
        for name in os.listdir("/proc/%d/fd" % proc.pid):
            try:
                out.append("%s %s" % (name, os.readlink("/proc/%d/fd/%s" % (proc.pid, name))))
            except OSError:
                pass
        return sorted(out)

    def baseline(self, proc):
        """``proc``'s descriptor count at rest: the lowest of a few readings over 1 s
        (a connection the rig's own port probe made may still be open at first)."""
        counts = []
        for _ in range(5):
            counts.append(self.descriptors(proc))
            gevent.sleep(0.2)
        return min(counts)

    def settled_descriptors(self, proc, baseline, timeout=15.0):
        """Waits for ``proc``'s descriptor count to come back to ``baseline``; the count."""
        deadline = time.monotonic() + timeout
        count = self.descriptors(proc)
        while count > baseline and time.monotonic() < deadline:
            gevent.sleep(0.1)
            count = self.descriptors(proc)
        return count

    def close(self):
        for proc in (self.client, self.server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(18)            # SIGCONT, in case a test left it stopped
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for target in self.targets:
            try:
                target.close()
            except OSError:
                pass
        self.targets = []
        for log in self.logs:
            log.close()
        self.link.destroy()


class Transfer:
    """Through ``rig``'s proxy to its hash target: ``up`` bytes up and ``down`` bytes down
    at once, every byte hashed, the download read at most ``rate`` bytes/s (so that it
    spans a fault); ``error`` and ``seconds`` once it ends."""

    def __init__(self, rig, up, down, timeout=120, rate=None):
        self.rig, self.up, self.down, self.timeout = rig, up, down, timeout
        self.rate = rate
        self.ident = os.urandom(16)
        self.got = 0
        self.error = None
        self.digests = None
        self.seconds = None
        self.greenlet = gevent.spawn(self._run)

    def _run(self):
        started = time.monotonic()
        try:
            sock = self.rig.socks(self.rig.hash_target.port, timeout=self.timeout)
            sock.sendall(HashTarget.HEAD.pack(self.ident, self.up, self.down))
            sender = gevent.spawn(send_pattern, sock, PATTERN, self.up, b"up")
            digest = hashlib.sha256()
            while self.got < self.down:
                data = sock.recv(min(65536, self.down - self.got))
                if not data:
                    raise EOFError("download ended after %d of %d bytes" % (self.got,
                                                                             self.down))
                digest.update(data)
                self.got += len(data)
                ahead = self.rate and self.got / self.rate - (time.monotonic() - started)
                if ahead and ahead > 0:
                    gevent.sleep(ahead)
            self.digests = (sender.get(), digest.hexdigest())
            # The target ends with a FIN once it has read the whole upload: the
            # transfer is over only then (the upload may lag far behind).
            if sock.recv(1):
                raise EOFError("more than %d bytes downloaded" % self.down)
            sock.close()
        except (OSError, EOFError) as exc:
            self.error = exc
        self.ended_at = time.monotonic()
        self.seconds = self.ended_at - started

    def wait(self, timeout):
        self.greenlet.join(timeout)
        return self.seconds is not None

    def exact(self):
        """Both ways byte-exact (the target saw what was sent, we got what it sent)."""
        return (self.error is None and self.digests is not None
                and self.rig.hash_target.results.get(self.ident) == self.digests)


class Echoer:
    """A numbered line every ``interval`` s to the echo target, each answer checked."""

    def __init__(self, rig, interval=0.05):
        self.rig, self.interval = rig, interval
        self.sent = 0
        self.error = None
        self.error_at = None
        self.round_trips = []           # (monotonic start, seconds)
        self._stop = False
        self.greenlet = gevent.spawn(self._run)

    def _run(self):
        try:
            sock = self.rig.socks(self.rig.echo.port)
            while not self._stop:
                line = b"line %08d\n" % self.sent
                started = time.monotonic()
                sock.sendall(line)
                if recv_exact(sock, len(line)) != line:
                    raise AssertionError("echo of line %d differs" % self.sent)
                self.round_trips.append((started, time.monotonic() - started))
                self.sent += 1
                gevent.sleep(self.interval)
            sock.close()
        except (OSError, EOFError, AssertionError) as exc:
            self.error, self.error_at = exc, time.monotonic()

    def stop(self):
        self._stop = True
        self.greenlet.join(30)

    def slowest_after(self, moment):
        """The longest round trip begun from 1 s before ``moment`` on (the stall a fault
        made: the time to recover)."""
        return max((rtt for started, rtt in self.round_trips if started >= moment - 1.0),
                   default=0.0)

    def p(self, q):
        values = sorted(rtt for _started, rtt in self.round_trips)
        return values[min(len(values) - 1, int(q * len(values)))] if values else None
