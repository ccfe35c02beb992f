"""Probe resistance (issue 4, part 2): to anyone without a valid token the server is a web site.

Every probe -- no token, a bad, expired, not-yet-valid, foreign-key, wrong-audience or
revoked token, a token in the wrong place, a WebSocket upgrade with a bad key, version or
headers, a valid token on the wrong path, with HEAD or over HTTP/1.0 -- must get a
response byte-identical (status line, header lines in order except Date, body) to a
plain request for the same method, path and HTTP version.  Real ``TunnelServer`` over
TLS, real JWTs, built-in and custom decoy sites, token in a header or a cookie.
"""

import base64
import os
import socket
import ssl
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from afb.errors import AuthError
from afb.policy.auth import issue_token
from tests.support import Setup, readable

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def tls_exchange(port, request, source="127.0.0.1"):
    """``(status_line, [header lines], body)`` of the answer to *request* (raw bytes)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = CTX.wrap_socket(raw, server_hostname="localhost")
    try:
        sock.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise EOFError("connection closed before a full response head: %r" % buf)
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        if request.startswith(b"HEAD ") or lines[0].split()[1] == "101":
            length = 0
        while len(rest) < length:
            data = sock.recv(65536)
            if not data:
                break
            rest += data
        return lines[0], lines[1:], rest[:length]
    finally:
        sock.close()


def comparable(response):
    status, headers, body = response
    return status, [h for h in headers if not h.lower().startswith("date:")], body


def build(method, path, version, headers=(), port=443):
    lines = ["%s %s %s" % (method, path, version), "Host: localhost:%d" % port, *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def new_key():
    return base64.b64encode(os.urandom(16)).decode()


def upgrade_headers(key=None, version="13", upgrade="websocket", connection="Upgrade"):
    headers = []
    if upgrade is not None:
        headers.append("Upgrade: %s" % upgrade)
    if connection is not None:
        headers.append("Connection: %s" % connection)
    if key is not False:
        headers.append("Sec-WebSocket-Key: %s" % (new_key() if key is None else key))
    if version is not None:
        headers.append("Sec-WebSocket-Version: %s" % version)
    return headers


class Site:
    """A running TunnelServer and the tokens and paths to probe it with."""

    def __init__(self, directory, *, path, decoy, place):
        self.setup = Setup(directory)
        cfg = self.setup.server_cfg()
        cfg["server"]["path"] = path
        cfg["auth"]["token_place"] = place
        cfg["access"]["max_auth_failures"] = 0          # probes must not get us banned
        self.paths = [path, "/", "/index.html", "/missing.html"]
        if decoy:
            site = os.path.join(str(directory), "site")
            os.makedirs(os.path.join(site, "tunnel"))
            with open(os.path.join(site, "index.html"), "w") as f:
                f.write("<!doctype html><title>Home</title><p>Welcome to our shop.\n")
            with open(os.path.join(site, "about.html"), "w") as f:
                f.write("<!doctype html><title>About</title><p>About us.\n")
            with open(os.path.join(site, "tunnel", "index.html"), "w") as f:
                f.write("<!doctype html><title>Tunnels</title><p>Railway tunnels.\n")
            cfg["decoy"]["dir"] = site
            self.paths.append("/about.html")
        self.paths = list(dict.fromkeys(self.paths))
        self.path = path
        self.place = place
        from afb.apps.server import TunnelServer

        self.server = TunnelServer(cfg)
        self.server.start()
        self.port = self.server.address[1]
        self._tokens()
        self.baselines = {}

    def _tokens(self):
        key = self.setup.jwt_key
        now = time.time()
        other = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        good = self.setup.token
        head, payload, sig = good.split(".")
        flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
        self.tokens = {
            "valid": good,
            "tampered": ".".join((head, payload, flipped)),
            "other key": issue_token(other, "tester", 3600),
            "expired": issue_token(key, "tester", 60, now=now - 3600),
            "not yet valid": issue_token(key, "tester", 7200, now=now + 3600),
            "wrong audience": issue_token(key, "tester", 3600, audience="someone-else"),
            "revoked": issue_token(key, "revoked-user", 3600),
        }
        revoked = self.tokens["revoked"]
        verify = self.server.verifier.verify

        def verify_with_revocation(token):
            # stands in for the revocation store: this one token is revoked
            if token == revoked:
                raise AuthError("revoked")
            return verify(token)

        self.server.verifier.verify = verify_with_revocation

    def auth(self, token, right_place=True):
        """The header line carrying *token* in the configured place (or the other one)."""
        cookie = (self.place == "cookie") == right_place
        return "Cookie: theme=light; session=%s" % token if cookie else \
            "Authorization: Bearer %s" % token

    def baseline(self, method, path, version):
        key = (method, path, version)
        if key not in self.baselines:
            self.baselines[key] = comparable(tls_exchange(
                self.port, build(method, path, version, port=self.port)))
        return self.baselines[key]

    def close(self):
        self.server.stop(timeout=0)


SITES = {
    "builtin-site": dict(path="/tunnel", decoy=False, place="header"),
    "builtin-site-tunnel-at-root": dict(path="/", decoy=False, place="header"),
    "custom-site": dict(path="/tunnel", decoy=True, place="header"),
    "custom-site-cookie-token-at-root": dict(path="/", decoy=True, place="cookie"),
}


@pytest.fixture(scope="module", params=sorted(SITES))
def site(request, tmp_path_factory):
    running = Site(tmp_path_factory.mktemp(request.param), **SITES[request.param])
    yield running
    running.close()


def _token_probe(name):
    return lambda s: upgrade_headers() + [s.auth(s.tokens[name])]


PROBES = {
    # the one request that opens a tunnel -- a probe on every other path, method, version
    "valid token": _token_probe("valid"),
    "no token": lambda s: upgrade_headers(),
    "empty bearer": lambda s: upgrade_headers() + ["Authorization: Bearer "],
    "empty cookie": lambda s: upgrade_headers() + ["Cookie: session="],
    "garbage token": lambda s: upgrade_headers() + [s.auth("not-a-jwt")],
    "tampered signature": _token_probe("tampered"),
    "token of another key": _token_probe("other key"),
    "expired token": _token_probe("expired"),
    "token not yet valid": _token_probe("not yet valid"),
    "token for another audience": _token_probe("wrong audience"),
    "revoked token": _token_probe("revoked"),
    "valid token in the wrong place": lambda s: upgrade_headers() + [
        s.auth(s.tokens["valid"], right_place=False)],
    "basic auth": lambda s: upgrade_headers() + ["Authorization: Basic dXNlcjpwYXNzd29yZA=="],
    "key not base64": lambda s: upgrade_headers(key="not base64!!") + [s.auth(s.tokens["valid"])],
    "key too short": lambda s: upgrade_headers(key="c2hvcnQ=") + [s.auth(s.tokens["valid"])],
    "no key": lambda s: upgrade_headers(key=False) + [s.auth(s.tokens["valid"])],
    "version 8": lambda s: upgrade_headers(version="8") + [s.auth(s.tokens["valid"])],
    "no version": lambda s: upgrade_headers(version=None) + [s.auth(s.tokens["valid"])],
    "Upgrade: h2c": lambda s: upgrade_headers(upgrade="h2c") + [s.auth(s.tokens["valid"])],
    "no Upgrade header": lambda s: upgrade_headers(upgrade=None) + [s.auth(s.tokens["valid"])],
    "no Connection: Upgrade": lambda s: upgrade_headers(connection=None) + [
        s.auth(s.tokens["valid"])],
    "spoofed X-Forwarded-For": lambda s: upgrade_headers() + ["X-Forwarded-For: 127.0.0.1"],
    "subprotocol asked": lambda s: upgrade_headers() + ["Sec-WebSocket-Protocol: afb, chat"],
    "browser-like": lambda s: upgrade_headers() + [
        "Origin: https://localhost", "User-Agent: Mozilla/5.0", "Accept: */*",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"],
}


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("probe", list(PROBES))
def test_probe_gets_the_decoy_byte_for_byte(site, probe, method, version):
    headers = PROBES[probe](site)
    for path in site.paths:
        request = build(method, path, version, headers, port=site.port)
        answer = tls_exchange(site.port, request)
        if probe == "valid token" and (method, path, version) == ("GET", site.path, "HTTP/1.1"):
            assert answer[0] == "HTTP/1.1 101 Switching Protocols"    # the table is not vacuous
            continue
        plain = site.baseline(method, path, version)
        assert comparable(answer) == plain, (probe, method, path, version)
        status, lines, body = answer
        assert any(h.lower().startswith("date: ") for h in lines)
        assert "Server: nginx" in lines
        for line in [status] + readable(lines):
            assert "afb" not in line.lower() and "websocket" not in line.lower(), line
        assert not any(h.lower().startswith("sec-websocket") for h in lines)


def test_baselines_look_like_a_web_site(site):
    for version in ("HTTP/1.1", "HTTP/1.0"):
        status, lines, body = site.baseline("GET", "/", version)
        assert status.split()[1] == "200" and body.lower().startswith((b"<!doctype", b"<html"))
        head_status, head_lines, head_body = site.baseline("HEAD", "/", version)
        assert (head_status, head_lines, head_body) == (status, lines, b"")
        status, lines, body = site.baseline("GET", "/missing.html", version)
        assert status.split()[1] == "404" and b"<center>nginx</center>" in body
    blob = repr([(status, readable(lines), body)
                 for status, lines, body in site.baselines.values()]).lower()
    for word in ("afb", "tunnel client", "proxy", "gevent", "python", "websocket"):
        assert word not in blob


def test_the_valid_request_still_upgrades_with_its_token_in_place(site):
    request = build("GET", site.path, "HTTP/1.1",
                    upgrade_headers() + [site.auth(site.tokens["valid"])], port=site.port)
    status, lines, _ = tls_exchange(site.port, request)
    assert status == "HTTP/1.1 101 Switching Protocols"
    for line in readable(lines):
        assert "afb" not in line.lower()
    assert not any(h.lower().startswith("sec-websocket-protocol") for h in lines)
