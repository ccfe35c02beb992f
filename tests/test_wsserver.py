"""The tunnel WebSocket server (afb.transport.wsserver + wsconn), end to end on loopback.

Each test of a gevent-websocket defect says which one it proves fixed.
"""

import base64
import hashlib
import logging
import os
import socket
import time
import tracemalloc

import gevent
import pytest
from gevent.event import AsyncResult

from afb.codec import websocket as wsc
from afb.errors import AuthError
from afb.transport import wsclient, wsconn
from afb.transport.wsserver import make_server

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TOKEN = "good-token"
PATH = "/tunnel"


def authorize(environ):
    if environ.get("HTTP_AUTHORIZATION") != "Bearer " + TOKEN:
        raise AuthError("bad or missing token")
    return {"sub": "tester"}


def echo(ws, principal, environ):
    while True:
        msg = ws.recv_message()
        if msg is None:
            return
        ws.send_message([msg])


@pytest.fixture
def serve():
    servers = []

    def start(on_tunnel=echo, **kw):
        kw.setdefault("authorize", authorize)
        kw.setdefault("path", PATH)
        srv = make_server(("127.0.0.1", 0), on_tunnel, **kw)
        srv.start()
        servers.append(srv)
        return srv.server_port

    yield start
    for srv in servers:
        srv.stop(timeout=1)


def ws_connect(port, **kw):
    kw.setdefault("headers", {"Authorization": "Bearer " + TOKEN})
    return wsclient.connect("ws://127.0.0.1:%d%s" % (port, PATH), timeout=5, **kw)


# --- raw HTTP / WebSocket helpers -------------------------------------------

def new_key():
    return base64.b64encode(os.urandom(16)).decode()


def upgrade_request(port, path=PATH, token=TOKEN, key=None, version="13", method="GET",
                    extra_headers=""):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1:%d" % port,
             "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: %s" % (new_key() if key is None else key),
             "Sec-WebSocket-Version: %s" % version]
    if token is not None:
        lines.append("Authorization: Bearer %s" % token)
    if extra_headers:
        lines.append(extra_headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def plain_request(port, path, method="GET"):
    return ("%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (method, path, port)).encode()


class Raw:
    """A test-side client speaking raw bytes."""

    def __init__(self, port, timeout=5):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def response(self, head_only=False):
        """(status line, [(name, value)], body) of one HTTP response."""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
        length = int(dict((k.lower(), v) for k, v in headers).get("content-length", 0))
        if lines[0].split()[1] == "101" or head_only:
            length = 0
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return lines[0], headers, body

    def frame(self):
        """(opcode, payload) of the next frame from the server."""
        while True:
            header = wsc.parse_header(self.buf)
            if header is not None:
                fin, opcode, masked, key, length, hlen = header
                assert not masked
                if len(self.buf) >= hlen + length:
                    payload = self.buf[hlen:hlen + length]
                    self.buf = self.buf[hlen + length:]
                    return opcode, payload
            self._more()

    def send_frame(self, opcode, payload, fin=True, masked=True):
        key = os.urandom(4) if masked else None
        data = wsc.encode_header(opcode, len(payload), fin=fin, mask_key=key)
        self.send(data + (wsc.mask(payload, key) if masked else payload))

    def eof(self, timeout=3):
        """True if the server closes the connection within *timeout*."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (socket.timeout, ConnectionResetError):
            return False

    def close(self):
        self.sock.close()


def exchange(port, request):
    raw = Raw(port)
    raw.send(request)
    try:
        return raw.response(head_only=request.startswith(b"HEAD"))
    finally:
        raw.close()


def comparable(response):
    status, headers, body = response
    return status, [h for h in headers if h[0].lower() != "date"], body


def upgraded(port, **kw):
    raw = Raw(port)
    raw.send(upgrade_request(port, **kw))
    status, headers, body = raw.response()
    assert status == "HTTP/1.1 101 Switching Protocols"
    return raw


# --- upgrade and echo ---------------------------------------------------------

def test_upgrade_echo_and_pipelined_frame_not_lost(serve):
    port = serve()
    raw = Raw(port)
    key = new_key()
    # The first frame rides in the same segment as the upgrade request.
    mask_key = b"\x01\x02\x03\x04"
    frame = wsc.encode_header(wsc.OP_BINARY, 5, mask_key=mask_key) + wsc.mask(b"hello", mask_key)
    raw.send(upgrade_request(port, key=key) + frame)
    status, headers, _ = raw.response()
    assert status == "HTTP/1.1 101 Switching Protocols"
    hdr = dict(headers)
    expected = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    assert hdr["Sec-WebSocket-Accept"] == expected
    assert hdr["Server"] == "nginx"
    assert not any("afb" in (k + v).lower() for k, v in headers)
    assert raw.frame() == (wsc.OP_BINARY, b"hello")
    raw.send_frame(wsc.OP_BINARY, b"again")
    assert raw.frame() == (wsc.OP_BINARY, b"again")
    raw.close()


def test_ping_pong_and_fragments(serve):
    port = serve()
    raw = upgraded(port)
    raw.send_frame(wsc.OP_PING, b"rtt-1")
    assert raw.frame() == (wsc.OP_PONG, b"rtt-1")
    raw.send_frame(wsc.OP_BINARY, b"abc", fin=False)
    raw.send_frame(wsc.OP_PING, b"mid")          # control frames may interleave
    raw.send_frame(wsc.OP_CONTINUATION, b"def", fin=False)
    raw.send_frame(wsc.OP_CONTINUATION, b"ghi")
    assert raw.frame() == (wsc.OP_PONG, b"mid")
    assert raw.frame() == (wsc.OP_BINARY, b"abcdefghi")
    raw.close()


def test_message_sizes_round_trip_client(serve):
    port = serve(max_message=4 << 20)
    ws = ws_connect(port, max_message=4 << 20)
    for size in (0, 1, 125, 126, 65535, 65536, 16 * 1024 + 1, 200_000, 4 << 20):
        data = os.urandom(size)
        ws.send_message([data[: size // 3], data[size // 3:]])
        assert ws.recv_message() == data
    assert ws.bytes_out > 4 << 20 and ws.bytes_in > 4 << 20
    ws.close()


# --- defect: unmasking byte by byte in Python ---------------------------------

def test_unmasking_is_one_call_per_frame_and_fast(serve, monkeypatch):
    calls = []
    real_mask = wsc.mask_inplace

    def counting_mask(data, key):
        calls.append(len(data))
        return real_mask(data, key)

    monkeypatch.setattr(wsc, "mask_inplace", counting_mask)
    port = serve(max_message=8 << 20)
    ws = ws_connect(port, max_message=8 << 20)
    data = os.urandom(8 << 20)
    t0 = time.perf_counter()
    ws.send_message([data])
    assert ws.recv_message() == data
    elapsed = time.perf_counter() - t0
    ws.close()
    # The server unmasked the whole 8 MiB payload in one call, in place (C masker).
    assert (8 << 20) in calls
    assert wsc.HAVE_FAST_MASK or wsc.HAVE_WSACCEL
    # gevent-websocket's Python loop takes seconds for this; the limit is loose.
    assert elapsed < 5, elapsed


# --- defect: no frame / message size limit -------------------------------------

def test_huge_frame_header_gets_1009_without_allocating(serve):
    port = serve(max_message=1 << 20)
    raw = upgraded(port)
    tracemalloc.start()
    try:
        header = wsc.encode_header(wsc.OP_BINARY, 4 << 30, mask_key=b"abcd")  # 4 GiB
        raw.send(header + b"x" * 100)
        opcode, payload = raw.frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert opcode == wsc.OP_CLOSE
    assert wsc.decode_close(payload)[0] == 1009
    assert peak < 1 << 20, peak
    assert raw.eof()
    raw.close()


def test_fragmented_message_over_limit_gets_1009(serve):
    port = serve(max_message=100_000)
    raw = upgraded(port)
    raw.send_frame(wsc.OP_BINARY, b"a" * 60_000, fin=False)
    raw.send_frame(wsc.OP_CONTINUATION, b"b" * 60_000)
    opcode, payload = raw.frame()
    assert (opcode, wsc.decode_close(payload)[0]) == (wsc.OP_CLOSE, 1009)
    raw.close()


# --- defect: 101 sent before auth ---------------------------------------------

def test_authorize_runs_before_any_101(serve):
    order = []

    def slow_authorize(environ):
        order.append("authorize")
        gevent.sleep(0.3)               # a slow check: no 101 may leave meanwhile
        return authorize(environ)

    def on_tunnel(ws, principal, environ):
        order.append("tunnel")
        echo(ws, principal, environ)

    port = serve(on_tunnel=on_tunnel, authorize=slow_authorize)
    raw = Raw(port)
    raw.send(upgrade_request(port))
    raw.sock.settimeout(0.15)
    with pytest.raises(socket.timeout):
        raw.sock.recv(1)     # nothing at all while authorize() is deciding
    raw.sock.settimeout(5)
    assert raw.response()[0].split()[1] == "101"
    raw.close()
    assert order[:2] == ["authorize", "tunnel"]


def test_refused_token_gets_decoy_identical_to_plain_get(serve):
    tunnels = []
    port = serve(on_tunnel=lambda *a: tunnels.append(a), path="/")
    plain = comparable(exchange(port, plain_request(port, "/")))
    assert plain[0] == "HTTP/1.1 200 OK"
    assert b"<html" in plain[2]
    for token in ("wrong", None, ""):
        probe = comparable(exchange(port, upgrade_request(port, path="/", token=token)))
        assert probe == plain
    assert tunnels == []
    headers = dict(plain[1])
    assert headers["Server"] == "nginx"
    assert headers["Content-Type"] == "text/html"
    assert int(headers["Content-Length"]) == len(plain[2])
    blob = (repr(plain[1]) + plain[2].decode()).lower()
    for word in ("afb", "tunnel", "proxy", "gevent", "python"):
        assert word not in blob


def test_refusal_logged_once_without_token(serve, caplog):
    port = serve()
    caplog.set_level(logging.INFO, logger="afb.transport.wsserver")
    exchange(port, upgrade_request(port, token="s3cr3t-token-value"))
    exchange(port, upgrade_request(port, key="bad key"))
    exchange(port, plain_request(port, "/"))           # not an upgrade attempt: no line
    lines = [r for r in caplog.records if r.name == "afb.transport.wsserver"]
    assert len(lines) == 2
    assert all(r.levelno == logging.INFO for r in lines)
    assert "not authorized" in lines[0].getMessage()
    assert "Sec-WebSocket-Key" in lines[1].getMessage()
    assert not any("s3cr3t" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("request_kw", [
    dict(path="/other"),                          # wrong path, valid token
    dict(path="/tunnel/"),
    dict(version="8"),                            # bad version
    dict(version=""),
    dict(key="not base64!!"),                     # defect: binascii.Error -> 500
    dict(key="c2hvcnQ="),                         # valid base64, not 16 bytes
    dict(key="===="),
    dict(key=""),
    dict(key="\xff\xfe\xfd"),
    dict(method="POST"),
])
def test_bad_upgrades_get_the_decoy_never_500(serve, request_kw):
    tunnels = []
    port = serve(on_tunnel=lambda *a: tunnels.append(a))
    path = request_kw.get("path", PATH)
    method = request_kw.get("method", "GET")
    plain = comparable(exchange(port, plain_request(port, path, method)))
    probe = comparable(exchange(port, upgrade_request(port, **request_kw)))
    assert probe == plain
    assert probe[0].split()[1] in ("404", "405")
    assert tunnels == []


def test_decoy_methods_and_builtin_pages(serve):
    port = serve()
    for path in ("/", "/index.html"):
        assert exchange(port, plain_request(port, path))[0] == "HTTP/1.1 200 OK"
    status, headers, body = exchange(port, plain_request(port, "/", "HEAD"))
    assert status == "HTTP/1.1 200 OK" and body == b"" and int(dict(headers)["Content-Length"]) > 0
    status, headers, body = exchange(port, plain_request(port, "/", "DELETE"))
    assert status == "HTTP/1.1 405 Not Allowed" and b"nginx" in body
    status, headers, body = exchange(port, plain_request(port, "/nope"))
    assert status == "HTTP/1.1 404 Not Found"
    assert body.startswith(b"<html>") and b"<center>nginx</center>" in body


def test_decoy_dir_no_traversal(serve, tmp_path):
    site = tmp_path / "site"
    (site / "css").mkdir(parents=True)
    (site / "index.html").write_text("<html>home</html>")
    (site / "css" / "a.css").write_text("body{}")
    (site / ".secret").write_text("hidden")
    (tmp_path / "outside.txt").write_text("outside")
    os.symlink(tmp_path / "outside.txt", site / "link.txt")
    port = serve(decoy_dir=str(site))
    assert exchange(port, plain_request(port, "/"))[2] == b"<html>home</html>"
    status, headers, body = exchange(port, plain_request(port, "/css/a.css"))
    assert body == b"body{}" and dict(headers)["Content-Type"] == "text/css"
    for path in ("/../outside.txt", "/css/../../outside.txt", "/%2e%2e/outside.txt",
                 "/..%2foutside.txt", "/.secret", "/link.txt", "/css/%00", "/missing"):
        # nginx: 400 for a path above the root, 404 for the rest; never the file
        status, _, body = exchange(port, plain_request(port, path))
        assert status in ("HTTP/1.1 404 Not Found", "HTTP/1.1 400 Bad Request"), path
        assert b"outside" not in body and b"hidden" not in body


def test_malformed_request_gets_nginx_400_not_500(serve):
    port = serve()
    status, headers, body = exchange(port, b"GET / HTTP/1.x\r\n\r\n")
    assert status == "HTTP/1.1 400 Bad Request"
    assert dict(headers)["Server"] == "nginx" and b"400 Bad Request" in body
    status, headers, body = exchange(port, b"GET / HTTP/9.9\r\n\r\n")
    assert status == "HTTP/1.1 505 HTTP Version Not Supported"      # as nginx
    status, _, _ = exchange(port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
    assert status.split()[1] in ("400", "414")


# --- defect: close code and reason mangled -------------------------------------

def test_close_code_and_reason_preserved_server_to_client(serve):
    def on_tunnel(ws, principal, environ):
        assert ws.recv_message() == b"please close"
        ws.close(4000, "server bye \u2713")

    port = serve(on_tunnel=on_tunnel)
    ws = ws_connect(port)
    ws.send_message([b"please close"])
    assert ws.recv_message() is None
    assert (ws.peer_close_code, ws.peer_close_reason) == (4000, "server bye \u2713")
    assert ws.closed
    with pytest.raises(OSError):
        ws.send_message([b"late"])


def test_close_code_and_reason_preserved_client_to_server(serve):
    seen = AsyncResult()

    def on_tunnel(ws, principal, environ):
        msg = ws.recv_message()
        seen.set((msg, ws.peer_close_code, ws.peer_close_reason))

    port = serve(on_tunnel=on_tunnel)
    ws = ws_connect(port)
    ws.close(4001, "client bye")
    ws.close(4002, "ignored: close is idempotent")
    assert seen.get(timeout=5) == (None, 4001, "client bye")


def test_close_reply_echoes_code_raw(serve):
    port = serve()
    raw = upgraded(port)
    raw.send_frame(wsc.OP_CLOSE, wsc.encode_close(1001, "going"))
    opcode, payload = raw.frame()
    assert opcode == wsc.OP_CLOSE and wsc.decode_close(payload) == (1001, "going")
    assert raw.eof()
    raw.close()


# --- defect: concurrent sends ---------------------------------------------------

def test_concurrent_client_sends_do_not_interleave(serve):
    port = serve()
    ws = ws_connect(port)
    sizes = [10, 1000, 70_000, 300_000]

    def sender(tag):
        for i in range(200):
            size = sizes[i % len(sizes)]
            head = b"%s:%03d:" % (tag, i)
            ws.send_message([head, bytes([i % 251]) * size])

    got = []

    def receiver():
        for _ in range(400):
            got.append(bytes(ws.recv_message()))   # large messages come as memoryviews

    r = gevent.spawn(receiver)
    senders = [gevent.spawn(sender, b"A"), gevent.spawn(sender, b"B")]
    gevent.joinall(senders, raise_error=True, timeout=15)
    r.join(timeout=15)
    assert r.successful() and len(got) == 400
    for tag in (b"A", b"B"):
        mine = [m for m in got if m.startswith(tag + b":")]
        assert [int(m[2:5]) for m in mine] == list(range(200))
        for m in mine:
            i = int(m[2:5])
            assert m[6:] == bytes([i % 251]) * sizes[i % len(sizes)]
    ws.close()


def test_concurrent_server_sends_do_not_interleave(serve):
    def on_tunnel(ws, principal, environ):
        def burst(tag):
            for i in range(200):
                ws.send_message([b"%s%03d" % (tag, i), b"z" * (i * 997 % 50_000)])
        jobs = [gevent.spawn(burst, b"X"), gevent.spawn(burst, b"Y")]
        gevent.joinall(jobs, raise_error=True)
        ws.recv_message()  # wait for the client to close

    port = serve(on_tunnel=on_tunnel)
    ws = ws_connect(port)
    got = [ws.recv_message() for _ in range(400)]
    for tag in (b"X", b"Y"):
        mine = [m for m in got if m[:1] == tag]
        assert [int(m[1:4]) for m in mine] == list(range(200))
        assert all(m[4:] == b"z" * (int(m[1:4]) * 997 % 50_000) for m in mine)
    ws.close()


# --- garbage after the upgrade --------------------------------------------------

@pytest.mark.parametrize("garbage,code", [
    (b"\xff" * 32, 1002),                                    # reserved bits + opcode
    (b"\x82\x05hello", 1002),                                # unmasked client frame
    (b"\x81\x82abcd" + wsc.mask(b"hi", b"abcd"), 1003),       # text message
    (b"\x80\x80abcd", 1002),                                 # continuation first
])
def test_garbage_gets_close_and_server_keeps_serving(serve, garbage, code):
    port = serve()
    raw = upgraded(port)
    raw.send(garbage)
    opcode, payload = raw.frame()
    assert opcode == wsc.OP_CLOSE and wsc.decode_close(payload)[0] == code
    assert raw.eof()
    raw.close()
    ws = ws_connect(port)
    ws.send_message([b"still alive"])
    assert ws.recv_message() == b"still alive"
    ws.close()


# --- handshake timeout ----------------------------------------------------------

def test_header_timeout_drops_silent_client(serve):
    port = serve(header_timeout=0.3)
    raw = Raw(port)
    t0 = time.monotonic()
    assert raw.eof(timeout=3)
    assert time.monotonic() - t0 < 2
    assert raw.buf == b""
    raw.close()


def test_header_timeout_is_a_deadline_not_per_read(serve):
    port = serve(header_timeout=0.4)
    raw = Raw(port)
    raw.send(b"GET / HTTP/1.1\r\n")
    t0 = time.monotonic()

    def trickle():
        try:
            for _ in range(30):
                gevent.sleep(0.1)       # a header line every 0.1 s: each read is in time
                raw.send(b"X-Slow: 1\r\n")
        except OSError:
            pass

    g = gevent.spawn(trickle)
    assert raw.eof(timeout=3)
    assert time.monotonic() - t0 < 2
    g.kill()
    raw.close()


def test_keepalive_idle_connection_dropped(serve):
    port = serve(keepalive_timeout=0.3)
    raw = Raw(port)
    raw.send(plain_request(port, "/"))
    assert raw.response()[0] == "HTTP/1.1 200 OK"
    assert raw.eof(timeout=3)
    raw.close()


def test_upgraded_connection_has_no_timeout(serve):
    port = serve(header_timeout=0.2)
    ws = ws_connect(port)
    gevent.sleep(0.5)                   # idle past the header timeout
    ws.send_message([b"late but fine"])
    assert ws.recv_message() == b"late but fine"
    ws.close()


# --- throughput (printed, not asserted) ----------------------------------------

@pytest.mark.bench
def test_throughput_ws_echo(serve, capsys):
    total = 256 << 20
    chunk = 256 << 10
    port = serve(max_message=1 << 20)
    ws = ws_connect(port, max_message=1 << 20)
    data = os.urandom(chunk)
    received = [0]

    def reader():
        while received[0] < total:
            msg = ws.recv_message()
            assert msg is not None
            received[0] += len(msg)

    t0 = time.perf_counter()
    r = gevent.spawn(reader)
    for _ in range(total // chunk):
        ws.send_message([data])
    r.join(timeout=60)
    elapsed = time.perf_counter() - t0
    assert received[0] == total
    ws.close()
    with capsys.disabled():
        print("\n[throughput] ws:// echo of %d MiB in %d KiB messages: %.2f s, %.0f MiB/s each way"
              % (total >> 20, chunk >> 10, elapsed, total / elapsed / (1 << 20)))


def test_small_constants_sane():
    assert wsconn.SMALL_PAYLOAD < wsconn.RECV_BUFFER
