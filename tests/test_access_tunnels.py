"""Who may connect (issue 4, part 6), end to end on loopback.

Server: [access] allow/deny by client address (127.0.0.x sources stand in for other
clients), X-Forwarded-For from trusted proxies only, failed-auth bans.  Client:
allow_sources, SOCKS5 username/password (PySocks) and HTTP Proxy-Authorization (curl),
token in a cookie.  Refusals look like the decoy web site and cost one log line.
"""

import logging
import os
import socket
import subprocess

import pytest
import socks

from afb.apps.client import ProxyClient
from afb.apps.server import TunnelServer
from afb.errors import ConfigError, TunnelUnavailable
from afb.transport import wsclient
from tests.support import PROXY_LOGGERS, Setup, readable, recv_exact, socks_connect, wait_until
from tests.test_probes import build, comparable, tls_exchange, upgrade_headers

SERVER_LOG = "afb.transport.wsserver"


class Running:
    """TunnelServer (+ ProxyClient) from *setup*, configs adjusted by the test."""

    def __init__(self, setup, server=None, client=None, with_client=False):
        self.setup = setup
        cfg = setup.server_cfg()
        for (section, key), value in (server or {}).items():
            cfg[section][key] = value
        self.server = TunnelServer(cfg)
        self.client = None
        if with_client:
            ccfg = setup.client_cfg()
            for (section, key), value in (client or {}).items():
                ccfg[section][key] = value
            self.client = ProxyClient(ccfg)

    def __enter__(self):
        self.server.start()
        if self.client is not None:
            self.client.start()
        return self

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.stop(timeout=0)
        self.server.stop(timeout=0)

    @property
    def port(self):
        return self.server.address[1]

    @property
    def proxy(self):
        return ("127.0.0.1", self.setup.proxy_port)

    def upgrade(self, token=None, source="127.0.0.1", xff=None, path="/tunnel"):
        """Status line, comparable response of a raw upgrade request from *source*."""
        headers = upgrade_headers()
        if token is not None:
            headers.append("Authorization: Bearer %s" % token)
        if xff is not None:
            headers.append("X-Forwarded-For: %s" % xff)
        answer = tls_exchange(self.port, build("GET", path, "HTTP/1.1", headers, port=self.port),
                              source=source)
        return answer[0], comparable(answer)

    def plain(self, path="/tunnel", source="127.0.0.1"):
        return comparable(tls_exchange(self.port, build("GET", path, "HTTP/1.1", port=self.port),
                                       source=source))


SWITCHING = "HTTP/1.1 101 Switching Protocols"


def refusals(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == SERVER_LOG and "refused WebSocket upgrade" in r.getMessage()]


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


# --- server: allow / deny by client address ----------------------------------------

def test_server_allow_and_deny_lists_by_source_address(setup, caplog):
    access = {("access", "allow"): ["127.0.0.0/29"], ("access", "deny"): ["127.0.0.2"]}
    with Running(setup, server=access) as run:
        plain = run.plain()
        assert plain[0].split()[1] == "404"
        caplog.set_level(logging.INFO, logger=SERVER_LOG)
        assert run.upgrade(setup.token, source="127.0.0.1")[0] == SWITCHING
        assert run.upgrade(setup.token, source="127.0.0.3")[0] == SWITCHING
        caplog.clear()
        status, denied = run.upgrade(setup.token, source="127.0.0.2")       # deny wins
        assert denied == plain
        status, outside = run.upgrade(setup.token, source="127.0.0.9")      # not in allow
        assert outside == plain
        lines = refusals(caplog)
        assert len(lines) == 2
        assert "client 127.0.0.2 in the deny list" in lines[0]
        assert "client 127.0.0.9 not in the allow list" in lines[1]
        assert setup.token not in caplog.text
        # a refused address sees the same web site as everyone
        assert run.plain(source="127.0.0.2") == plain
        assert run.plain("/", source="127.0.0.9") == run.plain("/")


# --- server: X-Forwarded-For from trusted proxies only --------------------------------

def test_x_forwarded_for_believed_only_from_trusted_proxies(setup, caplog):
    access = {("access", "trusted_proxies"): ["127.0.0.1"],
              ("access", "deny"): ["198.51.100.0/24", "127.0.0.3"]}
    with Running(setup, server=access) as run:
        plain = run.plain()
        caplog.set_level(logging.INFO, logger=SERVER_LOG)
        # from the trusted proxy: the rightmost untrusted hop is the client
        assert run.upgrade(setup.token, xff="198.51.100.7")[1] == plain
        assert run.upgrade(setup.token, xff="203.0.113.9, 198.51.100.7")[1] == plain
        assert run.upgrade(setup.token, xff="198.51.100.7, 203.0.113.9")[0] == SWITCHING
        assert run.upgrade(setup.token, xff="198.51.100.7, 203.0.113.9, 127.0.0.1")[0] == SWITCHING
        assert run.upgrade(setup.token)[0] == SWITCHING                  # no XFF: the peer
        # from an untrusted peer X-Forwarded-For is ignored both ways
        assert run.upgrade(setup.token, source="127.0.0.2", xff="198.51.100.7")[0] == SWITCHING
        assert run.upgrade(setup.token, source="127.0.0.3", xff="203.0.113.9")[1] == plain
        lines = refusals(caplog)
        assert len(lines) == 3
        assert "client 198.51.100.7 in the deny list" in lines[0]
        assert "client 127.0.0.3 in the deny list" in lines[2]


def test_bans_behind_a_trusted_proxy_hit_the_client_not_the_proxy(setup):
    access = {("access", "trusted_proxies"): ["127.0.0.1"], ("access", "max_auth_failures"): 3}
    with Running(setup, server=access) as run:
        for _ in range(3):
            run.upgrade("bad-token", xff="203.0.113.50")
        assert run.upgrade(setup.token, xff="203.0.113.50")[0] != SWITCHING
        assert run.upgrade(setup.token, xff="203.0.113.51")[0] == SWITCHING
        assert run.upgrade(setup.token)[0] == SWITCHING          # the proxy's own address
        assert run.server.throttle.is_banned("203.0.113.50")
        assert not run.server.throttle.is_banned("127.0.0.1")


# --- server: failed-auth throttling --------------------------------------------------

def _bound_open_tcp(source):
    real = wsclient._open_tcp

    def open_tcp(host, port, proxy, timeout):
        assert not proxy
        return socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))

    return open_tcp, real


def test_bad_tokens_ban_one_address_others_keep_their_tunnel(setup, echo, caplog, monkeypatch):
    with Running(setup, with_client=False) as run:
        plain = run.plain()
        caplog.set_level(logging.INFO, logger=SERVER_LOG)
        caplog.set_level(logging.INFO, logger="afb.apps.server")
        for i in range(5):                              # default: 5 failures in 60 s
            assert run.upgrade("not.a.token" if i % 2 else None, source="127.0.0.3")[1] == plain
        lines = refusals(caplog)
        assert len(lines) == 5                          # one line per refusal, ban included
        assert "banned for 600 s after 5 failures" in lines[-1]
        # banned: the decoy even with a valid token, byte for byte
        status, answer = run.upgrade(setup.token, source="127.0.0.3")
        assert answer == plain
        # the sixth refusal of that source within a minute is held back for the summary
        assert len(refusals(caplog)) == 5 and run.server.wsgi.limiter.suppressed == 1
        run.server.wsgi.limiter.flush(float("inf"))
        assert "127.0.0.3: 1 more lines like \"refused WebSocket upgrade\"" in \
            refusals(caplog)[-1]
        assert run.plain(source="127.0.0.3") == plain
        # another address with a valid token gets a working tunnel (real client, bound to it)
        open_tcp, _ = _bound_open_tcp("127.0.0.4")
        monkeypatch.setattr(wsclient, "_open_tcp", open_tcp)
        client = ProxyClient(setup.client_cfg())
        client.start()
        try:
            client.tunnel.get_session(10)
            sock = socks_connect(("127.0.0.1", setup.proxy_port), "127.0.0.1", echo.port)
            sock.sendall(b"through the tunnel")
            assert recv_exact(sock, 18) == b"through the tunnel"
            sock.close()
        finally:
            client.stop(timeout=0)
        assert any("tester@127.0.0.4" in r.getMessage() for r in caplog.records
                   if r.name.startswith("afb.apps.server"))


def test_a_banned_client_cannot_open_its_tunnel(setup, monkeypatch):
    open_tcp, _ = _bound_open_tcp("127.0.0.3")
    monkeypatch.setattr(wsclient, "_open_tcp", open_tcp)
    with Running(setup, server={("access", "max_auth_failures"): 2}) as run:
        run.upgrade("x", source="127.0.0.3")
        run.upgrade("y", source="127.0.0.3")
        client = ProxyClient(setup.client_cfg())
        client.start()
        try:
            with pytest.raises(TunnelUnavailable, match=r"refused the tunnel \(HTTP 404\)"):
                client.tunnel.get_session(1.5)
        finally:
            client.stop(timeout=0)


def test_ban_expires_and_success_clears_failures(setup):
    class Clock:
        now = 5000.0

        def __call__(self):
            return self.now

    clock = Clock()
    with Running(setup, server={("access", "max_auth_failures"): 3,
                                ("access", "ban_time"): 100}) as run:
        run.server.throttle.clock = clock
        run.upgrade("bad", source="127.0.0.5")
        run.upgrade("bad", source="127.0.0.5")
        assert run.upgrade(setup.token, source="127.0.0.5")[0] == SWITCHING  # resets the count
        run.upgrade("bad", source="127.0.0.5")
        run.upgrade("bad", source="127.0.0.5")
        assert run.upgrade(setup.token, source="127.0.0.5")[0] == SWITCHING
        for _ in range(3):
            run.upgrade("bad", source="127.0.0.5")
        assert run.upgrade(setup.token, source="127.0.0.5")[0] != SWITCHING
        clock.now += 99
        assert run.upgrade(setup.token, source="127.0.0.5")[0] != SWITCHING
        clock.now += 2
        assert run.upgrade(setup.token, source="127.0.0.5")[0] == SWITCHING


# --- token in a cookie -------------------------------------------------------------

def test_token_in_a_cookie_end_to_end(setup, echo):
    cookie = {("auth", "token_place"): "cookie", ("auth", "token_cookie"): "sid"}
    client = {("client", "token_place"): "cookie", ("client", "token_cookie"): "sid"}
    with Running(setup, server=cookie, client=client, with_client=True) as run:
        run.client.tunnel.get_session(10)
        sock = socks_connect(run.proxy, "127.0.0.1", echo.port)
        sock.sendall(b"cookie")
        assert recv_exact(sock, 6) == b"cookie"
        sock.close()
        # the server reads the cookie only: a bearer header is a probe like any other
        assert run.upgrade(setup.token)[1] == run.plain()


def test_client_and_server_token_places_must_match(setup):
    with Running(setup, server={("auth", "token_place"): "cookie"}, with_client=True) as run:
        with pytest.raises(TunnelUnavailable, match=r"refused the tunnel \(HTTP 404\)"):
            run.client.tunnel.get_session(1.5)


# --- client: who may use the local proxy -------------------------------------------------

def _raw_greeting(proxy, source):
    sock = socket.create_connection(proxy, timeout=5, source_address=(source, 0))
    try:
        sock.sendall(b"\x05\x01\x00")
        try:
            return sock.recv(16)
        except ConnectionResetError:
            return b""
    finally:
        sock.close()


def test_client_allow_sources(setup, caplog):
    with Running(setup, with_client=True,
                 client={("client", "allow_sources"): ["127.0.0.1", "127.0.0.4/32"]}) as run:
        caplog.set_level(logging.INFO, logger="afb.apps")
        assert _raw_greeting(run.proxy, "127.0.0.1") == b"\x05\x00"
        assert _raw_greeting(run.proxy, "127.0.0.4") == b"\x05\x00"
        caplog.clear()
        assert _raw_greeting(run.proxy, "127.0.0.2") == b""          # closed at once
        lines = wait_until(lambda: [r for r in caplog.records if r.name in PROXY_LOGGERS], 5)
        assert len(lines) == 1
        assert "127.0.0.2" in lines[0].getMessage() and "allow_sources" in lines[0].getMessage()


def test_client_default_allow_sources_is_loopback(setup):
    cfg = setup.client_cfg()
    assert cfg["client"]["allow_sources"] == ["127.0.0.0/8", "::1"]
    assert cfg["client"]["listen"] == "127.0.0.1:%d" % setup.proxy_port
    with Running(setup, with_client=True) as run:
        assert _raw_greeting(run.proxy, "127.0.0.2") == b"\x05\x00"


# --- client: username / password ------------------------------------------------------

@pytest.fixture
def users_file(tmp_path):
    path = tmp_path / "proxy-users"
    path.write_text("# local proxy users\nalice:s3cret\nbob:with:colon\n")
    os.chmod(path, 0o600)
    return str(path)


@pytest.fixture
def guarded(setup, users_file):
    with Running(setup, with_client=True, client={("client", "users_file"): users_file}) as run:
        run.client.tunnel.get_session(10)
        yield run


def _pysocks(proxy, port, username=None, password=None):
    sock = socks.socksocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.set_proxy(socks.SOCKS5, proxy[0], proxy[1], rdns=True, username=username,
                   password=password)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def test_socks5_username_password(guarded, echo, caplog):
    for user, password in (("alice", "s3cret"), ("bob", "with:colon")):
        sock = _pysocks(guarded.proxy, echo.port, user, password)
        sock.sendall(b"hello " + user.encode())
        assert recv_exact(sock, 6 + len(user)) == b"hello " + user.encode()
        sock.close()
    caplog.set_level(logging.INFO, logger="afb.apps")
    caplog.clear()
    with pytest.raises(socks.ProxyError):
        _pysocks(guarded.proxy, echo.port, "alice", "wrong")
    with pytest.raises(socks.ProxyError):
        _pysocks(guarded.proxy, echo.port, "mallory", "s3cret")
    with pytest.raises(socks.ProxyError):
        _pysocks(guarded.proxy, echo.port)                 # no credentials offered
    assert wait_until(lambda: len(_proxy_lines(caplog)) >= 3, 5), _proxy_lines(caplog)
    lines = _proxy_lines(caplog)
    assert len(lines) == 3
    assert "authentication failed for user 'alice'" in lines[0]
    assert "s3cret" not in caplog.text and "wrong" not in caplog.text


def test_socks5_raw_method_negotiation_with_users(guarded):
    assert _raw_greeting(guarded.proxy, "127.0.0.1") == b"\x05\xff"   # method 0 refused


def _curl(*args):
    result = subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True,
                            timeout=40)
    return result.returncode, result.stdout, result.stderr.decode()


def test_http_proxy_authorization_with_curl(guarded, http_target, caplog):
    base, blob = http_target
    port = guarded.setup.proxy_port
    good = "http://alice:s3cret@127.0.0.1:%d" % port
    rc, out, err = _curl("-x", good, base + "/4096")
    assert rc == 0 and out == blob[:4096], err
    rc, out, err = _curl("-p", "-x", good, base + "/2048")                  # CONNECT
    assert rc == 0 and out == blob[:2048], err
    caplog.set_level(logging.INFO, logger="afb.apps")
    caplog.clear()
    for proxy in ("http://127.0.0.1:%d" % port, "http://alice:nope@127.0.0.1:%d" % port):
        rc, out, err = _curl("-D", "-", "-o", "/dev/null", "-x", proxy, base + "/16")
        assert rc == 0, err
        assert out.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
        assert b'\r\nProxy-Authenticate: Basic realm="proxy"' in out
        rc, out, err = _curl("-p", "-x", proxy, base + "/16")
        assert rc != 0 and "407" in err
    assert wait_until(lambda: len(_proxy_lines(caplog)) >= 4, 5), _proxy_lines(caplog)
    lines = _proxy_lines(caplog)
    assert len(lines) == 4 and all("407" in line for line in lines)


def _proxy_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name in PROXY_LOGGERS]


def test_users_file_problems_stop_the_client(setup, tmp_path):
    bad = tmp_path / "users-bad"
    bad.write_text("no-colon-here\n")
    os.chmod(bad, 0o600)
    cfg = setup.client_cfg()
    cfg["client"]["users_file"] = str(bad)
    with pytest.raises(ValueError, match="expected user:password"):
        ProxyClient(cfg)
    cfg["client"]["users_file"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="users file .*missing: cannot read it"):
        ProxyClient(cfg)


# --- nothing on the wire names afb -------------------------------------------------------

@pytest.mark.parametrize("place", ["header", "cookie"])
def test_client_upgrade_request_names_nothing(tmp_path, place):
    """The client's upgrade request: the standard WebSocket headers plus the token, no more."""
    from gevent.server import StreamServer

    from afb.transport.tunnel_client import TunnelClient

    seen = []

    def handle(sock, _address):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        seen.append(data)
        sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        sock.close()

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    try:
        client = TunnelClient("ws://127.0.0.1:%d/t" % server.server_port, lambda: "TOKEN",
                              connect_timeout=5, token_place=place, token_cookie="sid")
        with pytest.raises(Exception, match="refused the WebSocket upgrade"):
            client._dial()
    finally:
        server.stop()
    head, _, rest = seen[0].decode("latin-1").partition("\r\n\r\n")
    head = head.split("\r\n")
    assert head[0] == "GET /t HTTP/1.1"
    names = sorted(line.split(":", 1)[0].lower() for line in head[1:])
    token_header = "authorization" if place == "header" else "cookie"
    assert names == sorted(["host", "upgrade", "connection", "sec-websocket-key",
                            "sec-websocket-version", token_header])
    assert ("Authorization: Bearer TOKEN" if place == "header" else "Cookie: sid=TOKEN") in head
    # all of it but the random Sec-WebSocket-Key, which may spell "afb" by chance
    assert "afb" not in "\r\n".join(readable(head) + [rest]).lower()
