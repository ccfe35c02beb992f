"""``[server] proxy_protocol = on`` on a real ``afb server`` process (issue 14).

127.0.0.5 stands in for the load balancer (the only address in
``trusted_proxies``), other 127.x addresses for clients connecting
directly, and documentation addresses (198.51.100.x, 2001:db8::x) for the
clients whose address the PROXY header carries.  A trusted peer must send a
header (v1 or v2) before TLS, whose address then counts for bans, the
per-source pending cap and the logs; anyone else is served as a direct
connection and never has a header read.  Everything talks to 127.0.0.0/8.
"""

import contextlib
import ipaddress
import socket
import ssl
import struct
import time

import pytest

from afb.codec.proxy_protocol import V2_SIGNATURE, proxy_v1_header
from afb.config import check_config
from tests.support import Daemon, Setup, wait_log, wait_until
from tests.test_probes import build, upgrade_headers

CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE
PROXY = "127.0.0.5"


def v2_header(src, sport, dst="127.0.0.1", dport=443):
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version != b.version:
        b = ipaddress.ip_address("::1")
    body = a.packed + b.packed + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + bytes((0x21, 0x11 if a.version == 4 else 0x21)) + \
        struct.pack("!H", len(body)) + body


def enable(setup, extra=""):
    """proxy_protocol = on, 127.0.0.5 trusted, in setup's server config."""
    with open(setup.server_conf) as handle:
        text = handle.read()
    text = text.replace("[server]\n", "[server]\nproxy_protocol = on\n", 1)
    text += "[access]\ntrusted_proxies = %s\n%s" % (PROXY, extra)
    with open(setup.server_conf, "w") as handle:
        handle.write(text)


@contextlib.contextmanager
def serving(tmp_path, access="", decoy=""):
    setup = Setup(tmp_path)
    enable(setup, access + decoy)
    server = Daemon("server", setup.server_conf, str(tmp_path / "server.log"))
    try:
        wait_log(server, "listening on")
        yield setup, server
    finally:
        server.stop()


def connect(port, source, header=b""):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw.sendall(header)
    return raw


def status(port, source, header=b"", request=None, tls=True):
    """The status line of the answer to *request* (GET /) sent after *header*."""
    raw = connect(port, source, header)
    try:
        sock = CTX.wrap_socket(raw, server_hostname="localhost") if tls else raw
        sock.sendall(request or build("GET", "/", "HTTP/1.1", port=port))
        buf = b""
        while b"\r\n" not in buf:
            data = sock.recv(4096)
            if not data:
                break
            buf += data
        return buf.partition(b"\r\n")[0].decode("latin-1")
    finally:
        raw.close()


def status_one_segment(port, source, header, trickle=False):
    """As :func:`status`, the ClientHello in the same send() as the header (the server
    must take the header's bytes only), or every byte of the header sent alone."""
    raw = connect(port, source)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = CTX.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        if trickle:
            for byte in header:
                raw.sendall(bytes((byte,)))
                time.sleep(0.002)
            header = b""
        raw.sendall(header + outgoing.read())
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                data = raw.recv(65536)
                assert data, "closed in the TLS handshake"
                incoming.write(data)
        tls.write(build("GET", "/", "HTTP/1.1", port=port))
        raw.sendall(outgoing.read())
        answer = b""
        while b"\r\n" not in answer:
            try:
                answer += tls.read(4096)
            except ssl.SSLWantReadError:
                data = raw.recv(65536)
                if not data:
                    break
                incoming.write(data)
        return answer.partition(b"\r\n")[0].decode("latin-1")
    finally:
        raw.close()


def upgrade(setup, token):
    headers = upgrade_headers() + ["Authorization: Bearer %s" % token]
    return build("GET", "/tunnel", "HTTP/1.1", headers, port=setup.server_port)


SWITCHING = "HTTP/1.1 101 Switching Protocols"


def test_bans_and_logs_follow_the_address_in_the_header(tmp_path):
    with serving(tmp_path, "max_auth_failures = 3\n") as (setup, server):
        port = setup.server_port
        bad, good = upgrade(setup, "not.a.token"), upgrade(setup, setup.token)
        # one prober behind the balancer: v1 headers, bad tokens -> banned
        for i in range(3):
            header = proxy_v1_header(("198.51.100.7", 40000 + i), ("127.0.0.1", port))
            assert status(port, PROXY, header, bad) != SWITCHING
        assert wait_log(server, "client 198.51.100.7 banned")
        banned = v2_header("198.51.100.7", 40100)
        assert status(port, PROXY, banned, good) != SWITCHING     # even with a good token
        # other clients behind the same balancer (v2, IPv4 and IPv6) and direct ones: in
        assert status(port, PROXY, v2_header("198.51.100.8", 40200), good) == SWITCHING
        assert status(port, PROXY, v2_header("2001:db8::8", 40300), good) == SWITCHING
        assert status(port, "127.0.0.1", b"", good) == SWITCHING
        # LOCAL (a balancer's own check) and UNKNOWN: the balancer's address, served
        # the header's bytes only are taken: ClientHello in the same segment, or the
        # header trickled a byte at a time (v2 with a TLV, v1)
        tlv = v2_header("198.51.100.10", 1)[:14] + b"\x00\x13" + \
            v2_header("198.51.100.10", 1)[16:] + b"\x04\x00\x04nop!"
        for header in (tlv, proxy_v1_header(("198.51.100.11", 2), ("127.0.0.1", port))):
            assert status_one_segment(port, PROXY, header).startswith("HTTP/1.1 200")
            assert status_one_segment(port, PROXY, header, trickle=True) \
                .startswith("HTTP/1.1 200")
        local = V2_SIGNATURE + b"\x20\x00\x00\x00"
        assert status(port, PROXY, local).startswith("HTTP/1.1 200")
        assert status(port, PROXY, b"PROXY UNKNOWN\r\n").startswith("HTTP/1.1 200")
        out = server.output()
    refused = [line for line in out.splitlines() if "refused WebSocket upgrade" in line]
    assert refused and all("198.51.100.7" in line for line in refused), refused
    assert "tester@198.51.100.8" in out and "tester@2001:db8::8" in out, out[-3000:]
    assert out.count("client 198.51.100.10:1\n") == 2 and out.count("198.51.100.11:2\n") == 2
    assert "banned" not in out.replace("client 198.51.100.7 banned", "").replace(
        "198.51.100.7 is banned", ""), out[-3000:]
    assert "Traceback" not in out


def test_a_trusted_peer_must_send_a_header_others_are_served_directly(tmp_path):
    with serving(tmp_path, decoy="[decoy]\nheader_timeout = 2\n") as (setup, server):
        port = setup.server_port
        # a TCP check (connect, close): no warning
        for _ in range(3):
            connect(port, PROXY).close()
        # the balancer without send-proxy-v2: closed before TLS, a few log lines for 12
        for _ in range(12):
            with pytest.raises((ssl.SSLError, OSError)):
                status(port, PROXY)
        # a trusted peer that starts a header and stops: closed at the deadline
        started = time.monotonic()
        sock = connect(port, PROXY, b"PROXY TCP4 198.51")
        sock.settimeout(10)
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
        finally:
            sock.close()
        waited = time.monotonic() - started
        assert 1.5 < waited < 5, waited
        # untrusted peers: served directly, and a header they send is never believed
        assert status(port, "127.0.0.1").startswith("HTTP/1.1 200")
        assert status(port, "127.0.0.6", proxy_v1_header(("198.51.100.9", 1), ("127.0.0.1", 2)),
                      tls=False).startswith("HTTP/1.1 400")
        assert status(port, "127.0.0.6", v2_header("198.51.100.9", 1), tls=False) \
            .startswith("HTTP/1.1 400")
        out = server.output()
    lines = [line for line in out.splitlines() if "from trusted proxy 127.0.0.5 closed:" in line]
    assert 1 <= len(lines) <= 5, lines                  # rate-limited (burst 5)
    assert "no PROXY protocol header: the connection starts with a TLS ClientHello" in lines[0]
    assert "send-proxy-v2" in lines[0]
    assert out.count("trusted proxy 127.0.0.5 closed before sending anything") == 3
    assert "198.51.100.9" not in out
    assert "Traceback" not in out


def _closed_soon(sock, wait=1.0):
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def test_the_pending_cap_counts_the_client_in_the_header(tmp_path):
    with serving(tmp_path, "max_pending_per_source = 2\n") as (setup, server):
        port = setup.server_port
        socks = []
        try:
            first = [connect(port, PROXY, v2_header("198.51.100.7", 41000 + i))
                     for i in range(4)]
            socks += first
            closed = [s for s in first if _closed_soon(s)]
            assert len(closed) == 2, len(closed)
            other = [connect(port, PROXY, v2_header("198.51.100.8", 42000 + i))
                     for i in range(2)]
            socks += other
            assert not any(_closed_soon(s, 0.5) for s in other)
            assert status(port, "127.0.0.1").startswith("HTTP/1.1 200")
        finally:
            for sock in socks:
                sock.close()
        assert wait_until(lambda: "198.51.100.7 (via 127.0.0.5) closed at once" in
                          server.output(), 5), server.output()[-3000:]
    assert "Traceback" not in server.output()


def test_config_check_refuses_proxy_protocol_without_trusted_proxies(tmp_path):
    setup = Setup(tmp_path)
    with open(setup.server_conf) as handle:
        text = handle.read()
    with open(setup.server_conf, "w") as handle:
        handle.write(text.replace("[server]\n", "[server]\nproxy_protocol = on\n", 1))
    lines = check_config(setup.server_conf, "server")
    assert len(lines) == 1 and "[server] proxy_protocol" in lines[0], lines
    assert "trusted_proxies is empty" in lines[0]
    with open(setup.server_conf, "a") as handle:
        handle.write("[access]\ntrusted_proxies = %s\n" % PROXY)
    assert check_config(setup.server_conf, "server") == []
