"""Who may connect, unit level: source lists, X-Forwarded-For, auth throttling, proxy users,
token places (afb.policy.access, afb.policy.proxy_users, token_from_headers)."""

import base64
import logging
import os

import pytest

from afb.policy.access import AuthThrottle, SourceAcl, client_ip, normalize_ip, parse_networks
from afb.policy.auth import token_from_headers
from afb.policy.proxy_users import ProxyUsers, parse_basic


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


# --- networks and source lists ---------------------------------------------------

def test_parse_networks_forms_and_errors():
    nets = parse_networks(["10.0.0.0/8", "192.0.2.7", "::1", "2001:db8::/32", "[2001:db8::1]",
                           "10.1.2.3/16", "::ffff:198.51.100.0/120", " ", ""])
    assert [str(n) for n in nets] == ["10.0.0.0/8", "192.0.2.7/32", "::1/128", "2001:db8::/32",
                                      "2001:db8::1/128", "10.1.0.0/16", "198.51.100.0/24"]
    assert parse_networks("127.0.0.0/8, ::1") == parse_networks(["127.0.0.0/8", "::1"])
    for bad in ("foo", "10.0.0.0/33", "1.2.3", "example.com"):
        with pytest.raises(ValueError, match="not an IP address or network"):
            parse_networks([bad])


def test_normalize_ip():
    assert str(normalize_ip("::ffff:127.0.0.2")) == "127.0.0.2"
    assert str(normalize_ip("[::1]")) == "::1"
    assert str(normalize_ip("fe80::1%eth0")) == "fe80::1"
    with pytest.raises(ValueError):
        normalize_ip("nope")


@pytest.mark.parametrize("allow, deny, ip, verdict", [
    ([], [], "203.0.113.9", None),                                    # empty allow = everyone
    ([], ["127.0.0.2"], "127.0.0.2", "in the deny list"),
    ([], ["127.0.0.2"], "127.0.0.3", None),
    (["127.0.0.0/8"], [], "127.0.0.3", None),
    (["127.0.0.0/8"], [], "::1", "not in the allow list"),
    (["127.0.0.0/8"], [], "::ffff:127.0.0.5", None),                   # mapped -> IPv4
    (["127.0.0.0/8"], ["127.0.0.2"], "127.0.0.2", "in the deny list"),  # deny wins
    (["::1"], [], "::1", None),
    (["2001:db8::/32"], [], "2001:db8:1::5", None),
    (["2001:db8::/32"], [], "2001:db9::5", "not in the allow list"),
    (["0.0.0.0/0"], [], "::1", "not in the allow list"),               # families never mix
    ([], [], "garbage", "not an IP address"),
])
def test_source_acl(allow, deny, ip, verdict):
    acl = SourceAcl(allow=allow, deny=deny)
    assert acl.check(ip) == verdict
    assert acl.allows(ip) is (verdict is None)


# --- X-Forwarded-For ---------------------------------------------------------------

TRUSTED = parse_networks(["127.0.0.1", "10.0.0.0/8", "::1"])


@pytest.mark.parametrize("peer, xff, expected", [
    ("203.0.113.5", "198.51.100.1", "203.0.113.5"),          # untrusted peer: XFF ignored
    ("203.0.113.5", None, "203.0.113.5"),
    ("127.0.0.1", None, "127.0.0.1"),                          # trusted peer, no XFF
    ("127.0.0.1", "", "127.0.0.1"),
    ("127.0.0.1", "198.51.100.1", "198.51.100.1"),
    ("127.0.0.1", "6.6.6.6, 198.51.100.1", "198.51.100.1"),   # spoofed left part ignored
    ("127.0.0.1", "6.6.6.6, 198.51.100.1, 10.0.0.7", "198.51.100.1"),  # skip trusted hops
    ("127.0.0.1", "10.0.0.8, 10.0.0.7", "10.0.0.8"),          # all trusted: leftmost
    ("127.0.0.1", "198.51.100.1:4711", "198.51.100.1"),       # with a port
    ("127.0.0.1", "[2001:db8::7]:443", "2001:db8::7"),
    ("::1", "2001:db8::7", "2001:db8::7"),
    ("::ffff:127.0.0.1", "198.51.100.1", "198.51.100.1"),     # mapped peer
    ("127.0.0.1", "::ffff:198.51.100.1", "198.51.100.1"),
    ("127.0.0.1", "unknown, 10.0.0.7", "10.0.0.7"),           # malformed hop stops the walk
    ("127.0.0.1", "198.51.100.1,,", "198.51.100.1"),
    ("127.0.0.1", "garbage", "127.0.0.1"),
])
def test_client_ip_from_x_forwarded_for(peer, xff, expected):
    assert client_ip(peer, xff, TRUSTED) == expected


def test_client_ip_without_trusted_proxies_ignores_xff():
    assert client_ip("127.0.0.1", "198.51.100.1", ()) == "127.0.0.1"
    assert client_ip("127.0.0.1", "198.51.100.1", ["127.0.0.0/8"]) == "198.51.100.1"


# --- throttling ------------------------------------------------------------------

def test_throttle_bans_after_n_failures_in_window_and_expires():
    clock = Clock()
    throttle = AuthThrottle(max_failures=3, window=60, ban_time=600, clock=clock)
    assert [throttle.failed("127.0.0.3") for _ in range(2)] == [False, False]
    assert not throttle.is_banned("127.0.0.3")
    assert throttle.failed("127.0.0.3") is True              # the third one bans
    assert throttle.is_banned("127.0.0.3")
    assert not throttle.is_banned("127.0.0.4")               # others unaffected
    assert throttle.banned_for("127.0.0.3") == 600
    assert throttle.failed("127.0.0.3") is False              # no re-ban while banned
    throttle.succeeded("127.0.0.3")                           # a success does not lift a ban
    clock.advance(599.9)
    assert throttle.is_banned("127.0.0.3")
    clock.advance(0.2)
    assert not throttle.is_banned("127.0.0.3")
    assert throttle.banned_for("127.0.0.3") == 0
    # counting starts afresh after the ban
    assert [throttle.failed("127.0.0.3") for _ in range(3)] == [False, False, True]


def test_throttle_window_slides():
    clock = Clock()
    throttle = AuthThrottle(max_failures=3, window=60, ban_time=600, clock=clock)
    throttle.failed("127.0.0.3")
    clock.advance(30)
    throttle.failed("127.0.0.3")
    clock.advance(31)                      # the first failure left the window
    assert throttle.failed("127.0.0.3") is False
    assert not throttle.is_banned("127.0.0.3")
    clock.advance(1)
    assert throttle.failed("127.0.0.3") is True


def test_throttle_success_resets_the_count():
    throttle = AuthThrottle(max_failures=3, clock=Clock())
    throttle.failed("127.0.0.3")
    throttle.failed("127.0.0.3")
    throttle.succeeded("127.0.0.3")
    assert len(throttle) == 0
    assert throttle.failed("127.0.0.3") is False
    assert throttle.failed("127.0.0.3") is False


def test_throttle_off_and_ipv6_per_64():
    off = AuthThrottle(max_failures=0, clock=Clock())
    assert not any(off.failed("127.0.0.3") for _ in range(100))
    assert not off.is_banned("127.0.0.3") and len(off) == 0
    throttle = AuthThrottle(max_failures=2, clock=Clock())
    throttle.failed("2001:db8:1:2::1")
    assert throttle.failed("2001:db8:1:2:ffff::9") is True    # same /64
    assert throttle.is_banned("2001:db8:1:2::77")
    assert not throttle.is_banned("2001:db8:1:3::1")
    assert throttle.key("::ffff:127.0.0.3") == "127.0.0.3"


def test_throttle_is_bounded_and_keeps_live_bans_over_stale_entries():
    clock = Clock()
    throttle = AuthThrottle(max_failures=2, window=10, ban_time=100, clock=clock, max_entries=64)
    throttle.failed("10.9.9.9")
    throttle.failed("10.9.9.9")                              # banned, oldest entry
    for i in range(40):
        throttle.failed("10.0.0.%d" % i)
    clock.advance(11)                                        # those 40 are now stale
    for i in range(40):
        throttle.failed("10.1.0.%d" % i)
    assert len(throttle) <= 64
    assert throttle.is_banned("10.9.9.9")                    # stale ones went first
    for i in range(10000):                                   # a flood of fresh addresses
        throttle.failed("10.%d.%d.%d" % (2 + i // 65536, i // 256 % 256, i % 256))
        assert len(throttle) <= 64


# --- local proxy users -----------------------------------------------------------

def test_proxy_users_file(tmp_path, caplog):
    path = tmp_path / "users"
    path.write_text("# router users\n\nalice:s3cret\nbob:pa:ss:word\n")
    os.chmod(path, 0o600)
    with caplog.at_level(logging.WARNING):
        users = ProxyUsers.from_file(str(path))
    assert not caplog.records
    assert len(users) == 2
    assert users("alice", "s3cret") and users("bob", "pa:ss:word")
    assert not users("alice", "wrong") and not users("carol", "s3cret") and not users("alice", "")


def test_proxy_users_file_errors(tmp_path):
    """Malformed files; a users file others can read is refused by afb client
    (tests/test_file_trust.py), not here."""
    path = tmp_path / "users"
    for text, match in (("alice\n", ":1: expected user:password"), ("\n# none\n", "no user"),
                        ("a:%s\n" % ("x" * 256), "255 bytes")):
        path.write_text(text)
        with pytest.raises(ValueError, match=match):
            ProxyUsers.from_file(str(path))


def test_parse_basic():
    assert parse_basic("Basic " + base64.b64encode(b"al:ice:p").decode()) == ("al", "ice:p")
    encoded = base64.b64encode("j\u00f6:x".encode()).decode()
    assert parse_basic("basic " + encoded) == ("j\u00f6", "x")
    for bad in ("", "Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(),
                "Basic " + base64.b64encode(b"\xff:x").decode()):
        assert parse_basic(bad) is None


# --- where the token travels --------------------------------------------------------

def test_token_from_cookie_or_header_only_where_configured():
    env = {"HTTP_AUTHORIZATION": "Bearer from-header",
           "HTTP_COOKIE": "theme=dark; session=from-cookie; other=1"}
    assert token_from_headers(env) == "from-header"
    assert token_from_headers(env, "header", "session") == "from-header"
    assert token_from_headers(env, "cookie", "session") == "from-cookie"
    assert token_from_headers(env, "cookie", "sid") is None
    assert token_from_headers({"HTTP_COOKIE": "sid=\"q.t.v\""}, "cookie", "sid") == "q.t.v"
    assert token_from_headers({"HTTP_COOKIE": "sid=a; sid=b"}, "cookie", "sid") == "a"
    assert token_from_headers({"HTTP_COOKIE": "xsid=a; sid="}, "cookie", "sid") is None
    assert token_from_headers({"HTTP_AUTHORIZATION": "Bearer t"}, "cookie", "session") is None
    assert token_from_headers({"HTTP_COOKIE": "session=t"}, "header", "session") is None
    with pytest.raises(ValueError):
        token_from_headers(env, "query", "session")


# --- configuration keys ------------------------------------------------------------

def test_access_config_keys_defaults_and_errors(tmp_path):
    from afb.config import check_config, load_config

    server = tmp_path / "s.conf"
    server.write_text("[server]\n")
    cfg = load_config(str(server), "server")
    assert dict(cfg["access"]) == {"allow": [], "deny": [], "trusted_proxies": [],
                                   "max_auth_failures": 5, "auth_failure_window": 60.0,
                                   "ban_time": 600.0, "max_pending_per_source": 32,
                                   "max_pending_per_proxy": 1024,
                                   "descriptor_high_water": 0.8, "max_pending": 4096}
    assert (cfg["auth"]["token_place"], cfg["auth"]["token_cookie"]) == ("header", "session")
    server.write_text("[server]\n[auth]\ntoken_place = query\ntoken_cookie = \"a;b\"\n"
                      "[access]\nallow = 10.0.0.0/8, 2001:db8::/32\ndeny = 10.0.0.300\n"
                      "trusted_proxies = 127.0.0.1\n")
    errors = check_config(str(server), "server")
    assert len(errors) == 3
    assert errors[0].startswith("%s:3: [auth] token_place: " % server)
    assert errors[1].startswith("%s:4: [auth] token_cookie: bad cookie name" % server)
    assert errors[2] == ("%s:7: [access] deny: '10.0.0.300' is not an IP address or network "
                         "(e.g. 10.0.0.0/8, ::1)" % server)

    client = tmp_path / "c.conf"
    client.write_text("[client]\nserver = wss://127.0.0.1/\ntoken = a.b.c\n")
    cfg = load_config(str(client), "client")
    assert cfg["client"]["allow_sources"] == ["127.0.0.0/8", "::1"]
    assert cfg["client"]["users_file"] == ""
    assert (cfg["client"]["token_place"], cfg["client"]["token_cookie"]) == ("header", "session")
    client.write_text("[client]\nserver = wss://127.0.0.1/\ntoken = a.b.c\nusers_file = users\n"
                      "token_place = cookie\nallow_sources = 192.168.1.0/24\n")
    cfg = load_config(str(client), "client")
    assert cfg["client"]["users_file"] == str(tmp_path / "users")
    assert cfg["client"]["allow_sources"] == ["192.168.1.0/24"]
    client.write_text("[client]\nserver = wss://127.0.0.1/\ntoken = a.b.c\nallow_sources = lan\n")
    assert check_config(str(client), "client") == [
        "%s:4: [client] allow_sources: 'lan' is not an IP address or network "
        "(e.g. 10.0.0.0/8, ::1)" % client]


def test_throttle_weights_add_up_within_the_window():
    """A stale signed token weighs 0.1 (issue 10, item 4): 20 in 20 s ban nobody."""
    clock = [1000.0]
    throttle = AuthThrottle(max_failures=5, window=60, ban_time=600, clock=lambda: clock[0])
    for _ in range(20):                          # 20 stale tokens in 20 s: 2.0 of 5
        assert not throttle.failed("192.0.2.1", 0.1)
        clock[0] += 1
    assert not throttle.is_banned("192.0.2.1")
    for number in range(5):                       # guesses still ban after 5
        banned = throttle.failed("192.0.2.2")
        assert banned == (number == 4)
    assert throttle.is_banned("192.0.2.2")
    clock[0] += 61                                # old weights leave the window
    for _ in range(49):
        throttle.failed("192.0.2.1", 0.1)
    assert not throttle.is_banned("192.0.2.1")
    assert throttle.failed("192.0.2.1", 0.1)      # the 50th within a minute bans
