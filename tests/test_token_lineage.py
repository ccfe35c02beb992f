"""Issue 9, item 7: refreshed tokens keep their family, revoked as a whole; refreshes are bounded.

Real parts: `afb token issue/list/revoke` as processes, an in-process server and
client on real sockets refreshing over the tunnel, the SQLite store.
"""

import hashlib
import logging
import os
import sqlite3
import time

import jwt
import pytest

from afb import PROTOCOL_VERSION
from afb.codec import frames
from afb.errors import AuthError
from afb.policy.auth import load_signing_key, sign_token
from afb.policy.lineage import family_of, family_of_jti, refresh_refusal, revocation_reason
from afb.state import SCHEMA_VERSION, StateStore
from afb.transport import tls, wsclient
from afb.transport.secure_channel import client_secure
from tests.support import InProcessTunnel, Setup, wait_until
from tests.test_cli_tokens import afb


def claims_of(token):
    return jwt.decode(token, options={"verify_signature": False})


def cli_issued(setup, ttl):
    """The client's token issued (and recorded) by `afb token issue -c`."""
    out = os.path.join(setup.dir, "client.token")
    result = afb("token", "issue", "--sub", "tester", "--ttl", ttl, "-c", setup.server_conf,
                 "--out", out)
    assert result.returncode == 0, result.stderr
    with open(out) as handle:
        setup.token = handle.read().strip()
    return setup.token


def upgrade(setup, token):
    """A real upgrade with ``token``: the WebSocket (101), or AuthError."""
    ws = wsclient.connect(setup.url, headers={"Authorization": "Bearer " + token},
                          ssl_context=tls.client_context(pin=setup.pin), pin=setup.pin, timeout=5)
    if setup.e2e:
        ws = client_secure(ws, setup.e2e_public_key, hashlib.sha256(token.encode()).digest(),
                           None, 5)
    return ws


def test_revoking_the_listed_jti_revokes_its_refreshes(tmp_path):
    """The issue's case: before, the refreshed token still got its 101."""
    setup = Setup(tmp_path, leeway=0)
    first = cli_issued(setup, "3")          # refreshed at 75 % of 3 s
    with InProcessTunnel(setup) as running:
        path = os.path.join(setup.dir, "client.token")

        def stored():
            with open(path) as handle:
                return handle.read().strip()

        assert wait_until(lambda: stored() != first, 10), "the token was not refreshed"
        refreshed = stored()
        assert claims_of(refreshed)["fam"] == claims_of(first)["jti"]
        assert claims_of(refreshed)["jti"].startswith(claims_of(first)["jti"] + ".")
        listing = afb("token", "list", "-c", setup.server_conf).stdout
        rows = [line for line in listing.splitlines() if line.startswith(claims_of(first)["jti"])]
        assert len(rows) == 2, listing
        assert rows[0].endswith("; refreshed since (newest below)")
        assert rows[1].startswith(claims_of(refreshed)["jti"])
        assert "; refresh 1 of family %s, its newest" % claims_of(first)["jti"] in rows[1]
        upgrade(setup, refreshed).close()          # still good

        result = afb("token", "revoke", "--jti", claims_of(first)["jti"], "-c",
                     setup.server_conf, "--reason", "lost laptop")
        assert result.returncode == 0, result.stderr
        assert "revoked token %s of tester" % claims_of(first)["jti"] in result.stdout
        assert "every token refreshed from the same first token" in result.stdout
        running.server.revocations.clear()   # not wait for the poll to empty the 2 s cache
        with pytest.raises(AuthError, match="refused the WebSocket upgrade"):
            upgrade(setup, refreshed)
        with pytest.raises(AuthError, match="refused the WebSocket upgrade"):
            upgrade(setup, first)
        listing = afb("token", "list", "-c", setup.server_conf).stdout
        assert listing.count("token revoked (lost laptop)") == 2, listing


def test_revoking_a_refreshed_jti_revokes_the_family(tmp_path):
    """Any jti of the family, even one the list no longer has (a stolen token's)."""
    store = StateStore(str(tmp_path / "s.sqlite3"))
    setup = Setup(tmp_path / "k")
    key = load_signing_key(setup.jwt_key)
    _t, first = sign_token(key, "EdDSA", "alice", 600)
    store.record_issued(first)
    refreshed = [sign_token(key, "EdDSA", "alice", 600, family=first["jti"])[1] for _ in range(6)]
    for claims in refreshed:
        store.record_issued(claims)
    # however many refreshes: the first row and the newest one
    rows = store.list_tokens()
    assert [(r["jti"], r["refreshes"]) for r in rows] == [(first["jti"], 0),
                                                          (refreshed[-1]["jti"], 6)]
    assert {r["fam"] for r in rows} == {first["jti"]}
    gone = refreshed[2]["jti"]                     # replaced in the list by later refreshes
    assert store.lookup_token(gone) is None and family_of_jti(gone) == first["jti"]
    result = store.revoke_jti(gone, reason="stolen")
    assert result == {"family": first["jti"], "sub": "alice", "exp": refreshed[-1]["exp"]}
    for claims in [first] + refreshed:
        assert store.is_revoked(claims) == "token revoked (stolen)"
    _t, other = sign_token(key, "EdDSA", "alice", 600)
    assert store.is_revoked(other) is None          # another family of the same user
    store.close()


def test_old_tokens_and_schema_1_stores(tmp_path):
    """A store written by the previous afb (schema 1) is migrated; tokens without fam work."""
    path = str(tmp_path / "afb.sqlite3")
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE tokens (jti TEXT PRIMARY KEY, sub TEXT NOT NULL, iat INTEGER NOT NULL,
            exp INTEGER NOT NULL, kid TEXT, recorded_at REAL NOT NULL);
        CREATE INDEX tokens_sub ON tokens (sub);
        CREATE TABLE revoked_jti (jti TEXT PRIMARY KEY, exp INTEGER,
            reason TEXT NOT NULL DEFAULT '', revoked_at REAL NOT NULL);
        CREATE TABLE revoked_sub (sub TEXT PRIMARY KEY, before_ts REAL NOT NULL,
            reason TEXT NOT NULL DEFAULT '', revoked_at REAL NOT NULL);
        INSERT INTO tokens VALUES ('old1', 'bob', 1000, 4000000000, 'k', 1000.0);
        PRAGMA user_version = 1;""")
    db.close()
    store = StateStore(path)
    assert store._query("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 4
    assert store.usage() == []              # schema 3: the usage table
    [row] = store.list_tokens()
    assert (row["jti"], row["fam"], row["refreshes"]) == ("old1", "old1", 0)
    old = {"jti": "old1", "sub": "bob", "iat": 1000, "exp": 4000000000}
    assert store.is_revoked(old) is None
    store.revoke_jti("old1")
    assert store.is_revoked(old) == "token revoked"
    store.close()


def test_a_refresh_before_half_the_lifetime_is_refused(tmp_path):
    setup = Setup(tmp_path, ttl=3600)
    with InProcessTunnel(setup) as running:
        session = running.client.tunnel.session
        with pytest.raises(AuthError, match="token refresh refused: refresh too early: a token "
                                            "may be refreshed once half its lifetime has passed"):
            session.request_token(timeout=5)
        server_session = next(iter(running.server.sessions))
        assert server_session.claims["jti"] == claims_of(setup.token)["jti"]   # none minted
        assert running.server.state.list_tokens() == []


def test_a_flood_of_refresh_frames_closes_the_tunnel_without_a_greenlet_each(tmp_path, caplog):
    """Before: every REFRESH frame spawned a greenlet and got a TOKEN answer (10,000 here)."""
    setup = Setup(tmp_path, e2e=False, ttl=3600)
    with InProcessTunnel(setup) as running:
        ws = upgrade(setup, setup.token)
        ws.send_message([frames.frame(frames.HELLO, 0, frames.hello_payload(
            PROTOCOL_VERSION, 65536, 1 << 20))])
        flood = [frames.frame(frames.REFRESH, 0)] * 10000
        with caplog.at_level(logging.WARNING, logger="afb.transport.session"):
            ws.send_message(flood)
            answers, deadline = 0, time.monotonic() + 5
            while time.monotonic() < deadline:
                message = ws.recv_message()
                if message is None:
                    break
                answers += sum(1 for f in frames.iter_frames(message) if f[0] == frames.TOKEN)
        assert message is None, "the tunnel stayed open"
        assert ws.peer_close_code == 1002
        assert "REFRESH again within 1 s" in ws.peer_close_reason
        assert answers <= 1
        assert running.client.tunnel.live_session() is not None      # other tunnels go on


def test_lineage_rules():
    first = {"jti": "a" * 32, "sub": "u", "iat": 1000, "exp": 2000}
    child = {"jti": "a" * 32 + ".0f0f0f0f", "fam": "a" * 32, "sub": "u", "iat": 1600,
             "exp": 2600}
    assert family_of(first) == "a" * 32 == family_of(child)
    assert family_of_jti(child["jti"]) == "a" * 32 and family_of_jti("plain") == "plain"
    assert refresh_refusal(first, now=1499).startswith("refresh too early")
    assert refresh_refusal(first, now=1500) is None
    revoke_family = {"kind": "jti", "value": "a" * 32, "reason": "x"}
    assert revocation_reason(child, revoke_family) == "token revoked (x)"
    revoke_user = {"kind": "sub", "value": "u", "before": 1500.5, "reason": ""}
    assert revocation_reason(first, revoke_user) == "user u revoked"
    assert revocation_reason(child, revoke_user) is None     # issued after the revocation
    assert revocation_reason({"jti": "b", "sub": "v", "iat": 1}, revoke_family) is None
