"""End to end through real third-party clients: curl and PySocks, over wss:// with pinning."""

import subprocess

import pytest

from tests.support import recv_all, recv_exact, socks_connect


def curl(*args):
    result = subprocess.run(["curl", "-sS", "--max-time", "30", *args],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@pytest.mark.parametrize("mode", ["--socks5-hostname", "--socks5"])
def test_curl_socks5(tunnel, http_target, mode):
    base, blob = http_target
    proxy = "127.0.0.1:%d" % tunnel.setup.proxy_port
    assert curl(mode, proxy, base + "/1000000") == blob[:1000000]


def test_curl_socks5_hostname_resolves_on_the_server(tunnel, http_target):
    base, blob = http_target
    if "[::1]" in base:
        pytest.skip("localhost name check uses the IPv4 target")
    url = base.replace("127.0.0.1", "localhost") + "/2048"
    assert curl("--socks5-hostname", "127.0.0.1:%d" % tunnel.setup.proxy_port, url) == blob[:2048]


def test_curl_http_connect(tunnel, http_target):
    base, blob = http_target
    proxy = "http://127.0.0.1:%d" % tunnel.setup.proxy_port
    assert curl("-p", "-x", proxy, base + "/") == blob


def test_curl_plain_http_proxy_absolute_form(tunnel, http_target):
    base, blob = http_target
    proxy = "http://127.0.0.1:%d" % tunnel.setup.proxy_port
    assert curl("-x", proxy, base + "/4096") == blob[:4096]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_pysocks_echo(tunnel, host):
    from tests.support import EchoTarget

    target = EchoTarget("::1" if host == "::1" else "127.0.0.1")
    try:
        sock = socks_connect(tunnel.proxy, host, target.port)
        sock.sendall(b"ping" * 1000)
        sock.shutdown(1)
        assert recv_all(sock) == b"ping" * 1000
        sock.close()
    finally:
        target.close()


def test_half_close_app_still_gets_the_reply(tunnel, echo):
    sock = socks_connect(tunnel.proxy, "127.0.0.1", echo.port)
    payload = bytes(range(256)) * 4096
    sock.sendall(payload)
    sock.shutdown(1)          # no more from the app; the reply must still arrive
    assert recv_all(sock) == payload
    sock.close()


def test_a_server_that_speaks_first_gets_through_fast_open(tunnel):
    """An app that waits for its server (SSH, SMTP) sends nothing after the
    SOCKS5 reply (fast_open answers before the server connected): the
    server's banner still arrives."""
    from gevent.server import StreamServer

    def banner(sock, _address):
        sock.sendall(b"SSH-2.0-test\r\n")
        sock.recv(16)
        sock.close()

    target = StreamServer(("127.0.0.1", 0), banner)
    target.start()
    try:
        sock = socks_connect(tunnel.proxy, "127.0.0.1", target.server_port)
        assert recv_exact(sock, 14) == b"SSH-2.0-test\r\n"
        sock.sendall(b"SSH-2.0-client\r\n")
        sock.close()
    finally:
        target.stop()
