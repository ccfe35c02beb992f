"""wss:// end to end: TLS 1.3 contexts, SPKI pinning, the client's proxies."""

import base64
import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
import struct
import time

import gevent
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gevent.server import StreamServer

from afb.errors import AuthError, TlsError
from afb.transport import tls, wsclient
from afb.transport.wsserver import make_server

TOKEN = "tls-token"
PATH = "/ws"
AUTH = {"Authorization": "Bearer " + TOKEN}


def make_cert(directory, name="server"):
    """A self-signed EC certificate for 127.0.0.1 / ::1 / localhost; returns paths + pin."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path = os.path.join(directory, name + ".crt")
    key_path = os.path.join(directory, name + ".key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()
    return cert_path, key_path, pin


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("certs"))
    return make_cert(d, "server"), make_cert(d, "other")


def authorize(environ):
    if environ.get("HTTP_AUTHORIZATION") != "Bearer " + TOKEN:
        raise AuthError("bad token")
    return "user"


def echo(ws, principal, environ):
    while True:
        msg = ws.recv_message()
        if msg is None:
            return
        ws.send_message([msg])


@pytest.fixture
def wss(certs):
    servers = []
    (cert, key, pin), _ = certs

    def start(host="127.0.0.1", **kw):
        kw.setdefault("authorize", authorize)
        kw.setdefault("path", PATH)
        kw.setdefault("max_message", 16 << 20)
        srv = make_server((host, 0), kw.pop("on_tunnel", echo),
                          ssl_context=tls.server_context(cert, key), **kw)
        srv.start()
        servers.append(srv)
        return srv.server_port, pin

    yield start
    for srv in servers:
        srv.stop(timeout=1)


def url(port, host="127.0.0.1"):
    return "wss://%s:%d%s" % (host, port, PATH)


# --- pinning ----------------------------------------------------------------

def test_pin_of_der_matches_spki_hash(certs):
    (cert_path, _, pin), _ = certs
    with open(cert_path, "rb") as f:
        der = x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)
    assert tls.spki_pin_of_der(der) == pin


def test_wss_echo_with_pin_1_and_8_mib(wss):
    port, pin = wss()
    ws = wsclient.connect(url(port), headers=AUTH, pin=pin, timeout=5, max_message=16 << 20)
    assert ws._sock.version() == "TLSv1.3"
    for size in (1 << 20, 8 << 20):
        data = os.urandom(size)
        ws.send_message([data[:1000], data[1000:]])
        assert ws.recv_message() == data
    ws.close(1000, "done")


@pytest.mark.bench
def test_throughput_wss_stream(wss, capsys):
    port, pin = wss()
    ws = wsclient.connect(url(port), headers=AUTH, pin=pin, timeout=5)
    total, chunk = 32 << 20, 64 << 10
    data = os.urandom(chunk)
    got = [0]

    def reader():
        while got[0] < total:
            got[0] += len(ws.recv_message())

    t0 = time.perf_counter()
    r = gevent.spawn(reader)
    for _ in range(total // chunk):
        ws.send_message([data])
    r.join(timeout=60)
    elapsed = time.perf_counter() - t0
    assert got[0] == total
    ws.close()
    with capsys.disabled():
        print("\n[throughput] wss:// echo of %d MiB in %d KiB messages: %.2f s, %.0f MiB/s each way"
              % (total >> 20, chunk >> 10, elapsed, total / elapsed / (1 << 20)))


def test_wss_many_small_messages(wss):
    port, pin = wss()
    ws = wsclient.connect(url(port), headers=AUTH, pin=pin, timeout=5)
    received = []

    def reader():
        for _ in range(500):
            received.append(ws.recv_message())

    r = gevent.spawn(reader)
    for i in range(500):
        ws.send_message([struct.pack("!I", i), b"p" * (i * 37 % 3000)])
    r.join(timeout=10)
    assert [struct.unpack("!I", m[:4])[0] for m in received] == list(range(500))
    ws.close()


def test_wrong_pin_names_both_pins(wss, certs):
    port, pin = wss()
    _, (_, _, other_pin) = certs
    with pytest.raises(TlsError) as info:
        wsclient.connect(url(port), headers=AUTH, pin=other_pin, timeout=5)
    msg = str(info.value)
    assert "pin mismatch" in msg
    assert "expected %s" % other_pin in msg and "got %s" % pin in msg


def test_pin_list_allows_rotation(wss, certs):
    port, pin = wss()
    _, (_, _, other_pin) = certs
    ws = wsclient.connect(url(port), headers=AUTH, pin="%s,%s" % (other_pin, pin), timeout=5)
    ws.send_message([b"ok"])
    assert ws.recv_message() == b"ok"
    ws.close()


def test_ca_verification_without_pin(wss, certs):
    port, _ = wss()
    (cert_path, _, _), (other_cert, _, _) = certs
    ctx = tls.client_context(ca_file=cert_path)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    ws = wsclient.connect(url(port), headers=AUTH, ssl_context=ctx, timeout=5)
    ws.send_message([b"verified"])
    assert ws.recv_message() == b"verified"
    ws.close()
    with pytest.raises(TlsError):
        wsclient.connect(url(port), headers=AUTH,
                         ssl_context=tls.client_context(ca_file=other_cert),
                         timeout=5)


def test_tls_1_2_client_gets_no_tunnel(wss, certs):
    # TLS 1.2 is answered (as nginx does, for the decoy), but never upgraded
    port, _ = wss()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(AuthError, match="HTTP 404"):
        wsclient.connect(url(port), headers=AUTH, ssl_context=ctx, timeout=5)
    sctx = tls.server_context(*certs[0][:2])
    assert sctx.minimum_version <= ssl.TLSVersion.TLSv1_2
    assert tls.client_context(pin="sha256//x").minimum_version == ssl.TLSVersion.TLSv1_3


# --- refusals -----------------------------------------------------------------

def test_bad_token_is_auth_error_with_decoy_status(wss):
    port, pin = wss()
    with pytest.raises(AuthError) as info:
        wsclient.connect(url(port), headers={"Authorization": "Bearer nope"}, pin=pin, timeout=5)
    assert "HTTP 404" in str(info.value)
    wss_port2, _ = wss(path="/")
    with pytest.raises(AuthError, match="HTTP 200"):
        wsclient.connect("wss://127.0.0.1:%d/" % wss_port2, pin=pin, timeout=5)


def test_tls_handshake_timeout_and_plain_http_on_tls_port(wss):
    port, pin = wss(header_timeout=0.3)
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    t0 = time.monotonic()
    assert s.recv(100) == b""        # silent client dropped before any TLS
    assert time.monotonic() - t0 < 2
    s.close()
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while True:                      # as nginx: a 400 page, then the connection closes
        data = s.recv(4096)
        if not data:
            break
        answer += data
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answer.endswith(b"<center>The plain HTTP request was sent to HTTPS port</center>\r\n"
                           b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
    s.close()
    ws = wsclient.connect(url(port), headers=AUTH, pin=pin, timeout=5)
    ws.send_message([b"still serving"])
    assert ws.recv_message() == b"still serving"
    ws.close()


def test_connect_errors_are_oserror():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(OSError):
        wsclient.connect("ws://127.0.0.1:%d/" % port, timeout=2)
    with pytest.raises(ValueError):
        wsclient.connect("http://127.0.0.1/", timeout=2)


def test_parse_ws_url():
    assert wsclient.parse_ws_url("wss://[::1]:8443/a/b?x=1") == (True, "::1", 8443, "/a/b?x=1")
    assert wsclient.parse_ws_url("ws://example.test") == (False, "example.test", 80, "/")
    assert wsclient.parse_ws_url("wss://example.test") == (True, "example.test", 443, "/")


def test_ipv6_literal(wss):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        port, pin = wss(host="::1")
    except OSError:
        pytest.skip("::1 not available")
    ws = wsclient.connect("wss://[::1]:%d%s" % (port, PATH), headers=AUTH, pin=pin, timeout=5)
    ws.send_message([b"v6"])
    assert ws.recv_message() == b"v6"
    ws.close()


# --- proxies --------------------------------------------------------------------

def _relay(a, b):
    def pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
    gevent.joinall([gevent.spawn(pump, a, b), gevent.spawn(pump, b, a)])


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _socks5_handler(seen):
    def handle(client, addr):
        ver, nmethods = _recv_exact(client, 2)
        _recv_exact(client, nmethods)
        client.sendall(b"\x05\x00")
        ver, cmd, _, atyp = _recv_exact(client, 4)
        if atyp == 3:
            host = _recv_exact(client, _recv_exact(client, 1)[0]).decode()
        elif atyp == 1:
            host = socket.inet_ntoa(_recv_exact(client, 4))
        else:
            host = socket.inet_ntop(socket.AF_INET6, _recv_exact(client, 16))
        port = struct.unpack("!H", _recv_exact(client, 2))[0]
        seen.append(("socks5", atyp, host, port))
        if host not in ("127.0.0.1", "localhost"):
            client.sendall(b"\x05\x02\x00\x01\0\0\0\0\0\0")
            return
        upstream = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00")
        _relay(client, upstream)
    return handle


def _http_connect_handler(seen):
    def handle(client, addr):
        head = b""
        while b"\r\n\r\n" not in head:
            head += client.recv(1)
        target = head.split(b" ")[1].decode()
        host, port = target.rsplit(":", 1)
        seen.append(("http", host, int(port)))
        upstream = socket.create_connection(("127.0.0.1", int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        _relay(client, upstream)
    return handle


@pytest.mark.parametrize("scheme,host,expect", [
    ("socks5h", "localhost", ("socks5", 3, "localhost")),   # name resolved by the proxy
    ("socks5", "127.0.0.1", ("socks5", 1, "127.0.0.1")),
    ("http", "localhost", ("http", "localhost")),
])
def test_connect_through_proxy(wss, scheme, host, expect):
    port, pin = wss()
    seen = []
    handler = _socks5_handler(seen) if scheme.startswith("socks") else _http_connect_handler(seen)
    proxy = StreamServer(("127.0.0.1", 0), handler)
    proxy.start()
    try:
        ws = wsclient.connect(url(port, host), headers=AUTH, pin=pin, timeout=5,
                              proxy="%s://127.0.0.1:%d" % (scheme, proxy.server_port))
        ws.send_message([b"via proxy"])
        assert ws.recv_message() == b"via proxy"
        ws.close()
    finally:
        proxy.stop(timeout=1)
    assert seen and seen[0][:len(expect)] == expect and seen[0][-1] == port


def test_bad_proxy_url():
    with pytest.raises(ValueError):
        wsclient.connect("ws://127.0.0.1:1/", proxy="ftp://127.0.0.1:21", timeout=1)



def test_a_reset_under_a_blocked_writer_and_reader_ends_the_read_cleanly(wss):
    """The link is reset while the writer waits to send and the reader to receive (a
    cut mid-transfer): the writer's failure aborts the WebSocket, as a resumable
    session's does, and the reader, woken in the same loop turn, must end with None
    (or an OSError), not gevent's ValueError("Read on closed or unwrapped SSL
    socket"), which killed the session's greenlet and left its streams hanging
    (found by tests/test_faults_link.py)."""

    def reset_later(ws, principal, environ):
        gevent.sleep(0.3)               # never reads: the client's writer blocks
        ws._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws._sock.close()

    port, pin = wss(on_tunnel=reset_later)
    for _ in range(10):
        ws = wsclient.connect(url(port), headers=AUTH,
                              ssl_context=tls.client_context(pin=pin), timeout=5)

        def write(ws=ws):
            try:
                while True:
                    ws.send_message([bytes(1 << 20)])
            except OSError:
                ws.abort()

        writer = gevent.spawn(write)
        reader = gevent.spawn(ws.recv_message)
        writer.join(5)
        try:
            assert reader.get(timeout=5) is None
        except OSError:
            pass
