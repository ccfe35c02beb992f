"""Tools for abuse tests: a hostile tunnel client, fast and stuck destinations, RSS.

Everything runs on 127.0.0.1 and is bounded in time: every process started
here ends by itself after ``lifetime`` seconds at the latest.

* :class:`RawTunnel` -- a real upgrade (token, TLS pin, E2E handshake) and a
  HELLO of our choosing, then frames sent by hand; it reads only when told.
* :class:`FastSource` -- a process that accepts connections and sends to each
  as fast as the kernel takes it (a download that never ends).
* :class:`StuckSink` -- a process that accepts connections, shrinks their
  receive buffers and never reads (an upload that never drains).
* :func:`rss` -- a process's resident memory (from /proc), :func:`socket_memory`
  what the kernel queues for its TCP sockets (from ``ss``).
* :func:`flood_process` -- ``tests/flood_client.py`` in a process of its own;
* :class:`SlowHandshakes` -- ``tests/slow_handshakes.py`` (many half-open
  handshakes) in a process of its own; :class:`ProcessWatch` samples a
  process's RSS and descriptors meanwhile; :func:`curl_through` and
  :func:`new_tunnel_seconds` time what a real user does.
"""

import hashlib
import os
import re
import subprocess
import sys
import time

from afb import PROTOCOL_VERSION
from afb.codec import frames
from afb.transport import tls, wsclient
from afb.transport.secure_channel import client_secure
from tests.support import ROOT

_SOURCE = r"""
import os, selectors, socket, sys, time
lifetime = float(sys.argv[1])
blob = memoryview(os.urandom(1 << 20))
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
mode = sys.argv[2]
if mode == "sink":      # before listen(): accepted sockets advertise a small window from the start
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
srv.bind(("127.0.0.1", 0)); srv.listen(4096); srv.setblocking(False)
print(srv.getsockname()[1], flush=True)
sel = selectors.DefaultSelector(); sel.register(srv, selectors.EVENT_READ)
end = time.monotonic() + lifetime
held = []
while time.monotonic() < end:
    for key, _ in sel.select(0.2):
        sock = key.fileobj
        if sock is srv:
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.setblocking(False)
            if mode == "sink":
                held.append(conn)          # never read
                continue
            sel.register(conn, selectors.EVENT_WRITE)
            continue
        try:
            while sock.send(blob):
                pass
        except BlockingIOError:
            pass
        except OSError:
            sel.unregister(sock); sock.close()
"""


class _Server:
    def __init__(self, mode, lifetime):
        self.proc = subprocess.Popen([sys.executable, "-c", _SOURCE, str(lifetime), mode],
                                     stdout=subprocess.PIPE)
        self.port = int(self.proc.stdout.readline())

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


class FastSource(_Server):
    """Sends 1 MiB chunks to every connection as fast as it can, for ``lifetime`` s."""

    def __init__(self, lifetime=60.0):
        super().__init__("source", lifetime)


class StuckSink(_Server):
    """Accepts connections (4 KiB receive buffers) and never reads them."""

    def __init__(self, lifetime=60.0):
        super().__init__("sink", lifetime)


def rss(pid):
    """Resident memory of process ``pid`` in bytes."""
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for %d" % pid)


def socket_memory(pid):
    """Bytes the kernel queues for the TCP sockets of process ``pid`` (receive plus
    send queues, from ``ss -tm``): only that process's, whatever else runs."""
    out = subprocess.run(["ss", "-tmnpH"], capture_output=True, text=True).stdout
    total = 0
    for line, mem in re.findall(r"^(\S.*)\n\s+skmem:\((.*?)\)", out, re.M):
        if "pid=%d," % pid in line:
            fields = dict(re.findall(r"([a-z]+)(\d+)", mem))
            total += int(fields.get("r", 0)) + int(fields.get("w", 0))
    return total


def cpu_seconds(pid):
    """User + system CPU time process ``pid`` used so far."""
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class RawTunnel:
    """A tunnel whose every frame the test writes itself (see the module doc).

    ``window`` goes into our HELLO: the credit the server gets for each
    stream it sends us data on.
    """

    def __init__(self, setup, window=256 * 1024, max_message=1 << 20, token=None):
        token = token or setup.token
        headers = {"Authorization": "Bearer " + token}
        context = tls.client_context(pin=setup.pin) if setup.tls else None
        ws = wsclient.connect(setup.url, headers=headers, ssl_context=context, pin=setup.pin,
                              timeout=10, max_message=max_message)
        self.raw = ws
        if setup.e2e:
            ws = client_secure(ws, setup.e2e_public_key, hashlib.sha256(token.encode()).digest(),
                               None, 10)
        self.ws = ws
        self.next_id = 1
        self.initial_window = 256 * 1024     # the server's HELLO window (read_hello sets it)
        ws.send_message([frames.frame(frames.HELLO, 0, frames.hello_payload(
            PROTOCOL_VERSION, window, max_message, os.urandom(16)))])

    def read_hello(self):
        message = self.ws.recv_message()
        if message is None:
            return None
        ftype, _flags, _sid, payload = next(frames.iter_frames(message))
        assert ftype == frames.HELLO
        self.initial_window = frames.parse_hello(payload, PROTOCOL_VERSION)[1]
        return payload

    def send(self, *encoded):
        self.ws.send_message(list(encoded))

    def open(self, host, port, early=b""):
        """Send an OPEN (not waiting for the answer); -> the stream id."""
        sid = self.next_id
        self.next_id += 2
        self.send(frames.frame(frames.OPEN, sid, frames.open_payload(
            frames.CMD_CONNECT, host, port, early), frames.FLAG_NO_WAIT))
        return sid

    def open_many(self, host, port, count, batch=100):
        """``count`` OPENs, ``batch`` to a message; -> their stream ids."""
        ids = list(range(self.next_id, self.next_id + 2 * count, 2))
        self.next_id += 2 * count
        for first in range(0, count, batch):
            self.send(*[frames.frame(frames.OPEN, sid, frames.open_payload(
                frames.CMD_CONNECT, host, port), frames.FLAG_NO_WAIT)
                for sid in ids[first:first + batch]])
        return ids

    def push(self, ids, chunk, per_stream, seconds):
        """Send ``per_stream`` bytes on each stream of ``ids`` in ``chunk``s, within the
        credit the server grants (read from its WINDOW frames); -> bytes sent."""
        import gevent

        credit = {sid: self.initial_window for sid in ids}
        left = {sid: per_stream for sid in ids}
        granted = gevent.event.Event()

        def read():
            while True:
                message = self.ws.recv_message()
                if message is None:
                    return
                for ftype, _flags, sid, payload in frames.iter_frames(message):
                    if ftype == frames.WINDOW and sid in credit:
                        credit[sid] += frames.parse_window(payload)
                        granted.set()

        reader = gevent.spawn(read)
        sent = 0
        deadline = time.monotonic() + seconds
        try:
            while left and time.monotonic() < deadline:
                granted.clear()
                for sid in list(left):
                    n = min(len(chunk), credit[sid], left[sid])
                    if n:
                        self.send(frames.frame(frames.DATA, sid, chunk[:n]))
                        credit[sid] -= n
                        left[sid] -= n
                        sent += n
                        if not left[sid]:
                            del left[sid]
                granted.wait(0.2)
        finally:
            reader.kill()
        return sent

    def close(self):
        try:
            self.ws.close()
        except OSError:
            pass


def flood_process(setup, kind, seconds, log_path, token=None, extra=()):
    """``tests/flood_client.py KIND`` against ``setup``'s server, ending after ``seconds``
    (``extra``: more arguments, e.g. ``--target`` for ``opens``)."""
    args = [sys.executable, os.path.join(ROOT, "tests", "flood_client.py"), kind,
            "--url", setup.url, "--token", token or setup.token, "--pin", setup.pin,
            "--seconds", str(seconds)] + list(extra)
    if setup.e2e:
        args += ["--e2e-key", setup.e2e_public_key]
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


class SlowHandshakes:
    """``tests/slow_handshakes.py`` in a process of its own; :attr:`status` is its
    last report (``held``, ``opened``, ``closed``, ``failed``)."""

    def __init__(self, kind, port, count=1000, sources="127.0.0.1", seconds=60.0,
                 interval=2.0, rate=1000.0):
        import gevent

        self.status = {"held": 0, "opened": 0, "closed": 0, "failed": 0}
        self.peak = 0
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "slow_handshakes.py"), kind,
             "--target", "127.0.0.1:%d" % port, "--count", str(count), "--sources", sources,
             "--seconds", str(seconds), "--interval", str(interval), "--rate", str(rate)],
            stdout=subprocess.PIPE, text=True)
        self._reader = gevent.spawn(self._read)

    def _read(self):
        import json

        for line in self.proc.stdout:
            self.status = json.loads(line)
            self.peak = max(self.peak, self.status["held"])

    def wait_held(self, count, timeout=30.0):
        """Wait until ``count`` connections are held at once; -> whether they were."""
        import gevent

        deadline = time.monotonic() + timeout
        while self.status["held"] < count and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            gevent.sleep(0.1)
        return self.status["held"] >= count

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)
        self.proc.stdout.close()


def ok_server():
    """A started HTTP server on 127.0.0.1 (gevent, this process) answering ``ok``."""
    from gevent.pywsgi import WSGIServer

    def app(_environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]

    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    return server


def curl_through(setup, port):
    """One request through the client's proxy (SOCKS5, curl) to :func:`ok_server`'s
    ``port``; -> seconds."""
    started = time.monotonic()
    out = subprocess.run(["curl", "-sS", "-m", "20", "--noproxy", "",
                          "--socks5-hostname", "127.0.0.1:%d" % setup.proxy_port,
                          "http://127.0.0.1:%d/" % port], capture_output=True, timeout=30)
    took = time.monotonic() - started
    assert out.stdout == b"ok\n", out.stderr
    return took


def new_tunnel_seconds(setup):
    """TLS, upgrade, E2E and HELLO of a fresh tunnel; -> seconds."""
    started = time.monotonic()
    tunnel = RawTunnel(setup)
    try:
        assert tunnel.read_hello() is not None
    finally:
        tunnel.close()
    return time.monotonic() - started


MiB = 1 << 20


class ProcessWatch:
    """RSS and descriptors of one process: at the start and the worst seen."""

    def __init__(self, pid):
        self.pid = pid
        self.rss0, self.fds0 = rss(pid), open_fds(pid)
        self.rss_peak, self.fds_peak = self.rss0, self.fds0
        import gevent

        self._job = gevent.spawn(self._run)

    def _run(self):
        import gevent

        while True:
            self.rss_peak = max(self.rss_peak, rss(self.pid))
            self.fds_peak = max(self.fds_peak, open_fds(self.pid))
            gevent.sleep(0.1)

    def stop(self):
        self._job.kill()
        return self

    def line(self):
        return "RSS %.1f -> peak %.1f MiB, descriptors %d -> peak %d" % (
            self.rss0 / MiB, self.rss_peak / MiB, self.fds0, self.fds_peak)
