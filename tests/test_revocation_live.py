"""Issue 9, item 6: `afb token revoke` closes the live tunnels it reaches within seconds.

Before: an open tunnel kept working until its token expired (30 days by
default).  Real parts: `afb token revoke` as a process, server and clients
in-process on real sockets, streams through the SOCKS5 proxy.
"""

import logging
import os
import time

import pytest

from afb.apps.client import ProxyClient
from afb.policy.auth import issue_token
from afb.state import StateStore
from tests.support import InProcessTunnel, Setup, recv_exact, socks_connect, wait_until
from tests.test_cli_tokens import afb
from tests.test_token_lineage import claims_of

POLL = 0.2


def fast_poll(setup):
    """The server config with [auth] revocation_poll = POLL."""
    with open(setup.server_conf) as handle:
        text = handle.read()
    with open(setup.server_conf, "w") as handle:
        handle.write(text.replace("[auth]\n", "[auth]\nrevocation_poll = %s\n" % POLL, 1))
    return setup


def echo_once(sock, data=b"ping"):
    sock.sendall(data)
    return recv_exact(sock, len(data))


def wait_closed(session, timeout):
    """Seconds until ``session`` (server side) was done, or None."""
    started = time.monotonic()
    if not session.done.wait(timeout):
        return None
    return time.monotonic() - started


@pytest.mark.parametrize("how", ["sub", "jti"])
def test_revocation_closes_the_live_tunnel_within_seconds(tmp_path, echo, caplog, how):
    setup = fast_poll(Setup(tmp_path, ttl=3600))
    with InProcessTunnel(setup) as running:
        other = _other_user(setup, running)
        sock = socks_connect(running.proxy, "127.0.0.1", echo.port)
        other_sock = socks_connect(("127.0.0.1", other.proxy.address[1]), "127.0.0.1", echo.port)
        assert echo_once(sock) == b"ping" and echo_once(other_sock) == b"ping"
        [session] = [s for s in running.server.sessions if s.claims["sub"] == "tester"]
        what = ["--sub", "tester"] if how == "sub" else ["--jti", claims_of(setup.token)["jti"]]
        with caplog.at_level(logging.INFO):
            result = afb("token", "revoke", *what, "-c", setup.server_conf, "--reason", "left")
            revoked = time.monotonic()
            assert result.returncode == 0, result.stderr
            assert wait_closed(session, 5) is not None, "the live tunnel stayed open"
            closed_after = time.monotonic() - revoked
            assert wait_until(lambda: _client_errors(caplog), 5), "the client said nothing"
        assert "closes the live tunnels it reaches within %g seconds" % (POLL + 1) \
            in result.stderr
        reason = "user tester revoked (left)" if how == "sub" else "token revoked (left)"
        assert closed_after < POLL + 1, closed_after
        assert session.close_reason == reason
        with pytest.raises(OSError):
            echo_once(sock)                         # its streams are gone with it
        assert echo_once(other_sock) == b"ping"     # bob's tunnel is untouched
        server_lines = [r.getMessage() for r in caplog.records
                        if r.name == "afb.apps.live_tokens"]
        assert server_lines == ["%s: %s; closing the tunnel" % (session.label, reason)]
        client_lines = _client_errors(caplog)
        assert len(client_lines) == 1
        assert client_lines[0].getMessage().startswith(
            "tunnel closed by the server: %s; this client's token no longer works: get a new "
            "one from the server's operator (afb token issue) and put it in %s"
            % (reason, os.path.join(setup.dir, "client.token")))
        # the client does not get back in with the revoked token
        assert wait_until(lambda: "refused the tunnel (HTTP 404)"
                          in running.client.tunnel.last_error, 10), running.client.tunnel.last_error
        assert running.client.tunnel.connects == 1
        assert running.client.tunnel.live_session() is None
        assert "refused the tunnel (HTTP 404)" in running.client.tunnel.last_error
        sock.close()
        other_sock.close()
        other.stop(timeout=0)


def _client_errors(caplog):
    return [r for r in caplog.records if r.name == "afb.transport.tunnel_client"
            and r.levelno == logging.ERROR]


def _other_user(setup, running):
    """A second client, user bob, on its own proxy port."""
    from tests.support import free_port

    cfg = setup.client_cfg()
    token = issue_token(setup.jwt_key, "bob", 3600)
    path = os.path.join(setup.dir, "bob.token")
    with open(path, "w") as handle:
        handle.write(token)
    os.chmod(path, 0o600)
    cfg["client"]["token_file"] = path
    cfg["client"]["listen"] = "127.0.0.1:%d" % free_port()
    client = ProxyClient(cfg)
    client.start()
    client.tunnel.get_session(10)
    return client


def test_a_tunnel_revoked_during_its_handshake_is_closed_when_it_joins(tmp_path):
    """The poll ran while the tunnel was not yet live: admit() catches it."""
    setup = Setup(tmp_path, ttl=3600)
    with InProcessTunnel(setup) as running:
        [session] = running.server.sessions
        store = StateStore(os.path.join(setup.dir, "state", "afb.sqlite3"))
        store.revoke_subject("tester", reason="gone")
        store.close()
        assert running.server.revocation_watch.admit(session) is False
        assert session.close_reason == "subject revoked (gone)"
        assert wait_closed(session, 5) is not None


def test_polls_read_only_new_revocations(tmp_path):
    store = StateStore(str(tmp_path / "s.sqlite3"))
    store.revoke_jti("a1")
    mark = time.time()
    assert store.revocations_since(mark) == []
    store.revoke_subject("bob")
    store.revoke_jti("b2", reason="x")
    news = store.revocations_since(mark)
    assert [(r["kind"], r["value"]) for r in news] == [("jti", "b2"), ("sub", "bob")]
    assert len(store.list_revocations()) == 3
    plan = store._query("EXPLAIN QUERY PLAN SELECT * FROM revoked_jti WHERE revoked_at >= ?",
                        (mark,))
    assert "revoked_jti_at" in " ".join(str(tuple(row)) for row in plan)
    store.close()
