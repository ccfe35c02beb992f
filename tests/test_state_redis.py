"""The Redis store (afb/state_redis.py) against a real redis-server: what several nodes share.

Usage and per-user limits run against both stores; stream counts, QoS node
counts, bans, reachability and the URL forms are Redis's own.  The commands
(`afb user limit`, `afb report`, `afb token`) run as processes on a config
that says ``state = redis://``.
"""

import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afb.config_values import masked_url, parse_state_url
from afb.state import DB_NAME, StateStore, StateUnavailable, describe_store, open_store
from afb.state_redis import RedisStore
from afb.transport.shaper import Qos
from tests import redis_support
from tests.test_cli_tokens import afb

# A real redis-server (tests/redis_support.py), shared by the module's tests.
redis_server = redis_support.redis_server
clean_redis = redis_support.clean_redis


@pytest.fixture
def rstore(clean_redis):
    db = RedisStore(clean_redis.url, timeout=2.0)
    yield db
    db.close()


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        db = StateStore(str(tmp_path / "state" / DB_NAME))
    else:
        db = RedisStore(request.getfixturevalue("clean_redis").url)
    yield db
    db.close()


def usage_row(day, user, up=0, down=0, streams=0, peak=0, seconds=0.0):
    return {"day": day, "user": user, "bytes_up": up, "bytes_down": down, "streams": streams,
            "peak_streams": peak, "tunnel_seconds": seconds}


def test_usage_adds_up_and_keeps_the_larger_peak(store):
    store.add_usage([usage_row("2026-12-01", "alice", 10, 20, 1, 3, 1.5),
                     usage_row("2026-12-01", "bob", 1, 2, 1, 1, 0.5)])
    store.add_usage([usage_row("2026-12-01", "alice", 5, 5, 2, 2, 1.0),    # another node
                     usage_row("2026-12-02", "alice", 7, 0, 0, 0, 0.0)])
    rows = store.usage()
    assert [(r["day"], r["user"]) for r in rows] == [
        ("2026-12-01", "alice"), ("2026-12-01", "bob"), ("2026-12-02", "alice")]
    assert rows[0] == usage_row("2026-12-01", "alice", 15, 25, 3, 3, 2.5)
    assert store.usage(since="2026-12-02") == [usage_row("2026-12-02", "alice", 7)]
    assert [r["user"] for r in store.usage(until="2026-12-01", user="bob")] == ["bob"]
    assert store.purge_usage("2026-12-02") == 2
    assert [r["day"] for r in store.usage()] == ["2026-12-02"]


def test_user_limits(store):
    store.set_user_limits("alice", rate_down=1e6)
    store.set_user_limits("alice", weight=2)
    store.set_user_limits("bob", rate_up=5e5)
    assert store.user_limits() == {"alice": {"rate_down": 1e6, "rate_up": None, "weight": 2},
                                   "bob": {"rate_down": None, "rate_up": 5e5, "weight": None}}
    assert store.clear_user_limits("bob") and not store.clear_user_limits("bob")
    with pytest.raises(ValueError):
        store.set_user_limits("x", speed=1)


def test_token_refreshes_keep_two_rows_per_family(store):
    now = int(time.time())
    store.record_issued({"jti": "f", "sub": "a", "iat": now, "exp": now + 60})
    for n in range(3):
        store.record_issued({"jti": "r%d" % n, "fam": "f", "sub": "a", "iat": now + n,
                             "exp": now + 60})
    rows = store.list_tokens()
    assert [(t["jti"], t["refreshes"]) for t in rows] == [("f", 0), ("r2", 3)]
    assert store.revoke_jti("r2", reason="lost")["family"] == "f"
    assert store.is_revoked({"jti": "r9", "fam": "f", "sub": "a", "iat": now}) \
        == "token revoked (lost)"


def test_stream_counts_over_nodes_and_a_dead_node_expires(rstore, monkeypatch):
    assert rstore.streams_admit("n1", "alice", 3, 4) == (True, 3)
    assert rstore.streams_admit("n2", "alice", 1, 4) == (True, 4)
    assert rstore.streams_admit("n2", "alice", 2, 4) == (False, 5)     # n2 keeps its 1
    assert rstore.streams_admit("n1", "bob", 4, 4) == (True, 4)        # per user
    rstore.streams_publish("n1", {"alice": 1})                         # two ended on n1
    assert rstore.streams_admit("n2", "alice", 3, 4) == (True, 4)
    assert rstore.streams_admit("n3", "alice", 1, 0) == (True, 5)      # no limit: counted
    # n1 stops its heartbeat (a crash): its count stops counting after NODE_TTL
    raw = rstore._client
    raw.zadd("afb:nodes", {"n1": time.time() - 60})
    assert rstore.streams_admit("n2", "alice", 3, 4)[1] == 4           # n2's 3 + n3's 1


def test_qos_node_counts_and_the_share(rstore):
    assert rstore.active_nodes("n1", ["alice", "bob"]) == {"alice": 1, "bob": 1}
    assert rstore.active_nodes("n2", ["alice"]) == {"alice": 2}
    assert rstore.active_nodes("n1", ["bob"], gone=["alice"]) == {"bob": 1}
    assert rstore.active_nodes("n2", ["alice"]) == {"alice": 1}
    qos = Qos({"user_rate_down": 1000, "user_rate_up": 500})
    down, up = qos.shapers_for("alice")
    qos.set_node_share("alice", 2)
    assert (down.rate, up.rate) == (500, 250)
    qos.set_node_share("alice", 1)
    assert (down.rate, up.rate) == (1000, 500)


def test_bans_with_ttl(rstore):
    assert not rstore.auth_failed("10.0.0.1", 1, 3, 60, 0.5)
    assert not rstore.auth_failed("10.0.0.1", 1, 3, 60, 0.5)
    assert rstore.auth_failed("10.0.0.1", 1, 3, 60, 0.5)
    assert 0 < rstore.banned_for("10.0.0.1") <= 0.5
    assert not rstore.auth_failed("10.0.0.1", 1, 3, 60, 0.5)          # banned already
    assert rstore.banned_for("10.0.0.2") == 0
    time.sleep(0.6)
    assert rstore.banned_for("10.0.0.1") == 0
    rstore.auth_failed("10.0.0.3", 2.5, 3, 60, 10)
    rstore.auth_succeeded("10.0.0.3")
    assert not rstore.auth_failed("10.0.0.3", 1, 3, 60, 10)           # forgotten


def test_pushed_revocations(rstore):
    pubsub = rstore.pubsub()
    try:
        rstore.revoke_subject("alice", reason="left")
        message = None
        deadline = time.monotonic() + 5
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
        assert message["data"] == "sub:alice"
        [row] = rstore.rows_of(message["data"])
        assert (row["kind"], row["value"], row["reason"]) == ("sub", "alice", "left")
        assert row in rstore.revocations_since(row["revoked_at"])
    finally:
        pubsub.close()


def test_unreachable_fails_fast_until_a_probe_answers(clean_redis):
    changes = []
    db = RedisStore(clean_redis.url, timeout=0.5)
    db.on_change.append(lambda up, detail: changes.append((up, detail)))
    assert db.probe() and db.is_revoked({"jti": "x", "sub": "a", "iat": 1}) is None
    clean_redis.stop()
    try:
        with pytest.raises(StateUnavailable):
            db.is_revoked({"jti": "x", "sub": "a", "iat": 1})
        started = time.monotonic()
        with pytest.raises(StateUnavailable, match="unreachable"):
            db.user_limits()                    # known down: no connect attempt
        assert time.monotonic() - started < 0.05
        assert not db.probe()
    finally:
        clean_redis.start()
    assert db.probe() and db.available
    assert [up for up, _detail in changes] == [False, True]
    assert "Connection refused" in changes[0][1] or "connecting" in changes[0][1]
    db.close()


def test_unix_socket_and_password(tmp_path):
    if not os.path.exists(redis_support.REDIS_SERVER):
        pytest.skip("redis-server is not installed")
    server = redis_support.RedisServer(tmp_path / "r", password="s3cret")
    try:
        db = open_store({"server": {"state": server.unix_url, "state_dir": str(tmp_path)}})
        db.set_user_limits("alice", weight=3)
        assert db.user_limits()["alice"]["weight"] == 3
        db.close()
        wrong = RedisStore(server.url.replace("s3cret", "wrong"))
        with pytest.raises(StateUnavailable, match="check the password in \\[server\\] state"):
            wrong.user_limits()
        wrong.close()
    finally:
        server.stop()
    cfg = {"server": {"state": server.url, "state_dir": "/x"}}
    assert describe_store(cfg) == "state store redis://:***@127.0.0.1:%d/0" % server.port
    assert describe_store({"server": {"state": "", "state_dir": "/x"}}) == "state store in /x"


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "redis://:pw@h:1/2",
                                 "rediss://u:pw@redis.example:6380", "unix:///run/r.sock?db=3",
                                 "unix://:pw@/run/r.sock", ""])
def test_state_urls_accepted(url):
    assert parse_state_url(url) == (url or None)


@pytest.mark.parametrize("url,why", [
    ("http://127.0.0.1:6379", "scheme"), ("redis://", "no host"), ("redis://h:99999/0", "(?i)port"),
    ("redis://h:6379/x", "integer"), ("unix://run/r.sock", "three slashes"),
    ("unix:///r.sock?db=a", "integer")])
def test_state_urls_refused(url, why):
    with pytest.raises(ValueError, match=why):
        parse_state_url(url)


@given(st.text(max_size=60))
def test_state_url_parser_never_crashes(text):
    try:
        parse_state_url(text)
    except ValueError:
        pass
    assert masked_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"


def test_config_check_names_a_bad_state_url(tmp_path):
    conf = tmp_path / "server.conf"
    conf.write_text("[server]\nstate = redis://h:6379/db\nstate_unavailable = maybe\n")
    result = afb("config", "check", str(conf))
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "state" in text and "must be an integer" in text
    assert "state_unavailable" in text


def test_commands_use_the_redis_store(tmp_path, clean_redis):
    conf = tmp_path / "server.conf"
    conf.write_text("[server]\nstate = %s\nstate_dir = %s\n" % (clean_redis.url,
                                                              tmp_path / "nowhere"))
    result = afb("user", "limit", "alice", "--down", "2M", "-c", str(conf))
    assert result.returncode == 0, result.stderr
    db = RedisStore(clean_redis.url)
    assert db.user_limits()["alice"]["rate_down"] == 2e6
    db.add_usage([usage_row(time.strftime("%Y-%m-%d", time.gmtime()), "alice", 5, 6, 1, 1, 2)])
    report = afb("report", "--format", "csv", "-c", str(conf))
    assert report.returncode == 0 and "alice" in report.stdout, report.stderr
    revoke = afb("token", "revoke", "--sub", "alice", "-c", str(conf))
    assert revoke.returncode == 0, revoke.stderr
    assert db.is_revoked({"jti": "t", "sub": "alice", "iat": 1}) == "subject revoked"
    listed = afb("token", "list", "-c", str(conf))
    assert listed.returncode == 0, listed.stderr
    db.close()
    assert not (tmp_path / "nowhere").exists()      # nothing written to state_dir
    clean_redis.stop()
    try:
        down = afb("report", "-c", str(conf))
        assert down.returncode != 0
        assert down.stderr.count("\n") == 1 and "Traceback" not in down.stderr
        assert "afb report: state store redis://127.0.0.1:%d/0" % clean_redis.port in down.stderr
    finally:
        clean_redis.start()


def test_two_nodes_split_a_users_rate(clean_redis):
    """Each node's heartbeat: the users with streams here -> this node's share of their rate."""
    from afb.transport.shared_state import SharedNode
    from afb.transport.users import UserRegistry

    nodes = []
    for name in ("n1", "n2"):
        users = UserRegistry(qos=Qos({"user_rate_down": 1000, "user_rate_up": 1000}))
        nodes.append(SharedNode(RedisStore(clean_redis.url), name, users=users))
    alice = [node.users.enter("alice") for node in nodes]
    alice[0].streams = 2
    nodes[0].beat()
    assert alice[0].shape_down.rate == 1000                 # alone so far
    alice[1].streams = 1
    nodes[1].beat()
    nodes[0].beat()
    assert [a.shape_down.rate for a in alice] == [500, 500]
    alice[1].streams = 0                                    # idle on n2: n1 takes it all
    nodes[1].beat()
    nodes[0].beat()
    assert [a.shape_down.rate for a in alice] == [1000, 1000]
    for node in nodes:
        node.store.close()


def test_config_check_says_when_redis_py_is_missing(tmp_path):
    """What the daemon would refuse at start, `afb config check` says first."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['redis'] = None; import importlib.util; "
            "importlib.util.find_spec = lambda name, *a: None if name == 'redis' else 1; "
            "from afb.config_values import parse_state_url\n"
            "try:\n    parse_state_url('redis://h:6379/0')\n"
            "except ValueError as exc:\n    print(exc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))), timeout=30)
    assert "needs redis-py" in out.stdout and "python3-redis" in out.stdout, out.stderr
