"""Issue 9, items 10 and 11: 48 HTTP probes against afb and against a real nginx.

One nginx (Debian's binary, Debian's default nginx.conf settings and default
site, ``server_tokens off``) serves a site and afb's certificate on two
loopback ports: the reference, and the upstream of an afb server with
``[decoy] upstream``.  ``port_in_redirect off`` makes the reference answer
as nginx on port 443 does (a test cannot bind 443; afb's upstream block needs
it anyway).  A second afb server uses the built-in decoy on the same site.

Every probe of tests/http_probes.py goes to all three; what is compared is
every byte of the answers (``Date`` values blanked) and whether the server
closed the connection.  With the upstream, all must be alike; built in, the
probes listed in :data:`BUILTIN_DIFFERS` must differ and all others be alike,
so a fixed one and a new difference both fail the test.
"""

import os
import re
import shutil
import socket
import ssl
import time

import gevent
import pytest

from afb.transport.decoy import BUILTIN_SITE
from tests import http_probes
from tests.nginx_ref import DEBIAN_HTTP, NGINX, Nginx, main_conf
from tests.support import Setup, free_port

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")

#: Probes the built-in decoy still answers unlike nginx (and why).
BUILTIN_DIFFERS = {}
#: nginx's client_header_timeout (60 s) and keepalive_timeout (75 s), shortened for the
#: test on both sides ([decoy] header_timeout / keepalive_timeout for afb).
HEADER_TIMEOUT, KEEPALIVE_TIMEOUT = 2.0, 3.0

SERVER_BLOCK = """\
    server {{
        listen 127.0.0.1:{ref} ssl default_server;
        listen 127.0.0.1:{up} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        port_in_redirect off;
        client_header_timeout {header}ms;
        keepalive_timeout {keepalive}ms;
        root {site};
        index index.html index.htm index.nginx-debian.html;
        server_name _;
        location / {{
            try_files $uri $uri/ =404;
        }}
    }}
"""


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    base = tmp_path_factory.mktemp("probes")
    site = base / "site"
    os.makedirs(site / "docs")
    shutil.copy(os.path.join(BUILTIN_SITE, "index.html"), site / "index.html")
    (site / "docs" / "index.html").write_text("<html><body>docs</body></html>\n")
    setup = Setup(base / "afb")
    ref, up = free_port(), free_port()
    nginx = Nginx(base / "nginx", main_conf(str(base / "nginx"), DEBIAN_HTTP + SERVER_BLOCK.format(
        ref=ref, up=up, cert=setup.paths["cert"], key=setup.paths["key"], site=site,
        header=int(HEADER_TIMEOUT * 1000), keepalive=int(KEEPALIVE_TIMEOUT * 1000))), [ref, up])
    from afb.apps.server import TunnelServer

    servers = {}
    try:
        for name, upstream in (("builtin", ""), ("upstream", "127.0.0.1:%d" % up)):
            cfg = setup.server_cfg()
            cfg["server"]["listen"] = "127.0.0.1:%d" % free_port()
            cfg["decoy"]["dir"] = str(site)
            cfg["decoy"]["upstream"] = upstream
            cfg["access"]["max_auth_failures"] = 0
            cfg["access"]["max_pending_per_source"] = 0      # 48 probes at once from 127.0.0.1
            cfg["decoy"]["header_timeout"] = HEADER_TIMEOUT
            cfg["decoy"]["keepalive_timeout"] = KEEPALIVE_TIMEOUT
            servers[name] = TunnelServer(cfg)
            servers[name].start()
        first, _ = http_probes.run(ref, "tls", http_probes.req("GET / HTTP/1.1"))
        etag = re.search(rb"ETag: (\S+)", first).group(1).decode()
        modified = re.search(rb"Last-Modified: ([^\r]+)", first).group(1).decode()
        probes = http_probes.with_validators(http_probes.PROBES, etag, modified)
        ports = {"nginx": ref}
        ports.update((name, srv.address[1]) for name, srv in servers.items())
        answers = {name: http_probes.run_all(port, probes) for name, port in ports.items()}
        answers["ports"] = ports
        yield answers
    finally:
        for srv in servers.values():
            srv.stop(timeout=0)
        nginx.stop()


def _idle_close(port, stage):
    """Seconds until the server closes an idle connection, and how (clean TLS close or not)."""
    raw = socket.create_connection(("127.0.0.1", port), 10)
    sock = raw
    t0 = time.monotonic()
    if stage != "tcp":
        sock = http_probes._CTX.wrap_socket(raw, server_hostname="localhost",
                                            suppress_ragged_eofs=False)
        t0 = time.monotonic()
    if stage == "kept alive":
        sock.sendall(http_probes.req("HEAD / HTTP/1.1"))
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")
        t0 = time.monotonic()
    how = "close"
    try:
        while sock.recv(4096):
            pass
    except ssl.SSLEOFError:
        how = "TCP close without close_notify"
    except ConnectionResetError:
        how = "reset"
    finally:
        sock.close()
    return time.monotonic() - t0, how


@pytest.mark.parametrize("stage", ["tcp", "after TLS", "kept alive"])
def test_idle_connections_close_when_nginx_closes_them(bench, stage):
    jobs = {name: gevent.spawn(_idle_close, port, stage) for name, port in bench["ports"].items()}
    gevent.joinall(list(jobs.values()), timeout=20)
    got = {name: job.get() for name, job in jobs.items()}
    expected = KEEPALIVE_TIMEOUT if stage == "kept alive" else HEADER_TIMEOUT
    assert abs(got["nginx"][0] - expected) < 0.5, got            # the reference itself
    for name in ("builtin", "upstream"):
        assert abs(got[name][0] - got["nginx"][0]) < 0.5, got
        assert got[name][1] == got["nginx"][1], got


def _differing(answers, name):
    return sorted(p for p in answers["nginx"] if answers[name][p] != answers["nginx"][p])


def test_there_are_48_probes():
    assert len(http_probes.PROBES) == 48


def test_with_an_upstream_every_probe_is_answered_as_nginx_answers(bench):
    differ = _differing(bench, "upstream")
    assert not differ, {p: (bench["upstream"][p], bench["nginx"][p]) for p in differ}
    print("\n[probes] upstream: %d of 48 alike" % (48 - len(differ)))


def test_builtin_decoy_differs_only_where_listed(bench):
    differ = _differing(bench, "builtin")
    print("\n[probes] built-in: %d of 48 alike; differ: %s" % (48 - len(differ), differ))
    assert set(differ) == set(BUILTIN_DIFFERS), {
        p: (bench["builtin"][p], bench["nginx"][p]) for p in set(differ) ^ set(BUILTIN_DIFFERS)}
