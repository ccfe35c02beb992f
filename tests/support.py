"""Shared test helpers: keys, configs, loopback targets, tunnels in-process and as processes.

Everything here listens on and connects to 127.0.0.1 / ::1 only.
"""

import base64
import contextlib
import hashlib
import hmac
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time

import gevent
from gevent.server import StreamServer

from afb import keys
from afb.config import load_config
from afb.policy.auth import issue_token

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The loggers of the local proxy: its handshake and the proxy itself.
PROXY_LOGGERS = ("afb.apps.local_proxy", "afb.apps.socks_handshake")


def b64(data):
    """Unpadded base64url, as in a JWT."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header, claims, key=b""):
    """A hand-made JWT; HMAC-SHA256 over it with ``key`` (empty: no signature)."""
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return signing_input + "." + b64(sig)


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            low, high = (int(n) for n in handle.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


#: Ports free_port picks from: below the kernel's ephemeral range, so that no
#: outgoing connection (the tests make thousands) can be given the port
#: between free_port's check and the daemon's bind, as a port 0 bind could.
_PORTS = (20000, min(32767, _ephemeral_range()[0] - 1))
_random = random.SystemRandom()      # hypothesis seeds the module's generator in its tests


def free_port(host="127.0.0.1"):
    """A port nothing listens on now, outside the ephemeral range (see _PORTS)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        port = _random.randint(*_PORTS)
        with socket.socket(family) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in %d-%d" % _PORTS)


def wait_port(port, host="127.0.0.1", timeout=20.0):
    def listening():
        try:
            socket.create_connection((host, port), 0.5).close()
            return True
        except OSError:
            return False

    if not wait_until(listening, timeout):
        raise AssertionError("nothing listening on %s:%d after %.0f s" % (host, port, timeout))


def wait_until(predicate, timeout, interval=0.05):
    """Poll ``predicate()`` until it is true or ``timeout`` s have passed; -> its
    last value (assert it: a timeout is generous, it costs time only on failure)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        gevent.sleep(interval)


def wait_log(daemon, text, timeout=20.0):
    """Wait until ``text`` is in a :class:`Daemon`'s log; -> the log.  A daemon
    that exits without writing it fails at once."""
    def seen():
        exited = daemon.proc.poll() is not None
        if text in daemon.output():
            return True
        if exited:
            raise AssertionError("%s exited (%s) without %r in its log: %s" % (
                daemon.role, daemon.proc.returncode, text, daemon.output()[-2000:]))
        return False

    if not wait_until(seen, timeout, 0.02):
        raise AssertionError("no %r in the %s log after %.0f s: %s" % (
            text, daemon.role, timeout, daemon.output()[-3000:]))
    return daemon.output()


#: Header values that are opaque tokens: hex or base64 digits may spell "afb" by chance
#: (an ETag is hex(mtime)-hex(size); Sec-WebSocket-Key a random base64 nonce,
#: Sec-WebSocket-Accept a hash of it).
OPAQUE = ("etag:", "sec-websocket-key:", "sec-websocket-accept:")


def readable(lines):
    """Header lines a person reads: names, and values that are not opaque tokens."""
    return [line.partition(":")[0] + ":" if line.lower().startswith(OPAQUE) else line
            for line in lines]


class Setup:
    """Keys, token and config files for one server + client pair in ``directory``."""

    def __init__(self, directory, *, tls=True, allow_private=True, fast_open=True, open_timeout=5,
                 server_extra="", client_extra="", ttl=3600, leeway=30, e2e=True,
                 e2e_mode=None, listen_host="127.0.0.1"):
        """``e2e``: the client pins the server's E2E key (the default, as in every
        generated config); the server's ``[e2e] mode`` is ``e2e_mode``, by
        default required with E2E and off without.  The server listens on
        ``listen_host`` (the client dials 127.0.0.1 all the same)."""
        self.listen_host = listen_host
        self.dir = str(directory)
        self.e2e = e2e
        self.e2e_mode = e2e_mode or ("required" if e2e else "off")
        self.tls = tls
        self.allow_private = allow_private
        self.fast_open = fast_open
        self.open_timeout = open_timeout
        self.leeway = leeway
        self.paths = keys.generate_server_keys(self.dir)
        self.pin = self.paths["pin"]
        self.e2e_public_key = self.paths["e2e_public_key"]
        with open(self.paths["jwt_private_key"], "rb") as handle:
            self.jwt_key = handle.read()
        self.token = issue_token(self.jwt_key, "tester", ttl)
        self.server_port = free_port()
        self.proxy_port = free_port()
        self.server_extra = server_extra
        self.client_extra = client_extra
        self.write()

    @property
    def url(self):
        return "%s://127.0.0.1:%d/tunnel" % ("wss" if self.tls else "ws", self.server_port)

    def write(self):
        self.server_conf = os.path.join(self.dir, "server.conf")
        self.client_conf = os.path.join(self.dir, "client.conf")
        with open(os.path.join(self.dir, "client.token"), "w") as handle:
            handle.write(self.token)
        os.chmod(os.path.join(self.dir, "client.token"), 0o600)
        with open(self.server_conf, "w") as handle:
            handle.write(_SERVER.format(host=self.listen_host, port=self.server_port,
                                        tls=self.tls, allow_private=self.allow_private,
                                        leeway=self.leeway, e2e_mode=self.e2e_mode)
                         + self.server_extra)
        with open(self.client_conf, "w") as handle:
            handle.write(_CLIENT.format(url=self.url, port=self.proxy_port, pin=self.pin,
                                        fast_open=self.fast_open, open_timeout=self.open_timeout,
                                        e2e_key=self.e2e_public_key if self.e2e else '""')
                         + self.client_extra)

    def server_cfg(self):
        return load_config(self.server_conf, "server")

    def client_cfg(self):
        return load_config(self.client_conf, "client")


_SERVER = """\
[server]
listen = {host}:{port}
path = /tunnel
tls = {tls}
cert = server.crt
key = server.key
state_dir = state
log_level = debug
drain_timeout = 5
control_socket = server.sock
[auth]
jwt_public_key = jwt.pub
jwt_private_key = jwt.key
leeway = {leeway}
[e2e]
key = e2e.key
mode = {e2e_mode}
[acl]
allow_private = {allow_private}
"""

_CLIENT = """\
[client]
server = {url}
listen = 127.0.0.1:{port}
token_file = client.token
pin = {pin}
fast_open = {fast_open}
log_level = debug
drain_timeout = 5
control_socket = client.sock
[e2e]
server_key = {e2e_key}
[tunnel]
reconnect_min = 0.05
reconnect_max = 0.5
open_timeout = {open_timeout}
"""


class InProcessTunnel:
    """TunnelServer + ProxyClient in this process (gevent); a context manager."""

    def __init__(self, setup):
        from afb.apps.client import ProxyClient
        from afb.apps.server import TunnelServer

        self.setup = setup
        self.server = TunnelServer(setup.server_cfg())
        self.client = ProxyClient(setup.client_cfg())

    def __enter__(self):
        self.server.start()
        self.client.start()
        self.client.tunnel.get_session(10)
        return self

    def __exit__(self, *exc):
        self.client.stop(timeout=0)
        self.server.stop(timeout=0)

    @property
    def proxy(self):
        return ("127.0.0.1", self.setup.proxy_port)


class Daemon:
    """``afb server|client -c FILE`` as a real process."""

    def __init__(self, role, conf, log_path, nofile=None, **popen):
        """``nofile``: the process's descriptor limit (soft and hard), if given;
        ``popen``: more arguments for subprocess.Popen."""
        if nofile is not None:
            popen.setdefault("preexec_fn", lambda: _limit_descriptors(nofile))
        self.role = role
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "afb", role, "-c", conf], cwd=ROOT,
            stdout=self.log, stderr=subprocess.STDOUT, **popen)

    def stop(self, sig=15, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def output(self):
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")


def _limit_descriptors(count):
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


# --- a session without a network -----------------------------------------------

class RecordingWs:
    """The WsConnection interface, recording each message sent (for unit tests of
    the session, its streams and relays: everything above the WebSocket is real)."""

    client = True
    closed = False
    peer_close_code = None
    peer_close_reason = ""
    pacer = None

    def __init__(self):
        self.sent = []

    def send_message(self, parts):
        self.sent.append(b"".join(bytes(p) for p in parts))

    def recv_message(self):
        gevent.sleep(60)                # a peer that sends nothing

    def close(self, code=None, reason=""):
        self.closed = True

    def frames(self):
        """``(type, stream id, payload)`` of every frame sent so far."""
        from afb.codec.frames import iter_frames

        return [(t, sid, bytes(p)) for m in self.sent for t, _f, sid, p in iter_frames(m)]


# --- targets -----------------------------------------------------------------

class EchoTarget:
    """Echoes what it gets; EOF from the client is answered by a half-close."""

    def __init__(self, host="127.0.0.1"):
        self.server = StreamServer((host, 0), self._handle)
        self.server.start()
        self.port = self.server.server_port
        self.connections = 0

    def _handle(self, sock, _address):
        self.connections += 1
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    sock.shutdown(socket.SHUT_WR)
                    return
                sock.sendall(data)
        except OSError:
            pass
        finally:
            sock.close()

    def close(self):
        self.server.stop()


class HashTarget:
    """Per connection: reads ``16-byte id, up_len, down_len``, then sends
    ``down_len`` random bytes while reading ``up_len`` bytes, and records both
    SHA-256 digests under the id."""

    HEAD = struct.Struct("!16sII")

    def __init__(self, pattern):
        self.pattern = pattern
        self.results = {}
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, sock, _address):
        try:
            head = recv_exact(sock, self.HEAD.size)
            ident, up_len, down_len = self.HEAD.unpack(head)
            sender = gevent.spawn(send_pattern, sock, self.pattern, down_len, ident)
            up_hash = hashlib.sha256()
            left = up_len
            while left:
                data = sock.recv(min(left, 262144))
                if not data:
                    break
                up_hash.update(data)
                left -= len(data)
            down_hash = sender.get()
            self.results[ident] = (up_hash.hexdigest(), down_hash)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            sock.close()

    def close(self):
        self.server.stop()


def send_pattern(sock, pattern, length, salt=b""):
    """Send ``length`` bytes cut from ``pattern`` at an offset derived from ``salt``."""
    digest = hashlib.sha256()
    offset = int.from_bytes(hashlib.sha256(salt).digest()[:4], "big") % len(pattern)
    view = memoryview(pattern)
    left = length
    while left:
        piece = view[offset:offset + min(left, 65536)]
        sock.sendall(piece)
        digest.update(piece)
        left -= len(piece)
        offset = (offset + len(piece)) % len(pattern)
    return digest.hexdigest()


def read_http_head(sock, size=65536):
    """The bytes of an HTTP request up to its blank line, or None if the peer closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(size)
        if not chunk:
            return None
        data += chunk
    return data


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise EOFError("peer closed after %d of %d bytes" % (len(buf), n))
        buf += data
    return bytes(buf)


def recv_all(sock):
    chunks = []
    while True:
        data = sock.recv(262144)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def socks_open(proxy, port):
    """A hand-made SOCKS5 CONNECT to 127.0.0.1:port; -> (socket, reply code)."""
    sock = socket.create_connection(proxy, timeout=10)
    sock.sendall(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", port))
    assert recv_exact(sock, 2) == b"\x05\x00"
    return sock, recv_exact(sock, 10)[1]


@contextlib.contextmanager
def running(role, setup, log_path, **kwargs):
    """A :class:`Daemon` of ``setup``'s config whose port answers; stopped after."""
    daemon = Daemon(role, setup.server_conf if role == "server" else setup.client_conf,
                    str(log_path), **kwargs)
    try:
        wait_port(setup.server_port if role == "server" else setup.proxy_port)
        yield daemon
    finally:
        daemon.stop()


def socks_connect(proxy, host, port, rdns=True, timeout=20):
    """A real SOCKS5 client socket (PySocks) connected through ``proxy``."""
    import socks

    sock = socks.socksocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.set_proxy(socks.SOCKS5, proxy[0], proxy[1], rdns=rdns)
    sock.settimeout(timeout)
    sock.connect((host, port))
    return sock


def ask(path, request):
    """One request on a control socket; -> its answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    return json.loads(data)
