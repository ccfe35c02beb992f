"""Targets and readers for the QoS process tests and bench/qos (issue 13)."""

import os
import socket
import subprocess
import time

import gevent
from gevent.server import StreamServer

from afb.policy.auth import issue_token
from tests.support import free_port, read_http_head

CHUNK = 64 * 1024


class HttpTarget:
    """``GET /N`` answers N bytes; ``PUT`` / ``POST`` reads the body and answers 200."""

    def __init__(self):
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, sock, _address):
        data = read_http_head(sock)
        if data is None:
            return
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split()[:2]
        if method in ("PUT", "POST"):
            length = int(next(line.split(":", 1)[1] for line in lines
                              if line.lower().startswith("content-length:")))
            got = len(body)
            if any(line.lower().startswith("expect:") for line in lines):
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            while got < length:
                chunk = sock.recv(262144)
                if not chunk:
                    return
                got += len(chunk)
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        else:
            size = int(path.strip("/") or 0)
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % size)
            block = b"x" * CHUNK
            while size > 0:
                sock.sendall(block[:size])
                size -= CHUNK
        sock.close()

    def close(self):
        self.server.stop()


class EndlessSource:
    """Sends data to every connection until it is closed."""

    def __init__(self):
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, sock, _address):
        block = b"y" * CHUNK
        try:
            while True:
                sock.sendall(block)
        except OSError:
            pass
        finally:
            sock.close()

    def close(self):
        self.server.stop()


class Sink:
    """Reads and drops whatever every connection sends."""

    def __init__(self):
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, sock, _address):
        try:
            while sock.recv(262144):
                pass
        except OSError:
            pass
        finally:
            sock.close()

    def close(self):
        self.server.stop()


def socks_from(source, proxy_port, host, port, timeout=20):
    """A PySocks stream through the proxy, from the loopback address ``source``
    (127.0.0.2...: another LAN device for the client)."""
    import socks

    sock = socks.socksocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.set_proxy(socks.SOCKS5, "127.0.0.1", proxy_port, rdns=True)
    sock.settimeout(timeout)
    if source is not None:
        sock.bind((source, 0))
    sock.connect((host, port))
    return sock


class Writer:
    """Sends to a SOCKS stream to ``port`` (a :class:`Sink`) in a greenlet, until stopped."""

    def __init__(self, proxy_port, port, source=None):
        self.sock = socks_from(source, proxy_port, "127.0.0.1", port)
        self.total = 0
        self.greenlet = gevent.spawn(self._run)

    def _run(self):
        block = b"u" * CHUNK
        try:
            while True:
                self.sock.sendall(block)
                self.total += len(block)
        except OSError:
            pass

    def stop(self):
        self.greenlet.kill()
        self.sock.close()


def echo_rtts(sock, count, gap=0.01, size=64):
    """``count`` round trips of ``size`` bytes on an echo stream, ``gap`` s apart -> seconds."""
    payload = b"e" * size
    out = []
    for _ in range(count):
        started = time.perf_counter()
        sock.sendall(payload)
        got = 0
        while got < size:
            data = sock.recv(size - got)
            if not data:
                raise AssertionError("the echo stream ended")
            got += len(data)
        out.append(time.perf_counter() - started)
        gevent.sleep(gap)
    return out


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Reader:
    """Reads a SOCKS stream to ``port`` in a greenlet; ``total`` and (time, total) samples."""

    def __init__(self, proxy_port, port, source=None):
        self.sock = socks_from(source, proxy_port, "127.0.0.1", port)
        self.total = 0
        self.samples = [(time.monotonic(), 0)]
        self.greenlet = gevent.spawn(self._run)

    def _run(self):
        try:
            while True:
                data = self.sock.recv(262144)
                if not data:
                    return
                self.total += len(data)
                self.samples.append((time.monotonic(), self.total))
        except OSError:
            pass

    def bytes_at(self, when):
        """The total at time ``when`` (the last sample before it)."""
        best = 0
        for stamp, total in self.samples:
            if stamp > when:
                break
            best = total
        return best

    def rate(self, start, end):
        return (self.bytes_at(end) - self.bytes_at(start)) / (end - start)

    def stop(self):
        self.greenlet.kill()
        self.sock.close()


def curl(proxy_port, url, *extra, timeout=40):
    """curl through the SOCKS proxy -> its ``-w`` figures as a dict of floats."""
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "--max-time", str(timeout), "--socks5-hostname",
         "127.0.0.1:%d" % proxy_port, "-w",
         "%{size_download} %{size_upload} %{time_total} %{speed_download} %{speed_upload}",
         *extra, url], capture_output=True, text=True, timeout=timeout + 10, check=True)
    names = ("size_download", "size_upload", "time_total", "speed_download", "speed_upload")
    return dict(zip(names, (float(v) for v in out.stdout.split()), strict=True))


def second_client(setup, user):
    """A second client config of ``setup`` with its own token (``user``) and port."""
    token_path = os.path.join(setup.dir, "%s.token" % user)
    with open(token_path, "w") as handle:
        handle.write(issue_token(setup.jwt_key, user, 3600))
    os.chmod(token_path, 0o600)
    port = free_port()
    with open(setup.client_conf) as handle:
        text = handle.read()
    text = text.replace("listen = 127.0.0.1:%d" % setup.proxy_port, "listen = 127.0.0.1:%d" % port)
    text = text.replace("token_file = client.token", "token_file = %s.token" % user)
    text = text.replace("control_socket = client.sock", "control_socket = %s.sock" % user)
    path = os.path.join(setup.dir, "%s-client.conf" % user)
    with open(path, "w") as handle:
        handle.write(text)
    return path, port


def wait_proxy(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            gevent.sleep(0.05)
    raise AssertionError("no proxy on %d" % port)
