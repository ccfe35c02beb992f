"""Sans-IO tests of the E2E AEAD channel (afb.codec.aead): handshake, records, keys."""

import base64
import os
import stat
import time

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afb import keys
from afb.codec import aead, frames
from afb.errors import AfbError, ConfigError, ProtocolError, VersionMismatch

CIPHERS = [aead.CIPHER_CHACHA20_POLY1305, aead.CIPHER_AES_256_GCM]
PRIV, PUB = aead.generate_static_key()
BINDING = b"\x42" * 32


def handshake(cipher=aead.CIPHER_CHACHA20_POLY1305, allowed=None, *, pub=PUB, priv=PRIV,
              client_binding=BINDING, server_binding=BINDING, rekey_bytes=aead.REKEY_BYTES):
    """A full handshake -> (client, server, (c_sealer, c_opener), (s_sealer, s_opener))."""
    client = aead.ClientHandshake(pub, client_binding, cipher, rekey_bytes=rekey_bytes)
    server = aead.ServerHandshake(priv, server_binding, allowed, rekey_bytes=rekey_bytes)
    reply, s_sealer, s_opener = server.respond(client.start())
    c_sealer, c_opener = client.finish(reply)
    return client, server, (c_sealer, c_opener), (s_sealer, s_opener)


def flip(data, index, bit=0x01):
    out = bytearray(data)
    out[index] ^= bit
    return bytes(out)


# --- handshake ------------------------------------------------------------------

@pytest.mark.parametrize("cipher", CIPHERS)
def test_handshake_round_trip(cipher):
    client, server, (cs, co), (ss, so) = handshake(cipher)
    assert client.cipher == server.cipher == cipher == cs.cipher == so.cipher
    assert client.transcript_hash == server.transcript_hash
    for size in (0, 1, 1000, 70000):
        data = os.urandom(size)
        assert so.open(cs.seal([data])) == data
        assert co.open(ss.seal([data])) == data
    # Parts of every bytes-like kind are concatenated.
    parts = [frames.header(frames.DATA, 1, 5), memoryview(b"hello"), bytearray(b"!"), b""]
    assert so.open(cs.seal(parts)) == b"".join(bytes(p) for p in parts)


def test_hello_sizes_and_layout():
    client = aead.ClientHandshake(PUB, BINDING, "aes-256-gcm")
    hello = client.start()
    assert len(hello) == aead.CLIENT_HELLO_SIZE == 55
    assert hello[:4] == aead.MAGIC and hello[4] == aead.VERSION
    assert hello[5] == aead.MSG_CLIENT_HELLO and hello[6] == aead.CIPHER_AES_256_GCM
    reply, _, _ = aead.ServerHandshake(PRIV, BINDING).respond(hello)
    assert len(reply) == aead.SERVER_HELLO_SIZE == 55
    assert reply[:6] == aead.MAGIC + bytes([aead.VERSION, aead.MSG_SERVER_HELLO])


def test_fresh_ephemerals_every_time():
    hellos = {aead.ClientHandshake(PUB, BINDING).start() for _ in range(5)}
    assert len(hellos) == 5
    server = [aead.ServerHandshake(PRIV, BINDING).respond(
        aead.ClientHandshake(PUB, BINDING).start())[0] for _ in range(5)]
    assert len({reply[7:39] for reply in server}) == 5


@pytest.mark.parametrize("pref,allowed,chosen", [
    (1, (1, 2), 1), (2, (1, 2), 2), (2, (1,), 1), (1, ("aes-256-gcm",), 2),
    ("chacha20-poly1305", "chacha20-poly1305", 1), (2, None, 2), (1, None, 1),
])
def test_cipher_negotiation(pref, allowed, chosen):
    client, server, (cs, _), (_, so) = handshake(pref, allowed)
    assert client.cipher == server.cipher == chosen
    assert so.open(cs.seal([b"x"])) == b"x"


def test_unknown_cipher_preference_gets_the_servers_choice():
    client = aead.ClientHandshake(PUB, BINDING)
    hello = bytearray(client.start())
    hello[6] = 0x77
    # The server answers with its own first cipher; the client notices that its
    # hello was changed (the transcripts differ), so tampering cannot pass.
    server = aead.ServerHandshake(PRIV, BINDING, ["aes-256-gcm"])
    reply, _, _ = server.respond(bytes(hello))
    assert server.cipher == aead.CIPHER_AES_256_GCM
    with pytest.raises(aead.HandshakeError):
        client.finish(reply)


def test_wrong_pinned_key_is_refused_clearly():
    _other_priv, other_pub = aead.generate_static_key()
    with pytest.raises(aead.HandshakeError,
                       match="server key does not match the pinned key") as info:
        handshake(pub=other_pub)
    assert info.value.close_code == aead.CLOSE_E2E_FAILED


def test_different_binding_fails():
    with pytest.raises(aead.HandshakeError, match="does not match"):
        handshake(client_binding=b"token A", server_binding=b"token B")
    with pytest.raises(aead.HandshakeError):
        handshake(client_binding=b"", server_binding=BINDING)


def test_tampered_client_hello_fails_on_the_client():
    for index in range(7, aead.CLIENT_HELLO_SIZE):      # eph key and random
        client = aead.ClientHandshake(PUB, BINDING)
        hello = client.start()
        try:
            reply, _, _ = aead.ServerHandshake(PRIV, BINDING).respond(flip(hello, index))
        except aead.HandshakeError:
            continue        # the flipped key became a low-order point
        with pytest.raises(aead.HandshakeError):
            client.finish(reply)


def test_tampered_server_hello_fails():
    for index in range(aead.SERVER_HELLO_SIZE):
        for bit in (0x01, 0x80):
            client = aead.ClientHandshake(PUB, BINDING, 1)
            reply, _, _ = aead.ServerHandshake(PRIV, BINDING, (1, 2)).respond(client.start())
            with pytest.raises(ProtocolError):
                client.finish(flip(reply, index, bit))


def test_cipher_downgrade_by_a_middlebox_fails():
    client = aead.ClientHandshake(PUB, BINDING, 2)
    reply, _, _ = aead.ServerHandshake(PRIV, BINDING, (2, 1)).respond(client.start())
    forged = bytearray(reply)
    forged[6] = 1
    with pytest.raises(aead.HandshakeError, match="does not match"):
        client.finish(bytes(forged))


def test_version_mismatch_is_clear_on_both_sides():
    client = aead.ClientHandshake(PUB, BINDING)
    hello = client.start()
    with pytest.raises(VersionMismatch,
                       match="E2E protocol version mismatch: client speaks 2, we speak 1") as info:
        aead.ServerHandshake(PRIV, BINDING).respond(flip(hello, 4, 0x03))
    assert info.value.close_code == 4001
    reply, _, _ = aead.ServerHandshake(PRIV, BINDING).respond(hello)
    with pytest.raises(VersionMismatch, match="server speaks 9") as info:
        client.finish(flip(reply, 4, 0x08))
    assert info.value.peer_version == 9


def test_bad_magic_and_plain_tunnel_hello():
    server = aead.ServerHandshake(PRIV, BINDING)
    tunnel_hello = frames.frame(frames.HELLO, 0, frames.hello_payload(1, 1 << 18, 1 << 20))
    with pytest.raises(aead.HandshakeError, match="plain tunnel HELLO"):
        server.respond(tunnel_hello)
    with pytest.raises(aead.HandshakeError, match="not an E2E hello"):
        server.respond(b"GET / HTTP/1.1\r\n" + b"x" * 60)
    client = aead.ClientHandshake(PUB, BINDING)
    client.start()
    with pytest.raises(aead.HandshakeError, match="not an E2E hello"):
        client.finish(b"XXXX" + bytes(51))


def test_wrong_message_type():
    client = aead.ClientHandshake(PUB, BINDING)
    hello = client.start()
    with pytest.raises(aead.HandshakeError, match="message type 0x01, expected 0x02"):
        client.finish(hello)                      # a reflected ClientHello
    reply, _, _ = aead.ServerHandshake(PRIV, BINDING).respond(hello)
    with pytest.raises(aead.HandshakeError, match="message type 0x02, expected 0x01"):
        aead.ServerHandshake(PRIV, BINDING).respond(reply)


def test_truncated_and_long_hellos():
    client = aead.ClientHandshake(PUB, BINDING)
    hello = client.start()
    server = aead.ServerHandshake(PRIV, BINDING)
    for size in range(len(hello)):
        with pytest.raises(aead.HandshakeError):
            server.respond(hello[:size])
    with pytest.raises(aead.HandshakeError, match="56 bytes, expected 55"):
        server.respond(hello + b"\x00")
    reply, _, _ = server.respond(hello)
    for size in range(len(reply)):
        with pytest.raises(aead.HandshakeError):
            client.finish(reply[:size])
    client.finish(reply)       # the failures above left the handshake usable


def test_low_order_ephemeral_keys_are_refused():
    client = aead.ClientHandshake(PUB, BINDING)
    hello = client.start()
    zeroed = hello[:7] + bytes(32) + hello[39:]
    with pytest.raises(aead.HandshakeError, match="invalid client ephemeral key"):
        aead.ServerHandshake(PRIV, BINDING).respond(zeroed)
    reply, _, _ = aead.ServerHandshake(PRIV, BINDING).respond(hello)
    forged = reply[:7] + b"\x01" + bytes(31) + reply[39:]
    with pytest.raises(aead.HandshakeError, match="invalid server ephemeral key"):
        client.finish(forged)


def test_handshake_objects_are_single_use():
    client = aead.ClientHandshake(PUB, BINDING)
    with pytest.raises(RuntimeError):
        client.finish(b"")
    hello = client.start()
    with pytest.raises(RuntimeError):
        client.start()
    server = aead.ServerHandshake(PRIV, BINDING)
    reply, _, _ = server.respond(hello)
    with pytest.raises(RuntimeError):
        server.respond(hello)
    client.finish(reply)
    with pytest.raises(RuntimeError):
        client.finish(reply)


# --- records --------------------------------------------------------------------

@pytest.fixture(params=CIPHERS, ids=["chacha", "aesgcm"])
def channel(request):
    _c, _s, (cs, co), (ss, so) = handshake(request.param)
    return cs, so, ss, co


def test_records_in_order(channel):
    cs, so, ss, co = channel
    for i in range(50):
        assert so.open(cs.seal([b"c2s %d" % i])) == b"c2s %d" % i
        assert co.open(ss.seal([b"s2c %d" % i])) == b"s2c %d" % i
    assert cs.counter == so.counter == ss.counter == co.counter == 50


def test_replayed_record_fails(channel):
    cs, so, _, _ = channel
    record = cs.seal([b"pay me once"])
    assert so.open(record) == b"pay me once"
    with pytest.raises(aead.RecordError, match="failed authentication"):
        so.open(record)


def test_reordered_records_fail(channel):
    cs, so, _, _ = channel
    first, second = cs.seal([b"one"]), cs.seal([b"two"])
    with pytest.raises(aead.RecordError):
        so.open(second)
    with pytest.raises(aead.RecordError, match="dead"):
        so.open(first)          # the channel stays dead


def test_dropped_record_fails(channel):
    cs, so, _, _ = channel
    assert so.open(cs.seal([b"a"])) == b"a"
    cs.seal([b"dropped by a middlebox"])
    with pytest.raises(aead.RecordError):
        so.open(cs.seal([b"c"]))


def test_directions_use_different_keys(channel):
    cs, so, ss, co = channel
    with pytest.raises(aead.RecordError):
        co.open(cs.seal([b"reflected"]))      # a record bounced back to its sender
    with pytest.raises(aead.RecordError):
        so.open(ss.seal([b"reflected"]))


@pytest.mark.parametrize("where", ["header", "ciphertext", "tag"])
@pytest.mark.parametrize("bit", [0x01, 0x80])
def test_modified_record_fails(channel, where, bit):
    cs, so, _, _ = channel
    record = cs.seal([os.urandom(100)])
    index = {"header": 0, "ciphertext": 50, "tag": len(record) - 1}[where]
    with pytest.raises(aead.RecordError) as info:
        so.open(flip(record, index, bit))
    assert info.value.close_code == aead.CLOSE_E2E_FAILED
    assert isinstance(info.value, ProtocolError)
    with pytest.raises(aead.RecordError, match="dead"):
        so.open(record)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_every_single_bit_flip_of_a_small_record_fails(cipher):
    key = os.urandom(32)
    record = aead.RecordSealer(cipher, key).seal([b"tiny"])
    assert aead.RecordOpener(cipher, key).open(record) == b"tiny"
    for index in range(len(record)):
        for bit in range(8):
            with pytest.raises(aead.RecordError):
                aead.RecordOpener(cipher, key).open(flip(record, index, 1 << bit))


@pytest.mark.parametrize("cipher", CIPHERS)
def test_truncated_records_fail(cipher):
    key = os.urandom(32)
    record = aead.RecordSealer(cipher, key).seal([os.urandom(300)])
    for size in list(range(0, 40)) + [len(record) - 16, len(record) - 1]:
        with pytest.raises(aead.RecordError):
            aead.RecordOpener(cipher, key).open(record[:size])
    with pytest.raises(aead.RecordError, match="truncated"):
        aead.RecordOpener(cipher, key).open(b"\x01" + bytes(15))
    with pytest.raises(aead.RecordError, match="unknown E2E record type 0x02"):
        aead.RecordOpener(cipher, key).open(b"\x02" + bytes(16))
    # A record cut at any point cannot pass for a shorter record either.
    with pytest.raises(aead.RecordError, match="failed authentication"):
        aead.RecordOpener(cipher, key).open(record[:-1])


@pytest.mark.parametrize("cipher", CIPHERS)
def test_wire_format_counter_nonce_never_reused(cipher):
    key = os.urandom(32)
    raw = {1: ChaCha20Poly1305, 2: AESGCM}[cipher](key)
    sealer = aead.RecordSealer(cipher, key)
    records = [sealer.seal([b"same plaintext"]) for _ in range(300)]
    assert len(set(records)) == 300          # same plaintext, never the same record
    for counter, record in enumerate(records):
        assert record[0] == aead.REC_DATA
        nonce = counter.to_bytes(12, "big")
        assert raw.decrypt(nonce, record[1:], record[:1]) == b"same plaintext"
    assert sealer.counter == 300
    # The confirmation nonce is out of the counter's reach.
    assert aead.CONFIRM_NONCE != (aead.MAX_RECORDS - 1).to_bytes(12, "big")


@pytest.mark.parametrize("cipher", CIPHERS)
def test_counter_refuses_to_wrap(cipher):
    key = os.urandom(32)
    sealer, opener = aead.RecordSealer(cipher, key), aead.RecordOpener(cipher, key)
    sealer.counter = opener.counter = aead.MAX_RECORDS - 1
    assert opener.open(sealer.seal([b"last"])) == b"last"
    with pytest.raises(aead.RecordError, match="exhausted"):
        sealer.seal([b"one too many"])
    with pytest.raises(aead.RecordError, match="dead"):
        sealer.seal([b"still dead"])
    with pytest.raises(aead.RecordError, match="exhausted"):
        opener.open(b"\x01" + bytes(16))


@pytest.mark.parametrize("cipher", CIPHERS)
def test_key_updates(cipher):
    _c, _s, (cs, co), (ss, so) = handshake(cipher, rekey_bytes=10_000)
    first = cs._key
    data = os.urandom(3000)
    for _ in range(40):
        assert so.open(cs.seal([data])) == data
        assert co.open(ss.seal([data])) == data
    assert cs.key_updates == so.key_updates == ss.key_updates == co.key_updates >= 10
    assert cs._key == so._key and ss._key == co._key and cs._key != ss._key
    assert cs._key != first


def test_key_update_flag_is_authenticated():
    key = os.urandom(32)
    sealer = aead.RecordSealer(1, key, rekey_bytes=50)
    opener = aead.RecordOpener(1, key)
    record = sealer.seal([bytes(100)])            # carries the key-update flag
    assert record[0] == aead.REC_DATA | aead.FLAG_KEY_UPDATE
    with pytest.raises(aead.RecordError):
        opener.open(flip(record, 0, aead.FLAG_KEY_UPDATE))


@pytest.mark.parametrize("cipher", CIPHERS)
def test_fallback_without_encrypt_into_interoperates(cipher):
    key = os.urandom(32)
    fast = aead.RecordSealer(cipher, key, use_into=True)
    slow = aead.RecordSealer(cipher, key, use_into=False)
    parts = [b"head", memoryview(os.urandom(5000))]
    for _ in range(3):
        a, b = fast.seal(parts), slow.seal(parts)
        assert a == b and isinstance(a, bytes) and isinstance(b, bytes)


def test_seal_view_reuses_its_buffer():
    key = os.urandom(32)
    sealer = aead.RecordSealer(1, key, use_into=True)
    opener = aead.RecordOpener(1, key)
    first = sealer.seal_view([b"a" * 1000])
    assert opener.open(first) == b"a" * 1000
    second = sealer.seal_view([b"b" * 10])
    assert opener.open(second) == b"b" * 10
    if aead.HAVE_INTO:
        assert isinstance(second, memoryview)


@pytest.mark.parametrize("cipher", [1, 2])
def test_many_parts_are_gathered_without_a_join(cipher):
    key = os.urandom(32)
    sealer = aead.RecordSealer(cipher, key, use_into=True)
    slow = aead.RecordSealer(cipher, key, use_into=False)
    opener = aead.RecordOpener(cipher, key)
    parts = [os.urandom(n) for n in (9, 70000, 1, 0, 200000)] + [memoryview(b"tail")]
    for _ in range(3):            # the staging buffer is reused each time
        record = bytes(sealer.seal_view(parts))
        assert record == slow.seal(parts)
        assert opener.open(record) == b"".join(bytes(p) for p in parts)
    big = [os.urandom(aead.POOL_BUFFER), b"more"]      # grows past the first buffer size
    assert opener.open(sealer.seal_view(big)) == b"".join(big)


@pytest.mark.parametrize("cipher", [1, 2])
def test_open_view_pools_large_plaintexts_while_nobody_views_them(cipher):
    key = os.urandom(32)
    sealer = aead.RecordSealer(cipher, key)
    opener = aead.RecordOpener(cipher, key)
    small = opener.open_view(sealer.seal([b"s" * 100]))
    assert small == b"s" * 100 and isinstance(small, bytes)
    first_data, second_data = os.urandom(256 * 1024), os.urandom(256 * 1024)
    first = opener.open_view(sealer.seal([first_data]))
    assert bytes(first) == first_data
    second = opener.open_view(sealer.seal([second_data]))   # `first` is alive: another buffer
    assert bytes(first) == first_data and bytes(second) == second_data
    if aead.HAVE_DECRYPT_INTO:
        assert isinstance(first, memoryview)
        assert first.obj is not second.obj
        first_buffer = id(first.obj)      # (holding the object itself would keep it busy)
        del first
        third = opener.open_view(sealer.seal([b"t" * 50000]))
        assert id(third.obj) == first_buffer and bytes(third) == b"t" * 50000      # reused
    huge = os.urandom(aead.POOL_BUFFER + 1)
    assert bytes(opener.open_view(sealer.seal([huge]))) == huge
    with pytest.raises(aead.RecordError, match="failed authentication"):
        opener.open_view(flip(sealer.seal([second_data]), 100))


# --- fuzz ---------------------------------------------------------------------

def _only_afb_errors(call, data):
    try:
        call(data)
    except AfbError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_server_respond(data):
    _only_afb_errors(aead.ServerHandshake(PRIV, BINDING).respond, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_client_finish(data):
    client = aead.ClientHandshake(PUB, BINDING)
    client.start()
    _only_afb_errors(client.finish, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 54), st.integers(1, 255), st.booleans())
def test_fuzz_mutated_hellos(index, xor, on_server):
    client = aead.ClientHandshake(PUB, BINDING)
    hello = client.start()
    server = aead.ServerHandshake(PRIV, BINDING)
    if on_server:
        _only_afb_errors(server.respond, flip(hello, index, xor))
    else:
        reply, _, _ = server.respond(hello)
        with pytest.raises(AfbError):
            client.finish(flip(reply, index, xor))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(CIPHERS))
def test_fuzz_record_open(data, cipher):
    opener = aead.RecordOpener(cipher, bytes(32))
    with pytest.raises(aead.RecordError):
        opener.open(data)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=8), st.sampled_from(CIPHERS))
def test_fuzz_parts_round_trip(parts, cipher):
    key = os.urandom(32)
    sealer, opener = aead.RecordSealer(cipher, key), aead.RecordOpener(cipher, key)
    for _ in range(2):
        assert opener.open(sealer.seal(parts)) == b"".join(parts)


def test_garbage_types_raise_afb_errors():
    with pytest.raises(AfbError):
        aead.ServerHandshake(PRIV, BINDING).respond(12345)
    with pytest.raises(AfbError):
        aead.RecordOpener(1, bytes(32)).open(None)


# --- keys and names ----------------------------------------------------------------

def test_static_key_files(tmp_path):
    path = str(tmp_path / "e2e.key")
    pem, pub = aead.generate_static_key()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert len(base64.b64decode(pub)) == 32
    assert keys.save_static_key(path, pem) == pub
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = keys.load_static_key(path)
    assert aead.public_key_b64(loaded) == pub == aead.public_key_b64(pem)
    raw = bytes(32)
    assert aead.public_key_b64(raw) == aead.public_key_b64(aead.private_key_from(raw))
    # The loaded key works in a handshake against the pinned base64.
    client = aead.ClientHandshake(pub, b"", 1)
    reply, _, _ = aead.ServerHandshake(loaded, b"").respond(client.start())
    client.finish(reply)


def test_static_key_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        keys.load_static_key(str(tmp_path / "missing.key"))
    jwt_private, _ = keys.make_jwt_keys()
    path = str(tmp_path / "jwt.key")
    keys.write_secret(path, jwt_private)
    with pytest.raises(ConfigError, match="not X25519"):
        keys.load_static_key(path)
    with pytest.raises(ConfigError, match="32 raw bytes"):
        aead.private_key_from(b"short")


@pytest.mark.parametrize("text,error", [
    ("not base64 !!", "not valid base64"),
    (base64.b64encode(bytes(31)).decode(), "got 31 bytes"),
    ("", "got 0 bytes"),
])
def test_bad_pinned_public_keys(text, error):
    with pytest.raises(ConfigError, match=error):
        aead.ClientHandshake(text, b"")


def test_public_key_forms():
    raw = base64.b64decode(PUB)
    assert aead.parse_public_key(PUB) == raw
    assert aead.parse_public_key(" %s\n" % PUB) == raw
    assert aead.parse_public_key(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    assert aead.parse_public_key(raw) == raw


def test_cipher_names():
    assert aead.cipher_id("ChaCha20-Poly1305") == aead.CIPHER_CHACHA20_POLY1305
    assert aead.cipher_id("aes_256_gcm") == aead.CIPHER_AES_256_GCM
    assert aead.cipher_id(2) == 2
    assert aead.default_cipher() in CIPHERS
    for bad in ("des", 0, 3, True, None):
        with pytest.raises(ConfigError):
            aead.cipher_id(bad)
    with pytest.raises(ConfigError):
        aead.ServerHandshake(PRIV, b"", [])


# --- speed (printed, not asserted) -------------------------------------------------

def _rate(func, size, seconds=0.4):
    count = 0
    start = time.perf_counter()
    while True:
        func()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count * size / elapsed / 1e6


@pytest.mark.bench
@pytest.mark.parametrize("cipher", CIPHERS, ids=["chacha20-poly1305", "aes-256-gcm"])
def test_seal_open_speed(cipher, capsys):
    size = 256 * 1024
    key = os.urandom(32)
    parts = [frames.header(frames.DATA, 1, size - 10), memoryview(os.urandom(size - 10))]
    sealer = aead.RecordSealer(cipher, key)
    record = bytes(sealer.seal_view(parts))
    opener = aead.RecordOpener(cipher, key)
    results = {}
    for name, func in (
            ("seal_view", lambda: sealer.seal_view(parts)),
            ("seal", lambda: sealer.seal(parts)),
            ("open", lambda: _open_again(opener, record))):
        results[name] = max(_rate(func, size) for _ in range(3))
    with capsys.disabled():
        print("\n[aead] %s, 256 KiB records%s: %s" % (
            aead.cipher_name(cipher), "" if aead.HAVE_INTO else " (no encrypt_into)",
            ", ".join("%s %.0f MB/s" % item for item in results.items())))


def _open_again(opener, record):
    opener.counter = 0      # reopen the same record: measures open() alone
    opener._dead = False
    return opener.open(record)
