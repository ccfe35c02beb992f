"""SecureChannel and the E2E handshakes over two real WsConnections on a socketpair."""

import os
import socket
import struct
import time

import gevent
import pytest

from afb.codec import aead
from afb.errors import CLOSE_VERSION_MISMATCH, ProtocolError, VersionMismatch
from afb.transport import secure_channel as sc
from afb.transport.session import Session
from afb.transport.wsconn import WsConnection

PRIV, PUB = aead.generate_static_key()
BINDING = b"sha256 of the upgrade's token...."
CIPHERS = [aead.CIPHER_CHACHA20_POLY1305, aead.CIPHER_AES_256_GCM]


@pytest.fixture
def wspair():
    sock_a, sock_b = socket.socketpair()
    ws_a = WsConnection(sock_a, client=True, max_message=1 << 20)
    ws_b = WsConnection(sock_b, client=False, max_message=1 << 20)
    yield ws_a, ws_b
    ws_a.close()
    ws_b.close()


def secure_pair(ws_a, ws_b, cipher=None, *, pub=PUB, client_binding=BINDING,
                server_binding=BINDING, allowed=None, timeout=5):
    """Both handshakes at once -> (client channel or exception, server channel or exception)."""
    server = gevent.spawn(sc.server_secure, ws_b, PRIV, server_binding, allowed, timeout)
    try:
        client = sc.client_secure(ws_a, pub, client_binding, cipher, timeout)
    except Exception as exc:     # noqa: BLE001 - returned for the test to check
        client = exc
    server.join(timeout + 1)
    return client, (server.value if server.successful() else server.exception)


@pytest.mark.parametrize("client_sends", [True, False], ids=["client", "server"])
def test_send_in_place_and_the_reused_client_buffer(wspair, client_sends):
    from afb.transport.wsconn import MAX_HEADER, POOL_BUFFER

    ws_a, ws_b = wspair
    sender, receiver = (ws_a, ws_b) if client_sends else (ws_b, ws_a)
    for size in (0, 1, 125, 126, 65535, 65536, 256 * 1024, POOL_BUFFER + 5, 3):
        data = os.urandom(size)
        buf = bytearray(MAX_HEADER + 7) + data
        job = gevent.spawn(sender.send_in_place, memoryview(buf)[7:], MAX_HEADER)
        assert bytes(receiver.recv_message()) == data
        job.get(timeout=5)
        # ... and send_message, whose client copy goes through one reused buffer.
        job = gevent.spawn(sender.send_message, [data[:5], memoryview(data)[5:]])
        assert bytes(receiver.recv_message()) == data
        job.get(timeout=5)
    with pytest.raises(ValueError):
        sender.send_in_place(bytearray(20), MAX_HEADER - 1)
    sender.close()
    with pytest.raises(BrokenPipeError):
        sender.send_in_place(bytearray(20), MAX_HEADER)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_round_trip(wspair, cipher):
    ws_a, ws_b = wspair
    client, server = secure_pair(ws_a, ws_b, cipher)
    assert isinstance(client, sc.SecureChannel) and isinstance(server, sc.SecureChannel)
    assert client.cipher == server.cipher == cipher
    for size in (0, 1, 100, 70000, 256 * 1024):
        data = os.urandom(size)
        # A socketpair buffers less than 256 KiB: send from another greenlet.
        sender = gevent.spawn(client.send_message, [data[:10], memoryview(data)[10:]])
        assert bytes(server.recv_message()) == data
        sender.get(timeout=5)
        sender = gevent.spawn(server.send_message, [data])
        assert bytes(client.recv_message()) == data
        sender.get(timeout=5)
    assert client.bytes_out == ws_a.bytes_out > 0 and server.bytes_in == ws_b.bytes_in > 0
    assert client.max_message == ws_a.max_message - aead.OVERHEAD
    assert client.client and not server.client
    client.close(1000, "bye")
    assert server.recv_message() is None
    assert (server.peer_close_code, server.peer_close_reason) == (1000, "bye")
    assert client.closed and server.closed
    with pytest.raises(BrokenPipeError):
        client.send_message([b"after close"])


@pytest.mark.parametrize("cipher", CIPHERS)
def test_round_trip_without_encrypt_into(wspair, cipher, monkeypatch):
    """With a cryptography older than ``encrypt_into`` (setup.py allows 41) the
    sealer's fallback record must still take the WebSocket header written in
    place in front of it (it was read-only bytes: TypeError on the first send)."""
    from afb.codec import aead_records

    monkeypatch.setattr(aead_records, "HAVE_INTO", False)
    ws_a, ws_b = wspair
    client, server = secure_pair(ws_a, ws_b, cipher)
    assert isinstance(client, sc.SecureChannel) and isinstance(server, sc.SecureChannel)
    assert not client.sealer._use_into and not server.sealer._use_into
    for size in (0, 1, 125, 126, 70000):      # each fits in the socketpair's buffer
        data = os.urandom(size)
        client.send_message([data[:3], memoryview(data)[3:]])
        assert bytes(server.recv_message()) == data
        server.send_message([data])
        assert bytes(client.recv_message()) == data


def test_ciphertext_on_the_wire(wspair):
    """What a TLS-terminating proxy would see: no plaintext, one record per message."""
    ws_a, ws_b = wspair
    client, server = secure_pair(ws_a, ws_b)
    secret = b"GET /secret HTTP/1.1\r\nHost: example.com\r\n\r\n" * 10
    client.send_message([secret])
    record = bytes(ws_b.recv_message())      # read below the channel
    assert len(record) == len(secret) + aead.OVERHEAD
    assert b"secret" not in record and b"example" not in record


def test_wrong_pinned_key(wspair):
    ws_a, ws_b = wspair
    _priv, other_pub = aead.generate_static_key()
    client, server = secure_pair(ws_a, ws_b, pub=other_pub)
    assert isinstance(client, aead.HandshakeError)
    assert "server key does not match the pinned key" in str(client)
    assert ws_a.closed
    # The server finished its half; the client's close tells it why.
    assert isinstance(server, sc.SecureChannel)
    assert server.recv_message() is None
    assert server.peer_close_code == aead.CLOSE_E2E_FAILED
    assert "pinned key" in server.peer_close_reason


def test_different_binding(wspair):
    ws_a, ws_b = wspair
    client, _server = secure_pair(ws_a, ws_b, client_binding=b"token A", server_binding=b"token B")
    assert isinstance(client, aead.HandshakeError)


def test_cipher_chosen_by_the_server(wspair):
    ws_a, ws_b = wspair
    client, server = secure_pair(ws_a, ws_b, "aes-256-gcm", allowed=["chacha20-poly1305"])
    assert client.cipher == server.cipher == aead.CIPHER_CHACHA20_POLY1305


def test_server_refuses_other_version(wspair):
    ws_a, ws_b = wspair
    server = gevent.spawn(sc.server_secure, ws_b, PRIV, BINDING, None, 5)
    hello = bytearray(aead.ClientHandshake(PUB, BINDING).start())
    hello[4] = 2
    ws_a.send_message([bytes(hello)])
    assert ws_a.recv_message() is None
    assert ws_a.peer_close_code == CLOSE_VERSION_MISMATCH
    assert "client speaks 2, we speak 1" in ws_a.peer_close_reason
    server.join(5)
    assert isinstance(server.exception, VersionMismatch)


def test_client_reports_the_servers_version_refusal(wspair):
    ws_a, ws_b = wspair

    def old_server():
        ws_b.recv_message()
        ws_b.close(CLOSE_VERSION_MISMATCH,
                   "E2E protocol version mismatch: client speaks 1, we speak 2")

    gevent.spawn(old_server)
    with pytest.raises(VersionMismatch, match="we speak 2"):
        sc.client_secure(ws_a, PUB, BINDING, None, 5)


def test_server_without_e2e(wspair):
    """An E2E client meets a server that expects the tunnel HELLO at once."""
    ws_a, ws_b = wspair

    def plain_server():
        try:
            Session(ws_b, client=False, ping_interval=0).handshake(timeout=5)
        except ProtocolError as exc:
            ws_b.close(exc.close_code, str(exc))    # what apps/server.py does

    gevent.spawn(plain_server)
    with pytest.raises(aead.HandshakeError, match="is E2E enabled on the server"):
        sc.client_secure(ws_a, PUB, BINDING, None, 5)


def test_client_without_e2e(wspair):
    """A plain client sends the tunnel HELLO to a server that requires E2E."""
    ws_a, ws_b = wspair
    server = gevent.spawn(sc.server_secure, ws_b, PRIV, BINDING, None, 5)
    with pytest.raises(ProtocolError, match="plain tunnel HELLO"):
        Session(ws_a, client=True, ping_interval=0).handshake(timeout=5)
    server.join(5)
    assert isinstance(server.exception, aead.HandshakeError)
    assert ws_a.peer_close_code == aead.CLOSE_E2E_FAILED


def test_server_hangs_up_during_the_handshake(wspair):
    ws_a, ws_b = wspair

    def hang_up():
        ws_b.recv_message()
        ws_b._sock.close()      # no close frame

    gevent.spawn(hang_up)
    with pytest.raises(aead.HandshakeError, match="closed the connection"):
        sc.client_secure(ws_a, PUB, BINDING, None, 5)
    assert ws_a.closed


def test_handshake_timeout(wspair):
    ws_a, _ws_b = wspair
    started = time.monotonic()
    with pytest.raises(aead.HandshakeError, match="no answer from the server within"):
        sc.client_secure(ws_a, PUB, BINDING, None, 0.3)
    assert time.monotonic() - started < 2
    assert ws_a.closed


def test_server_handshake_timeout(wspair):
    _ws_a, ws_b = wspair
    with pytest.raises(aead.HandshakeError, match="no ClientHello within"):
        sc.server_secure(ws_b, PRIV, BINDING, None, 0.3)
    assert ws_b.closed


@pytest.mark.parametrize("attack", ["replay", "garbage", "flip", "drop"])
def test_record_errors_close_the_websocket(wspair, attack):
    ws_a, ws_b = wspair
    client, server = secure_pair(ws_a, ws_b)
    client.send_message([b"fine"])
    assert server.recv_message() == b"fine"
    # A middlebox between the two WsConnections, simulated below the channel.
    if attack == "replay":
        record = client.sealer.seal([b"again"])
        ws_a.send_message([record])
        assert server.recv_message() == b"again"
        ws_a.send_message([record])
    elif attack == "garbage":
        ws_a.send_message([os.urandom(100)])
    elif attack == "flip":
        record = bytearray(client.sealer.seal([b"x" * 100]))
        record[40] ^= 0x10
        ws_a.send_message([bytes(record)])
    else:
        client.sealer.seal([b"never sent"])
        client.send_message([b"after a dropped record"])
    with pytest.raises(aead.RecordError):
        server.recv_message()
    assert server.closed
    assert client.recv_message() is None
    assert client.peer_close_code == aead.CLOSE_E2E_FAILED
    assert "E2E record" in client.peer_close_reason


def test_concurrent_senders_keep_counter_order(wspair):
    ws_a, ws_b = wspair
    client, server = secure_pair(ws_a, ws_b)

    def sender(tag):
        for i in range(200):
            client.send_message([b"%s %d " % (tag, i), os.urandom(i * 37)])
            if i % 7 == 0:
                gevent.sleep(0)

    senders = [gevent.spawn(sender, tag) for tag in (b"a", b"b", b"c", b"d")]
    got = [bytes(server.recv_message()) for _ in range(800)]
    gevent.joinall(senders, raise_error=True)
    for tag in (b"a", b"b", b"c", b"d"):
        mine = [int(m.split(b" ")[1]) for m in got if m.startswith(tag + b" ")]
        assert mine == list(range(200))


def test_tunnel_session_hello_over_the_channel(wspair):
    """The tunnel session runs unchanged on a SecureChannel."""
    ws_a, ws_b = wspair
    client, server = secure_pair(ws_a, ws_b)
    server_session = Session(server, client=False, ping_interval=0)
    other = gevent.spawn(server_session.handshake, 5)
    client_session = Session(client, client=True, ping_interval=0)
    client_session.handshake(timeout=5)
    other.get(timeout=5)
    assert client_session.peer_window == server_session.window


# --- throughput (printed, not asserted) -----------------------------------------------

def _exchange(end_a, end_b, total, chunk):
    """Send *total* bytes each way at once in *chunk*-sized messages; return seconds."""
    block = os.urandom(chunk)
    tail = block[4:]
    count = total // chunk

    def send(end):
        for i in range(count):
            end.send_message([struct.pack("!I", i), tail])

    def recv(end):
        for i in range(count):
            message = end.recv_message()
            assert message is not None and len(message) == chunk
            assert struct.unpack_from("!I", message)[0] == i
            # (bytes == bytes is a memcmp; comparing memoryviews is 50 times slower)
            assert memoryview(message)[4:].tobytes() == tail

    start = time.perf_counter()
    greenlets = [gevent.spawn(send, end_a), gevent.spawn(send, end_b),
                 gevent.spawn(recv, end_a), gevent.spawn(recv, end_b)]
    gevent.joinall(greenlets, timeout=120, raise_error=True)
    assert all(g.successful() for g in greenlets)
    return time.perf_counter() - start


@pytest.mark.parametrize("cipher", [None] + CIPHERS,
                         ids=["plain", "chacha20-poly1305", "aes-256-gcm"])
def test_both_ways_at_once_in_order_and_intact(wspair, cipher):
    ws_a, ws_b = wspair
    end_a, end_b = (ws_a, ws_b) if cipher is None else secure_pair(ws_a, ws_b, cipher)
    _exchange(end_a, end_b, 4 << 20, 256 << 10)


@pytest.mark.bench
@pytest.mark.parametrize("cipher", [None] + CIPHERS,
                         ids=["plain", "chacha20-poly1305", "aes-256-gcm"])
def test_throughput_32_mib_both_ways(wspair, cipher, capsys):
    ws_a, ws_b = wspair
    total, chunk = 32 << 20, 256 << 10
    if cipher is None:
        end_a, end_b, label = ws_a, ws_b, "plain WebSocket (no E2E)"
    else:
        end_a, end_b = secure_pair(ws_a, ws_b, cipher)
        label = "E2E %s" % aead.cipher_name(cipher)
    elapsed = _exchange(end_a, end_b, total, chunk)
    with capsys.disabled():
        print("\n[throughput] socketpair, %s: %d MiB each way at once in %d KiB messages, "
              "%.2f s, %.0f MiB/s each way (one process does both ends)"
              % (label, total >> 20, chunk >> 10, elapsed, total / elapsed / (1 << 20)))
