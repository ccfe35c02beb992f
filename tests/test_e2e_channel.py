"""The E2E channel wired into server and client: modes, keys, ciphers, clear failures."""

import logging
import os

import pytest

from afb import keys
from afb.codec import aead
from afb.config import check_config, load_config
from afb.errors import ConfigError
from afb.transport.secure_channel import ReplayConnection, SecureChannel
from tests.support import (
    InProcessTunnel,
    Setup,
    free_port,
    recv_exact,
    socks_connect,
    wait_until,
)


def _echo_once(proxy, port, data=b"e2e-ping" * 8):
    sock = socks_connect(proxy, "127.0.0.1", port, timeout=10)
    try:
        sock.sendall(data)
        return recv_exact(sock, len(data)) == data
    finally:
        sock.close()


def _server_channels(running):
    assert wait_until(lambda: running.server.sessions, 5), "no session on the server"
    return [s.ws for s in running.server.sessions]


def _wait_error(client, timeout=5.0):
    assert wait_until(lambda: client.tunnel.last_error, timeout, 0.02), \
        "the client kept no error"
    return client.tunnel.last_error


def _client_and_server(setup):
    from afb.apps.client import ProxyClient
    from afb.apps.server import TunnelServer

    server = TunnelServer(setup.server_cfg())
    client = ProxyClient(setup.client_cfg())
    server.start()
    client.start()
    return client, server


@pytest.mark.parametrize("tls", [True, False], ids=["wss", "ws"])
def test_e2e_is_on_by_default_in_generated_setups(tmp_path, echo, tls):
    setup = Setup(tmp_path, tls=tls)
    cfg = setup.client_cfg()
    assert cfg["e2e"]["server_key"] == setup.e2e_public_key
    assert setup.server_cfg()["e2e"]["mode"] == "required"
    with InProcessTunnel(setup) as running:
        assert isinstance(running.client.tunnel.session.ws, SecureChannel)
        assert _echo_once(running.proxy, echo.port)
        channels = _server_channels(running)
        assert all(isinstance(ws, SecureChannel) for ws in channels)


@pytest.mark.parametrize("cipher", ["chacha20-poly1305", "aes-256-gcm"])
def test_the_client_cipher_is_used_when_the_server_allows_it(tmp_path, echo, cipher):
    setup = Setup(tmp_path)
    with open(setup.client_conf) as handle:
        text = handle.read()
    with open(setup.client_conf, "w") as handle:
        handle.write(text.replace("[e2e]\n", "[e2e]\ncipher = %s\n" % cipher))
    with InProcessTunnel(setup) as running:
        assert _echo_once(running.proxy, echo.port)
        assert running.client.tunnel.session.ws.cipher == aead.cipher_id(cipher)
        assert [ws.cipher for ws in _server_channels(running)] == [aead.cipher_id(cipher)]


def test_a_cipher_the_server_does_not_allow_gets_the_servers_first(tmp_path, echo):
    setup = Setup(tmp_path)
    with open(setup.server_conf) as handle:
        text = handle.read()
    with open(setup.server_conf, "w") as handle:
        handle.write(text.replace("[e2e]\n", "[e2e]\nciphers = chacha20-poly1305\n"))
    with open(setup.client_conf) as handle:
        text = handle.read()
    with open(setup.client_conf, "w") as handle:
        handle.write(text.replace("[e2e]\n", "[e2e]\ncipher = aes-256-gcm\n"))
    with InProcessTunnel(setup) as running:
        assert _echo_once(running.proxy, echo.port)
        assert running.client.tunnel.session.ws.cipher == aead.CIPHER_CHACHA20_POLY1305


def test_optional_mode_serves_e2e_and_plain_clients(tmp_path, echo):
    setup = Setup(tmp_path, e2e=True, e2e_mode="optional")
    with InProcessTunnel(setup) as running:
        assert _echo_once(running.proxy, echo.port)
        assert isinstance(running.client.tunnel.session.ws, SecureChannel)
        # A second, plain client of the same server.
        from afb.apps.client import ProxyClient

        plain_cfg = setup.client_cfg()
        plain_cfg["e2e"]["server_key"] = ""
        plain_port = free_port()
        plain_cfg["client"]["listen"] = "127.0.0.1:%d" % plain_port
        plain = ProxyClient(plain_cfg)
        plain.start()
        try:
            session = plain.tunnel.get_session(10)
            assert not isinstance(session.ws, SecureChannel)
            assert _echo_once(("127.0.0.1", plain_port), echo.port)
            assert wait_until(lambda: len(running.server.sessions) >= 2, 5), \
                running.server.sessions
            kinds = sorted(type(s.ws).__name__ for s in running.server.sessions)
            assert kinds == ["ReplayConnection", "SecureChannel"]
        finally:
            plain.stop(0)


def test_required_mode_refuses_a_plain_client_with_a_clear_reason(tmp_path, caplog):
    setup = Setup(tmp_path, e2e=False, e2e_mode="required")
    caplog.set_level(logging.INFO)
    client, server = _client_and_server(setup)
    try:
        error = _wait_error(client)
        assert "requires E2E" in error and "[e2e] server_key" in error, error
        assert not server.sessions
    finally:
        client.stop(0)
        server.stop(0)
    server_lines = [r.getMessage() for r in caplog.records if r.name.startswith("afb.apps.server")]
    assert any("plain tunnel HELLO" in m for m in server_lines), server_lines


def test_a_wrong_pinned_key_stops_the_tunnel_with_an_error_line(tmp_path, caplog):
    setup = Setup(tmp_path)
    _pem, other = aead.generate_static_key()
    setup.e2e_public_key = other
    setup.write()
    caplog.set_level(logging.INFO)
    client, server = _client_and_server(setup)
    try:
        error = _wait_error(client)
        assert "does not match the pinned key" in error, error
    finally:
        client.stop(0)
        server.stop(0)
    errors = [r for r in caplog.records if r.name == "afb.transport.tunnel_client"
              and r.levelno == logging.ERROR]
    assert errors and "does not match the pinned key" in errors[0].getMessage()


def test_an_e2e_client_of_a_server_with_e2e_off_is_told_so(tmp_path):
    setup = Setup(tmp_path, e2e=True, e2e_mode="off")
    client, server = _client_and_server(setup)
    try:
        error = _wait_error(client)
        assert "E2E handshake failed" in error and "is E2E enabled on the server" in error, error
    finally:
        client.stop(0)
        server.stop(0)


def test_a_silent_client_is_dropped_after_the_handshake_timeout(tmp_path, caplog):
    from afb.transport import tls, wsclient

    setup = Setup(tmp_path)
    with open(setup.server_conf) as handle:
        text = handle.read()
    with open(setup.server_conf, "w") as handle:
        handle.write(text.replace("drain_timeout = 5\n",
                                  "drain_timeout = 5\nhandshake_timeout = 0.5\n"))
    caplog.set_level(logging.INFO)
    from afb.apps.server import TunnelServer

    server = TunnelServer(setup.server_cfg())
    server.start()
    try:
        ws = wsclient.connect(setup.url, headers={"Authorization": "Bearer " + setup.token},
                              ssl_context=tls.client_context(pin=setup.pin), pin=setup.pin)
        assert ws.recv_message() is None               # nothing sent: closed by the server
        assert ws.peer_close_code == aead.CLOSE_E2E_FAILED
        assert "no ClientHello" in ws.peer_close_reason
    finally:
        server.stop(0)
    assert any("no ClientHello" in r.getMessage() for r in caplog.records
               if r.name.startswith("afb.apps.server"))


def test_a_readable_e2e_key_is_refused(tmp_path):
    setup = Setup(tmp_path)
    os.chmod(setup.paths["e2e_key"], 0o644)
    from afb.apps.server import TunnelServer

    with pytest.raises(ConfigError, match="chmod 600"):
        TunnelServer(setup.server_cfg())


def test_mode_off_needs_no_key(tmp_path):
    setup = Setup(tmp_path, e2e=False)
    os.unlink(setup.paths["e2e_key"])
    from afb.apps.server import TunnelServer

    server = TunnelServer(setup.server_cfg())
    assert server.e2e.mode == "off" and server.e2e.key is None


def test_generated_keys_include_the_e2e_key(tmp_path):
    from afb.keys import generate_server_keys

    paths = generate_server_keys(str(tmp_path / "k"))
    assert os.stat(paths["e2e_key"]).st_mode & 0o777 == 0o600
    assert aead.public_key_b64(keys.load_static_key(paths["e2e_key"])) == paths["e2e_public_key"]


# --- config validation ----------------------------------------------------------------------

CLIENT = "[client]\nserver = wss://127.0.0.1:8443/\ntoken = a.b.c\n[e2e]\n"


def test_client_server_key_is_checked(tmp_path):
    _pem, good = aead.generate_static_key()
    path = tmp_path / "c.conf"
    path.write_text(CLIENT + "server_key = %s\n" % good)
    assert load_config(str(path), "client")["e2e"]["server_key"] == good
    path.write_text(CLIENT + "server_key = c2hvcnQ=\n")
    errors = check_config(str(path), "client")
    assert len(errors) == 1 and "[e2e] server_key" in errors[0] and ":5:" in errors[0]
    assert "e2e public key" in errors[0]
    path.write_text(CLIENT + "server_key = not base64!\n")
    assert check_config(str(path), "client")
    path.write_text(CLIENT + "cipher = des\n")
    errors = check_config(str(path), "client")
    assert len(errors) == 1 and "[e2e] cipher" in errors[0]
    path.write_text(CLIENT)
    cfg = load_config(str(path), "client")
    assert cfg["e2e"]["server_key"] == "" and cfg["e2e"]["cipher"] == "auto"


def test_server_e2e_section_is_checked(tmp_path):
    path = tmp_path / "s.conf"
    path.write_text("[server]\n[e2e]\nkey = keys/e2e.key\n")
    cfg = load_config(str(path), "server")
    assert cfg["e2e"]["key"] == str(tmp_path / "keys" / "e2e.key")       # resolved
    assert cfg["e2e"]["mode"] == "required"
    assert cfg["e2e"]["ciphers"] == ["aes-256-gcm", "chacha20-poly1305"]
    path.write_text("[server]\n[e2e]\nmode = sometimes\nciphers = aes-256-gcm, rot13\n")
    errors = check_config(str(path), "server")
    assert len(errors) == 2
    assert "[e2e] mode" in errors[0] and "required, optional, off" in errors[0]
    assert "[e2e] ciphers" in errors[1] and "rot13" in errors[1]
    path.write_text('[server]\n[e2e]\nciphers = ""\n')
    assert "at least one cipher" in check_config(str(path), "server")[0]


def test_replay_connection_gives_the_first_message_back_once():
    class Fake:
        closed = False
        on_pong = None

        def __init__(self):
            self.messages = [b"second", None]

        def recv_message(self):
            return self.messages.pop(0)

    fake = Fake()
    ws = ReplayConnection(fake, b"first")
    assert ws.recv_message() == b"first"
    assert ws.recv_message() == b"second"
    assert ws.recv_message() is None
    ws.on_pong = "callback"
    assert fake.on_pong == "callback" and ws.closed is False


def test_the_first_message_tells_e2e_from_plain():
    from afb.codec import frames
    from afb.transport.secure_channel import is_e2e_hello

    hello = aead.ClientHandshake(aead.generate_static_key()[1], b"x").start()
    assert is_e2e_hello(hello) and is_e2e_hello(memoryview(hello))
    assert not is_e2e_hello(frames.frame(frames.HELLO, 0, frames.hello_payload(1, 65536, 1 << 20)))
    assert not is_e2e_hello(b"") and not is_e2e_hello(None)
