"""Bad input and failures: a clear reply or close, one log line, other streams unaffected."""

import hashlib
import logging
import socket
import struct
import time

import gevent
import pytest

from afb import PROTOCOL_VERSION
from afb.codec import frames
from afb.codec import websocket as wsc
from afb.errors import AuthError
from afb.policy.auth import issue_token
from afb.transport import tls, wsclient
from afb.transport.secure_channel import client_secure
from tests.support import (
    PROXY_LOGGERS,
    InProcessTunnel,
    Setup,
    recv_all,
    recv_exact,
    socks_connect,
    wait_until,
)


class Background:
    """An echo stream that keeps flowing through the proxy while a test misbehaves."""

    def __init__(self, proxy, port):
        self.sock = socks_connect(proxy, "127.0.0.1", port)
        self.rounds = 0
        self.error = None
        self.greenlet = gevent.spawn(self._run)

    def _run(self):
        try:
            while True:
                self.sock.sendall(b"k" * 4096)
                recv_exact(self.sock, 4096)
                self.rounds += 1
                gevent.sleep(0.01)          # paced: a steady stream, not a flood
        except Exception as exc:  # noqa: BLE001 - reported by check()
            self.error = exc

    def flowing(self, rounds=20):
        """Assert the stream goes on for ``rounds`` more echoes (0.2 s at least)."""
        before = self.rounds
        wait_until(lambda: self.error is not None or self.rounds >= before + rounds, 20)
        assert self.error is None and self.rounds >= before + rounds, (self.error, self.rounds)

    def close(self):
        self.greenlet.kill()
        self.sock.close()

    def check(self):
        self.flowing()
        self.close()


def _raw(proxy, payload):
    sock = socket.create_connection(proxy, timeout=5)
    sock.sendall(payload)
    try:
        return recv_all(sock)
    except ConnectionResetError:
        return b"<reset>"
    finally:
        sock.close()


REQ_HEAD = b"\x05\x01\x00"


@pytest.mark.parametrize("payload, expected", [
    (b"\x05\x00", b"\x05\xff"),                                       # no methods offered
    (b"\x05\x01\x02", b"\x05\xff"),                                   # only user/pass offered
    (REQ_HEAD + b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", b"\x05\x00\x05\x07"),  # BIND
    (REQ_HEAD + b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50", b"\x05\x00\x05\x07"),  # unknown cmd
    (REQ_HEAD + b"\x05\x01\x00\x09\x7f\x00\x00\x01\x00\x50", b"\x05\x00\x05\x08"),  # bad ATYP
    (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b""),                   # SOCKS4: closed
    (b"\x16\x03\x01\x02\x00\x01", b""),                               # TLS to the proxy port
    (b"FOO bar\r\n\r\n", b"HTTP/1.1 400"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 400"),          # origin-form: no proxy
])
def test_malformed_proxy_requests_get_a_clear_reply_and_one_log_line(
        tunnel, echo, caplog, payload, expected):
    background = Background(tunnel.proxy, echo.port)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="afb.apps"):
        answer = _raw(tunnel.proxy, payload)
        assert wait_until(lambda: _proxy_lines(caplog), 5), "no log line"
        background.flowing()                   # meanwhile: time for a second line, if any
        lines = _proxy_lines(caplog)
    assert answer.startswith(expected) and (expected or answer in (b"", b"<reset>"))
    assert len(lines) == 1, [r.getMessage() for r in lines]
    background.close()


def _proxy_lines(caplog):
    return [r for r in caplog.records if r.name in PROXY_LOGGERS]


def test_handshake_timeout_drops_a_silent_local_client(setup):
    with InProcessTunnel(setup) as running:
        running.client.proxy.handshake_timeout = 0.3
        sock = socket.create_connection(running.proxy, timeout=5)
        sock.sendall(b"\x05")      # a greeting that never completes
        started = time.monotonic()
        assert sock.recv(10) == b""
        assert time.monotonic() - started < 3
        sock.close()


# --- the server side: raw WebSocket peers -------------------------------------------

def _raw_tunnel(setup, token=None, hello=True, version=PROTOCOL_VERSION):
    """A tunnel peer speaking the protocol by hand (inside the E2E channel if the setup has it)."""
    token = token or setup.token
    ws = wsclient.connect(setup.url, headers={"Authorization": "Bearer " + token},
                          ssl_context=tls.client_context(pin=setup.pin), pin=setup.pin)
    if setup.e2e:
        ws = client_secure(ws, setup.e2e_public_key, hashlib.sha256(token.encode()).digest(),
                           None, 5)
    if hello:
        hello = frames.hello_payload(version, 65536, 1 << 20)
        ws.send_message([frames.frame(frames.HELLO, 0, hello)])
    return ws


def _raw_sock(ws):
    """The TCP/TLS socket under a tunnel WebSocket (below the E2E channel, if any)."""
    return getattr(ws, "ws", ws)._sock


def _frames_until(ws, wanted_type, limit=20):
    for _ in range(limit):
        message = ws.recv_message()
        if message is None:
            return None
        for ftype, _flags, sid, payload in frames.iter_frames(message):
            if ftype == wanted_type:
                return sid, bytes(payload)
    raise AssertionError("no %s frame" % frames.frame_name(wanted_type))


def _end_of_tunnel(ws, limit=20):
    """The next message that is not the server's PING (one leaves as a tunnel starts):
    None when the server closed the tunnel."""
    for _ in range(limit):
        message = ws.recv_message()
        if message is None or any(ftype != frames.PING
                                  for ftype, _f, _s, _p in frames.iter_frames(message)):
            return message
    raise AssertionError("only PINGs")


def test_unknown_frame_type_resets_that_stream_only(tunnel, echo, caplog):
    background = Background(tunnel.proxy, echo.port)
    ws = _raw_tunnel(tunnel.setup)
    assert _frames_until(ws, frames.HELLO) is not None
    with caplog.at_level(logging.WARNING, logger="afb.transport.session"):
        ws.send_message([frames.frame(0x7F, 5, b"?")])
        sid, payload = _frames_until(ws, frames.RST)
    assert sid == 5 and b"unknown frame type" in payload
    assert sum("unknown frame type" in r.getMessage() for r in caplog.records) == 1
    ws.send_message([frames.frame(frames.PING, 0, frames.ping_payload(42))])
    assert _frames_until(ws, frames.PONG) == (0, frames.ping_payload(42))   # the tunnel lives on
    ws.close()
    background.check()


def test_oversized_frame_header_closes_that_tunnel_with_1009(tunnel, echo):
    background = Background(tunnel.proxy, echo.port)
    ws = _raw_tunnel(tunnel.setup)
    assert _frames_until(ws, frames.HELLO) is not None
    # A masked binary frame header claiming 4 GiB, and no payload.
    _raw_sock(ws).sendall(bytes([0x82, 0xFF]) + struct.pack("!Q", 4 << 30) + b"mask")
    assert _end_of_tunnel(ws) is None
    assert ws.peer_close_code == 1009
    background.check()


def test_garbage_after_the_upgrade_closes_with_1002(tunnel, echo):
    background = Background(tunnel.proxy, echo.port)
    ws = _raw_tunnel(tunnel.setup, hello=False)
    _raw_sock(ws).sendall(b"\x8f\x80garbage-garbage")
    assert _end_of_tunnel(ws) is None
    assert ws.peer_close_code == 1002
    background.check()


def test_a_frame_truncated_inside_a_message_closes_that_tunnel(tunnel, echo):
    background = Background(tunnel.proxy, echo.port)
    ws = _raw_tunnel(tunnel.setup)
    assert _frames_until(ws, frames.HELLO) is not None
    ws.send_message([frames.header(frames.DATA, 1, 100) + b"short"])
    assert _end_of_tunnel(ws) is None
    assert ws.peer_close_code == 1002
    background.check()


def test_protocol_version_mismatch_is_named_on_both_sides(tunnel):
    ws = _raw_tunnel(tunnel.setup, version=PROTOCOL_VERSION + 7)
    sid, payload = _frames_until(ws, frames.HELLO)        # the server says what it speaks
    assert struct.unpack_from("!H", payload, 4)[0] == PROTOCOL_VERSION
    assert _end_of_tunnel(ws) is None
    assert ws.peer_close_code == 4001
    assert "version mismatch" in ws.peer_close_reason


@pytest.mark.parametrize("make_token, reason", [
    (lambda s: "not-a-jwt", "garbage"),
    (lambda s: issue_token(s.jwt_key, "late", 1, now=time.time() - 3600), "expired"),
    (lambda s: s.token[:-4] + "AAAA", "bad signature"),
])
def test_bad_tokens_are_refused_before_the_upgrade(tunnel, echo, make_token, reason):
    background = Background(tunnel.proxy, echo.port)
    with pytest.raises(AuthError, match="refused the WebSocket upgrade"):
        _raw_tunnel(tunnel.setup, token=make_token(tunnel.setup), hello=False)
    background.check()


def test_client_with_a_bad_token_answers_socks_failure_after_open_timeout(tmp_path, echo):
    setup = Setup(tmp_path, open_timeout=1)
    setup.token = "bad.token.here"
    setup.write()
    from afb.apps.client import ProxyClient
    from afb.apps.server import TunnelServer

    server = TunnelServer(setup.server_cfg())
    client = ProxyClient(setup.client_cfg())
    server.start()
    client.start()
    try:
        sock = socket.create_connection(("127.0.0.1", setup.proxy_port), timeout=10)
        sock.sendall(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", echo.port))
        assert recv_exact(sock, 2) == b"\x05\x00"
        assert recv_exact(sock, 2) == b"\x05\x01"      # general failure: no tunnel
        sock.close()
        assert "is not a JWT" in client.tunnel.last_error
    finally:
        client.stop(0)
        server.stop(0)


# --- SOCKS5 reply codes mapped from the server's OPEN_FAIL ---------------------------

def _socks_reply(proxy, host, port):
    sock = socket.create_connection(proxy, timeout=10)
    try:
        name = host.encode()
        sock.sendall(b"\x05\x01\x00\x05\x01\x00\x03" + bytes([len(name)]) + name
                     + struct.pack("!H", port))
        assert recv_exact(sock, 2) == b"\x05\x00"
        return recv_exact(sock, 10)[1]
    finally:
        sock.close()


def _closed_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_reply_codes_without_fast_open(tmp_path, echo):
    setup = Setup(tmp_path, fast_open=False)
    with InProcessTunnel(setup) as running:
        assert _socks_reply(running.proxy, "127.0.0.1", echo.port) == 0x00
        assert _socks_reply(running.proxy, "127.0.0.1", _closed_port()) == 0x05
        assert _socks_reply(running.proxy, "no-such-host.invalid", 80) == 0x04
        # the server's own endpoint is never a destination (no loops)
        assert _socks_reply(running.proxy, "127.0.0.1", setup.server_port) == 0x02


def test_destination_acl_refuses_loopback_by_default(tmp_path, echo):
    setup = Setup(tmp_path, fast_open=False, allow_private=False)
    with InProcessTunnel(setup) as running:
        assert _socks_reply(running.proxy, "127.0.0.1", echo.port) == 0x02
        assert _socks_reply(running.proxy, "localhost", echo.port) == 0x02   # resolved, refused


def test_fast_open_failure_resets_the_app_connection(tunnel, caplog):
    sock = socks_connect(tunnel.proxy, "127.0.0.1", _closed_port())   # optimistic success
    with caplog.at_level(logging.INFO):
        try:
            data = sock.recv(10)
        except ConnectionResetError:
            data = None
        assert wait_until(lambda: any("connection refused" in r.getMessage()
                                      for r in caplog.records), 5), caplog.text
    assert data in (None, b"")
    sock.close()


def test_streams_opened_while_the_tunnel_is_down_fail_after_open_timeout(tmp_path, echo):
    setup = Setup(tmp_path, open_timeout=1)
    from afb.apps.client import ProxyClient

    client = ProxyClient(setup.client_cfg())   # no server at all
    client.start()
    try:
        started = time.monotonic()
        assert _socks_reply(("127.0.0.1", setup.proxy_port), "127.0.0.1", echo.port) == 0x01
        assert 0.8 < time.monotonic() - started < 5
    finally:
        client.stop(0)


def test_masking_codec_is_used_for_client_frames():
    assert wsc.mask(b"\x00" * 8, b"abcd") == b"abcdabcd"
