"""``[decoy] upstream``: the splice to a real web server (issue 9, item 10), on loopback.

A real nginx is the upstream; afb servers run in this process.  What is
checked beyond the 48 probes of tests/test_probe_suite.py: a valid tunnel
still opens (and pipelined bytes reach it) with an upstream set; a large
answer passes the splice intact; PROXY protocol gives nginx the client's
real address; an upstream that is down leaves the built-in decoy answering,
with a few log lines and then one summary a minute.
"""

import hashlib
import logging
import os

import pytest

from afb.apps.server import TunnelServer
from tests import http_probes
from tests.nginx_ref import DEBIAN_HTTP, NGINX, Nginx, main_conf
from tests.support import EchoTarget, InProcessTunnel, Setup, free_port, recv_exact, socks_connect

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")

SERVERS = """\
    log_format pp '$proxy_protocol_addr $remote_addr "$request" $status';
    server {{
        listen 127.0.0.1:{up} ssl;
        listen 127.0.0.1:{pp} ssl proxy_protocol;
        access_log {prefix}/upstream.log pp;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        server_tokens off;
        port_in_redirect off;
        root {site};
        index index.html;
        location / {{
            try_files $uri $uri/ =404;
        }}
    }}
"""
BLOB = os.urandom(3 << 20)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    base = tmp_path_factory.mktemp("upstream")
    os.makedirs(base / "site")
    (base / "site" / "index.html").write_text("<html><body>upstream site</body></html>\n")
    (base / "site" / "blob.bin").write_bytes(BLOB)
    setup = Setup(base / "afb")
    up, pp = free_port(), free_port()
    nginx = Nginx(base / "nginx", main_conf(str(base / "nginx"), DEBIAN_HTTP + SERVERS.format(
        up=up, pp=pp, prefix=base / "nginx", cert=setup.paths["cert"], key=setup.paths["key"],
        site=base / "site")), [up, pp])
    try:
        yield {"up": up, "pp": pp, "log": base / "nginx" / "upstream.log", "base": base}
    finally:
        nginx.stop()


def _server(setup, upstream, proxy_protocol=False):
    cfg = setup.server_cfg()
    cfg["decoy"]["upstream"] = upstream
    cfg["decoy"]["upstream_proxy_protocol"] = proxy_protocol
    server = TunnelServer(cfg)
    server.start()
    return server


def test_tunnel_opens_and_the_rest_goes_to_nginx(upstream, tmp_path):
    setup = Setup(tmp_path, server_extra="[decoy]\nupstream = 127.0.0.1:%d\n" % upstream["up"])
    echo = EchoTarget()
    try:
        with InProcessTunnel(setup) as running:
            sock = socks_connect(running.proxy, "127.0.0.1", echo.port)
            sock.sendall(b"through the tunnel")
            assert recv_exact(sock, 18) == b"through the tunnel"
            sock.close()
            answer, state = http_probes.run(setup.server_port, "tls",
                                            http_probes.req("GET / HTTP/1.1"), quiet=0.5)
            assert b"upstream site" in answer and state == "open"
            answer, _ = http_probes.run(setup.server_port, "tls",
                                        http_probes.req("GET /blob.bin HTTP/1.1"), quiet=1.0)
            body = answer.split(b"\r\n\r\n", 1)[1]
            assert hashlib.sha256(body).digest() == hashlib.sha256(BLOB).digest()
    finally:
        echo.close()


def test_proxy_protocol_gives_nginx_the_client_address(upstream, tmp_path):
    server = _server(Setup(tmp_path), "127.0.0.1:%d" % upstream["pp"], proxy_protocol=True)
    try:
        port = server.address[1]
        sock = http_probes.socket.create_connection(("127.0.0.1", port), 5,
                                                    source_address=("127.0.0.5", 0))
        tls = http_probes._CTX.wrap_socket(sock, server_hostname="localhost")
        tls.sendall(http_probes.req("GET /pp-check HTTP/1.1", "Connection: close"))
        assert tls.recv(100).startswith(b"HTTP/1.1 404 Not Found")
        tls.close()
    finally:
        server.stop(timeout=0)
    lines = upstream["log"].read_text().splitlines()
    assert any(line.startswith("127.0.0.5 127.0.0.1 \"GET /pp-check") for line in lines), lines


def test_upstream_down_leaves_the_builtin_decoy_and_rate_limited_lines(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="afb.transport.wsserver")
    server = _server(Setup(tmp_path), "127.0.0.1:%d" % free_port())
    try:
        for _ in range(12):
            answer, state = http_probes.run(server.address[1], "tls",
                                            http_probes.req("GET / HTTP/1.1"), quiet=0.3)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\nServer: nginx\r\n")
        answer, state = http_probes.run(server.address[1], "plain",
                                        http_probes.req("GET / HTTP/1.1"), quiet=0.3)
        assert b"The plain HTTP request was sent to HTTPS port" in answer and state == "closed"
    finally:
        server.stop(timeout=0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decoy upstream")]
    assert len(lines) == 5, lines                   # the burst; the rest go to the summary
    assert "more lines like \"decoy upstream unreachable\"" in caplog.text
