"""afb behind a real TLS-terminating reverse proxy (nginx): what a CDN sees.

The test runs its own nginx (config, prefix, pid file and logs in tmp_path,
listening on 127.0.0.1 only) that terminates TLS with a self-signed
certificate and proxies the WebSocket on plain ws:// to ``afb server`` --
through a small capturing TCP relay run by the test, so that the test holds
exactly the bytes nginx sent and received, i.e. what a CDN or proxy in front
of the server can read::

    app -> afb client ==wss==> nginx --ws--> [capture relay] --ws--> afb server -> echo

With E2E on, neither the data nor the destination nor the app's request may
appear in those bytes (client->server WebSocket frames are unmasked first, as
the proxy could); with E2E off they do (the control).  A bit flipped by the
relay in a record is caught: the tunnel is closed and a new one comes up.
"""

import hashlib
import logging
import os
import socket
import struct

import gevent
import pytest
from gevent.server import StreamServer

from afb import keys
from afb.codec import websocket as wsc
from afb.codec.address import encode_address
from tests.nginx_ref import NGINX, main_conf
from tests.nginx_ref import Nginx as RunningNginx
from tests.support import (
    InProcessTunnel,
    Setup,
    free_port,
    recv_exact,
    socks_connect,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (make apt-deps installs it)")

#: Echo target by name: the name travels in the OPEN frame only.
TARGET_HOST = "localhost"


# --- the capturing relay ------------------------------------------------------------------

class Direction:
    """One direction of one relayed connection: the raw bytes, and the WebSocket
    payload bytes after the upgrade (client->server frames unmasked), with an
    optional bit flip in one binary frame's payload."""

    def __init__(self, name, relay):
        self.name = name
        self.relay = relay
        self.raw = bytearray()
        self.payload = bytearray()       # every frame's payload, unmasked, concatenated
        self.binary_frames = 0
        self._pending = bytearray()
        self._upgraded = False
        self._left = 0                   # payload bytes left in the current frame
        self._pos = 0                    # payload offset inside the current frame
        self._key = None
        self._flip_at = None

    def process(self, data):
        """Bytes to forward for ``data`` just received (maybe with one bit flipped)."""
        self.raw += data
        self._pending += data
        out = bytearray()
        while self._pending:
            if not self._upgraded:
                end = self._pending.find(b"\r\n\r\n")
                if end < 0:
                    break
                out += self._pending[:end + 4]
                del self._pending[:end + 4]
                self._upgraded = True
                continue
            if self._left == 0 and not self._start_frame(out):
                break
            if self._left == 0:
                continue
            chunk = bytearray(self._pending[:self._left])
            del self._pending[:len(chunk)]
            if self._flip_at is not None and self._pos <= self._flip_at < self._pos + len(chunk):
                chunk[self._flip_at - self._pos] ^= 0x01
                self._flip_at = None
            self._record_payload(chunk)
            out += chunk
            self._left -= len(chunk)
            self._pos += len(chunk)
        return bytes(out)

    def _start_frame(self, out):
        buf = self._pending
        if len(buf) < 2:
            return False
        opcode, masked, length = buf[0] & 0x0F, buf[1] & 0x80, buf[1] & 0x7F
        size = 2
        if length == 126:
            size = 4
        elif length == 127:
            size = 10
        if masked:
            size += 4
        if len(buf) < size:
            return False
        if length == 126:
            length = struct.unpack_from("!H", buf, 2)[0]
        elif length == 127:
            length = struct.unpack_from("!Q", buf, 2)[0]
        self._key = bytes(buf[size - 4:size]) if masked else None
        out += buf[:size]
        del buf[:size]
        self._left, self._pos, self._flip_at = length, 0, None
        if opcode in (wsc.OP_BINARY, wsc.OP_CONTINUATION) and length:
            self.binary_frames += 1
            tamper = self.relay.tamper
            if tamper == self.name and not self.relay.tampered:
                # A byte inside the ciphertext (after the record's header byte).
                # Masking is a XOR: flipping a masked bit flips the same plain bit.
                self._flip_at = min(8, length - 1)
                self.relay.tampered = True
        return True

    def _record_payload(self, chunk):
        if self._key is None:
            self.payload += chunk
            return
        shift = self._pos % 4
        self.payload += wsc.mask(bytes(chunk), self._key[shift:] + self._key[:shift])


class CaptureRelay:
    """TCP relay nginx -> afb server recording both directions of every connection."""

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.connections = []            # (c2s Direction, s2c Direction)
        self.tamper = None               # "c2s" or "s2c": flip a bit in the next binary frame
        self.tampered = False
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, downstream, _address):
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            downstream.close()
            return
        upstream.settimeout(None)
        c2s, s2c = Direction("c2s", self), Direction("s2c", self)
        self.connections.append((c2s, s2c))
        pumps = [gevent.spawn(self._pump, downstream, upstream, c2s),
                 gevent.spawn(self._pump, upstream, downstream, s2c)]
        gevent.joinall(pumps)
        for sock in (downstream, upstream):
            sock.close()

    @staticmethod
    def _pump(src, dst, direction):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                out = direction.process(data)
                if out:
                    dst.sendall(out)
        except OSError:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def seen(self, name):
        """(raw bytes, WebSocket payload bytes) of one direction over every connection."""
        index = 0 if name == "c2s" else 1
        raw = b"".join(bytes(conn[index].raw) for conn in self.connections)
        payload = b"".join(bytes(conn[index].payload) for conn in self.connections)
        return raw, payload

    def close(self):
        self.server.stop()


# --- nginx ------------------------------------------------------------------------------------

NGINX_HTTP = """\
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {prefix}/nginx.crt;
        ssl_certificate_key {prefix}/nginx.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://127.0.0.1:{relay_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_connect_timeout 10s;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
"""


class Nginx(RunningNginx):
    """nginx terminating TLS on 127.0.0.1:port and proxying ws:// to *relay_port*."""

    def __init__(self, prefix, relay_port):
        prefix = str(prefix)
        os.makedirs(prefix, exist_ok=True)
        key_pem, cert_pem = keys.make_self_signed(("127.0.0.1", "localhost"))
        keys.write_secret(os.path.join(prefix, "nginx.key"), key_pem)
        with open(os.path.join(prefix, "nginx.crt"), "wb") as handle:
            handle.write(cert_pem)
        self.pin = keys.spki_pin(cert_pem)
        self.port = free_port()
        super().__init__(prefix, main_conf(prefix, NGINX_HTTP.format(
            prefix=prefix, port=self.port, relay_port=relay_port)), [self.port])


class FrontedSetup(Setup):
    """A Setup whose client goes to wss://127.0.0.1:<nginx port>/tunnel (nginx's pin)."""

    front_port = None

    @property
    def url(self):
        if self.front_port is None:
            return super().url
        return "wss://127.0.0.1:%d/tunnel" % self.front_port


@pytest.fixture
def fronted(tmp_path, request):
    """(setup, relay, nginx) for one E2E setting: afb server on ws://, nginx in front."""
    os.makedirs(tmp_path / "afb")
    setup = FrontedSetup(tmp_path / "afb", tls=False, e2e=getattr(request, "param", True))
    relay = CaptureRelay(setup.server_port)
    try:
        nginx = Nginx(tmp_path / "nginx", relay.port)
    except BaseException:
        relay.close()
        raise
    setup.front_port = nginx.port
    setup.pin = nginx.pin
    setup.write()
    try:
        yield setup, relay, nginx
    finally:
        nginx.stop()
        relay.close()


# --- helpers ------------------------------------------------------------------------------------

def _payload(marker, size=256 * 1024):
    """``size`` random bytes with ``marker`` (32 bytes) every 128 bytes."""
    assert len(marker) == 32
    piece = 128
    return b"".join(marker + os.urandom(piece - len(marker)) for _ in range(size // piece))


def _echo_through(proxy, port, data, timeout=30):
    """Send ``data`` to the echo target through the proxy; the bytes that came back."""
    sock = socks_connect(proxy, TARGET_HOST, port, timeout=timeout)
    try:
        sender = gevent.spawn(sock.sendall, data)
        got = recv_exact(sock, len(data))
        sender.get(timeout=timeout)
        return got
    finally:
        sock.close()


def _exchange(setup, echo):
    """One stream through nginx: an HTTP request line and 256 KiB with a marker, echoed.

    Returns (marker, request_line) after checking the echo is intact.
    """
    marker = b"AFB-NGINX-MARK:" + os.urandom(17).hex().encode()[:17]
    request_line = b"GET /afb-private/%s HTTP/1.1\r\n" % os.urandom(8).hex().encode()
    data = request_line + b"Host: target.test\r\n\r\n" + _payload(marker)
    with InProcessTunnel(setup) as running:
        got = _echo_through(running.proxy, echo.port, data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    return marker, request_line


def _secrets(marker, request_line, port):
    return {"marker": marker, "request line": request_line.strip(),
            "OPEN address": encode_address(TARGET_HOST, port),
            "target host": TARGET_HOST.encode()}


# --- the tests ---------------------------------------------------------------------------

def test_the_proxy_in_front_sees_only_ciphertext_with_e2e(fronted, echo):
    setup, relay, nginx = fronted
    marker, request_line = _exchange(setup, echo)
    assert relay.connections, "nothing went through the capture relay"
    for name in ("c2s", "s2c"):
        raw, payload = relay.seen(name)
        assert len(payload) > 256 * 1024, (name, len(payload))     # the data did pass here
        for what, secret in _secrets(marker, request_line, echo.port).items():
            assert secret not in raw, "%s visible in %s bytes" % (what, name)
            assert secret not in payload, "%s visible in %s WebSocket payloads" % (what, name)
    # The upgrade itself is plain HTTP through nginx (that part a CDN always sees).
    c2s_raw, _ = relay.seen("c2s")
    assert c2s_raw.startswith(b"GET /tunnel HTTP/1.1\r\n")
    assert b"upgrade" in c2s_raw.split(b"\r\n\r\n", 1)[0].lower()
    assert "[emerg]" not in nginx.log() and "[alert]" not in nginx.log()


@pytest.mark.parametrize("fronted", [False], indirect=True, ids=["e2e-off"])
def test_control_without_e2e_the_proxy_sees_the_plaintext(fronted, echo):
    setup, relay, _nginx = fronted
    marker, request_line = _exchange(setup, echo)
    c2s_raw, c2s_payload = relay.seen("c2s")
    s2c_raw, s2c_payload = relay.seen("s2c")
    assert marker in s2c_raw and marker in s2c_payload          # server -> client: unmasked
    assert marker in c2s_payload                                # client -> server: after unmasking
    assert request_line.strip() in c2s_payload and request_line.strip() in s2c_payload
    assert encode_address(TARGET_HOST, echo.port) in c2s_payload


@pytest.mark.parametrize("direction", ["s2c", "c2s"])
def test_a_flipped_bit_closes_the_tunnel_and_a_new_one_comes_up(fronted, echo, caplog, direction):
    setup, relay, _nginx = fronted
    caplog.set_level(logging.INFO)
    with InProcessTunnel(setup) as running:
        tunnel = running.client.tunnel
        sock = socks_connect(running.proxy, TARGET_HOST, echo.port, timeout=10)
        try:
            sock.sendall(b"before" * 100)
            assert recv_exact(sock, 600) == b"before" * 100
            first = tunnel.session
            assert tunnel.connects == 1
            relay.tamper = direction          # the next binary frame that way gets a bit flipped
            sock.sendall(os.urandom(64 * 1024))
            received = bytearray()
            try:
                with gevent.Timeout(10, AssertionError("the stream was not reset")):
                    while True:
                        data = sock.recv(65536)
                        if not data:
                            break
                        received += data
            except ConnectionResetError:
                pass
            assert relay.tampered
            assert len(received) < 64 * 1024
        finally:
            sock.close()
        first.done.wait(10)
        assert first.closed
        messages = [r.getMessage() for r in caplog.records]
        failed = [m for m in messages if "failed authentication" in m]
        assert failed, messages
        if direction == "s2c":      # the client's opener caught it
            assert any(m.startswith("tunnel to ") and "closing the tunnel" in m for m in failed)
        else:                       # the server's did; the client shows its close reason
            assert any("tunnel down" in m and "4002" in m for m in failed), failed
        # A fresh tunnel (new handshake, new keys) carries traffic again.
        assert wait_until(lambda: tunnel.connects >= 2 and tunnel.session is not None, 15), \
            "no new tunnel: %s" % tunnel.last_error
        assert _echo_through(running.proxy, echo.port, b"after" * 1000) == b"after" * 1000
        assert tunnel.session is not first
