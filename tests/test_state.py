"""The state store: revocations, issued tokens, file modes, several processes.

The interface's cases run against both stores: the embedded SQLite file and
Redis (a real redis-server, tests/redis_support.py); the file and process
cases are SQLite's own.
"""

import os
import stat
import subprocess
import sys
import time

import pytest

from afb.state import DB_NAME, StateStore, open_store, store_path
from tests import redis_support

# A real redis-server (tests/redis_support.py), shared by the module's tests.
redis_server = redis_support.redis_server
clean_redis = redis_support.clean_redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def sqlite_store(tmp_path):
    db = StateStore(str(tmp_path / "state" / DB_NAME))
    yield db
    db.close()


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    """Each store of the interface, empty."""
    if request.param == "sqlite":
        db = StateStore(str(tmp_path / "state" / DB_NAME))
    else:
        server = request.getfixturevalue("clean_redis")
        db = open_store({"server": {"state": server.url, "state_dir": str(tmp_path)}})
    yield db
    db.close()


def claims(jti, sub="alice", iat=None, ttl=3600):
    iat = int(time.time()) if iat is None else iat
    return {"jti": jti, "sub": sub, "iat": iat, "nbf": iat, "exp": iat + ttl}


def test_creates_dir_0700_file_0600_wal(tmp_path, sqlite_store):
    store = sqlite_store
    assert mode(tmp_path / "state") == 0o700
    assert mode(store.path) == 0o600
    assert store._query("PRAGMA journal_mode")[0][0] == "wal"
    for extra in ("-wal", "-shm"):
        if os.path.exists(store.path + extra):
            assert mode(store.path + extra) & 0o077 == 0


def test_open_store_from_config(tmp_path):
    cfg = {"server": {"state_dir": str(tmp_path / "s")}}
    db = open_store(cfg)
    assert db.path == store_path(str(tmp_path / "s")) == str(tmp_path / "s" / DB_NAME)
    db.close()
    with pytest.raises(FileNotFoundError):
        open_store({"server": {"state_dir": str(tmp_path / "none")}}, create=False)


@pytest.mark.parametrize("revoke,checked,expected", [
    (("jti", "t1", ""), claims("t1"), "token revoked"),
    (("jti", "t1", "stolen"), claims("t1"), "token revoked (stolen)"),
    (("jti", "t1", ""), claims("t2"), None),
    (("sub", "alice", "left"), claims("t3", iat=1000), "subject revoked (left)"),
    (("sub", "alice", ""), claims("t4", iat=4000000000), None),
    (("sub", "bob", ""), claims("t5", iat=1000), None),
])
def test_is_revoked_table(store, revoke, checked, expected):
    kind, value, reason = revoke
    if kind == "jti":
        store.revoke_jti(value, exp=int(time.time()) + 60, reason=reason)
    else:
        store.revoke_subject(value, reason=reason)
    assert store.is_revoked(checked) == expected


def test_subject_revocation_only_moves_forward(store):
    store.revoke_subject("alice", before_ts=2000)
    store.revoke_subject("alice", before_ts=1000, reason="again")
    [rev] = store.list_revocations()
    assert rev["kind"] == "sub" and rev["before"] == 2000 and rev["reason"] == "again"
    assert store.is_revoked(claims("x", iat=1999)) and not store.is_revoked(claims("y", iat=2000))


def test_tokens_listed_with_status(store):
    now = int(time.time())
    store.record_issued(claims("a", "alice", now - 100), kid="k1")
    store.record_issued(claims("b", "bob", now - 50))
    store.record_issued(claims("c", "alice", now + 10))
    store.revoke_jti("b", reason="lost")
    store.revoke_subject("alice", before_ts=now)
    tokens = {t["jti"]: t for t in store.list_tokens()}
    assert tokens["a"]["revoked"] == "subject revoked" and tokens["a"]["kid"] == "k1"
    assert tokens["b"]["revoked"] == "token revoked (lost)"
    assert tokens["c"]["revoked"] is None
    assert [t["jti"] for t in store.list_tokens()] == ["a", "b", "c"]
    assert store.lookup_token("b")["sub"] == "bob" and store.lookup_token("zz") is None
    kinds = sorted((r["kind"], r["value"]) for r in store.list_revocations())
    assert kinds == [("jti", "b"), ("sub", "alice")]


def test_purge_expired(store):
    now = time.time()
    store.record_issued(claims("old", iat=int(now) - 10 * 86400, ttl=3600))
    store.record_issued(claims("new"))
    store.revoke_jti("old", exp=int(now) - 9 * 86400)
    store.revoke_jti("forever", exp=None)
    store.revoke_jti("live", exp=int(now) + 60)
    assert store.purge_expired() == 2
    assert [t["jti"] for t in store.list_tokens()] == ["new"]
    assert sorted(r["value"] for r in store.list_revocations()) == ["forever", "live"]
    # a revoked jti just past its expiry is kept (the verifier's leeway)
    store.revoke_jti("recent", exp=int(now) - 60)
    assert store.purge_expired() == 0


def test_bad_arguments(store):
    with pytest.raises(ValueError):
        store.revoke_jti("")
    with pytest.raises(ValueError):
        store.revoke_subject("")


WRITER = """
import sys, time
from afb.state import StateStore
db = StateStore(sys.argv[1])
for i in range(int(sys.argv[2])):
    db.revoke_jti("%s-%d" % (sys.argv[3], i), exp=int(time.time()) + 60)
    db.record_issued({"jti": "%s-%d" % (sys.argv[3], i), "sub": "u", "iat": 1, "exp": 2})
db.close()
"""


def test_reader_and_writer_processes(sqlite_store):
    """Two writer processes (like `afb token revoke`) while this process reads."""
    store = sqlite_store
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, store.path, "100", name], env=env)
             for name in ("p", "q")]
    seen = 0
    while any(p.poll() is None for p in procs):
        seen = max(seen, len(store.list_revocations()))
        store.is_revoked(claims("p-1"))
    assert [p.wait(60) for p in procs] == [0, 0]
    assert len(store.list_revocations()) == 200 and len(store.list_tokens()) == 200
    assert store.is_revoked(claims("q-99")) == "token revoked"
