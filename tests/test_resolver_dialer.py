"""Resolver (cache, negative cache, single-flight, timeout) and Dialer (ACL, errors).

Only 127.0.0.0/8 and ::1 are ever connected to; every other case uses an
injected connect function, and names use an injected resolve function
(except the one real lookup of 'localhost').
"""

import errno
import socket

import gevent
import gevent.socket
import pytest

from afb.errors import (
    REP_CONNECTION_REFUSED,
    REP_GENERAL_FAILURE,
    REP_HOST_UNREACHABLE,
    REP_NETWORK_UNREACHABLE,
    REP_NOT_ALLOWED,
    REP_TTL_EXPIRED,
    ConnectionRefused,
    DestinationError,
    HostUnreachable,
    NetworkUnreachable,
    NotAllowed,
    TimedOut,
)
from afb.policy.acl import DestinationAcl
from afb.transport.dialer import Dialer
from afb.transport.resolver import Resolver
from tests.support import wait_until


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeDns:
    """A resolve_fn answering from a table; counts lookups per name."""

    def __init__(self, table, delay=0):
        self.table = table
        self.delay = delay
        self.calls = []

    def __call__(self, host, port, family=0, type=0):
        self.calls.append(host)
        if self.delay:
            gevent.sleep(self.delay)        # a slow name server
        ips = self.table.get(host.lower())
        if ips is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for ip in ips:
            if ":" in ip:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
        return out


class RecordingConnect:
    """A connect_fn that never touches the network: records calls, then fails
    or succeeds as scripted by destination IP."""

    def __init__(self, outcomes=None, default=None):
        self.outcomes = outcomes or {}
        self.default = default
        self.calls = []

    def __call__(self, family, sockaddr, timeout):
        self.calls.append((sockaddr[0], sockaddr[1], timeout))
        outcome = self.outcomes.get(sockaddr[0], self.default)
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is None:
            raise AssertionError("unexpected connect to %r" % (sockaddr,))
        return outcome


# --- Resolver -----------------------------------------------------------------

def test_literals_need_no_lookup():
    dns = FakeDns({})
    r = Resolver(resolve_fn=dns)
    assert r.resolve("127.0.0.1", 80) == [(socket.AF_INET, ("127.0.0.1", 80))]
    assert r.resolve("::1", 81) == [(socket.AF_INET6, ("::1", 81, 0, 0))]
    assert r.resolve("[::1]", 82) == [(socket.AF_INET6, ("::1", 82, 0, 0))]
    assert dns.calls == []


def test_cache_hits_and_port_substitution():
    dns = FakeDns({"host.test": ["127.0.0.2", "::1", "127.0.0.2"]})
    r = Resolver(resolve_fn=dns)
    first = r.resolve("host.test", 80)
    # getaddrinfo order kept, duplicates dropped
    assert first == [(socket.AF_INET, ("127.0.0.2", 80)), (socket.AF_INET6, ("::1", 80, 0, 0))]
    assert r.resolve("HOST.test", 443) == [(socket.AF_INET, ("127.0.0.2", 443)),
                                          (socket.AF_INET6, ("::1", 443, 0, 0))]
    assert r.resolve("host.test", 80) == first
    assert dns.calls == ["host.test"]
    assert r.stats["hits"] == 2 and r.stats["misses"] == 1 and r.stats["lookups"] == 1


def test_ttl_expiry():
    clock = FakeClock()
    dns = FakeDns({"a.test": ["127.0.0.3"]})
    r = Resolver(cache_ttl=60, resolve_fn=dns, clock=clock)
    r.resolve("a.test", 1)
    clock.now += 59
    r.resolve("a.test", 1)
    assert len(dns.calls) == 1
    clock.now += 2
    r.resolve("a.test", 1)
    assert len(dns.calls) == 2


def test_negative_cache():
    clock = FakeClock()
    dns = FakeDns({})
    r = Resolver(negative_ttl=30, resolve_fn=dns, clock=clock)
    for _ in range(3):
        with pytest.raises(HostUnreachable) as info:
            r.resolve("nope.test", 80)
        assert info.value.reply == REP_HOST_UNREACHABLE
        assert str(info.value) == "cannot resolve nope.test: name or service not known"
    assert dns.calls == ["nope.test"]
    assert r.stats["negative_hits"] == 2
    clock.now += 31
    with pytest.raises(HostUnreachable):
        r.resolve("nope.test", 80)
    assert len(dns.calls) == 2


def test_single_flight():
    dns = FakeDns({"slow.test": ["127.0.0.4"]}, delay=0.05)
    r = Resolver(resolve_fn=dns)
    jobs = [gevent.spawn(r.resolve, "slow.test", 1000 + i) for i in range(10)]
    gevent.joinall(jobs, timeout=2, raise_error=True)
    assert dns.calls == ["slow.test"]
    assert [j.value for j in jobs] == [[(socket.AF_INET, ("127.0.0.4", 1000 + i))]
                                       for i in range(10)]
    assert r.stats["joined"] == 9


def test_single_flight_failure_is_shared_and_killing_an_asker_strands_nobody():
    dns = FakeDns({}, delay=0.05)
    r = Resolver(resolve_fn=dns)
    jobs = [gevent.spawn(r.resolve, "gone.test", 80) for _ in range(5)]
    assert wait_until(lambda: dns.calls, 2, 0)       # the lookup is under way (0.05 s)
    jobs[0].kill()  # the first asker goes away mid-lookup
    gevent.joinall(jobs, timeout=2)
    assert dns.calls == ["gone.test"]
    for job in jobs[1:]:
        assert isinstance(job.exception, HostUnreachable)


def test_timeout():
    dns = FakeDns({"hang.test": ["127.0.0.5"]}, delay=1.0)
    r = Resolver(timeout=0.05, resolve_fn=dns)
    with gevent.Timeout(0.5):
        with pytest.raises(HostUnreachable,
                           match=r"^cannot resolve hang\.test: timed out after 0\.05s$"):
            r.resolve("hang.test", 80)
        # timeouts are negatively cached too: no second hanging lookup
        with pytest.raises(HostUnreachable, match="timed out"):
            r.resolve("hang.test", 80)
    assert dns.calls == ["hang.test"]
    assert r.stats["timeouts"] == 1


def test_bounded_size_evicts_oldest():
    dns = FakeDns({"%d.test" % i: ["127.0.0.%d" % (i + 1)] for i in range(5)})
    r = Resolver(max_entries=3, resolve_fn=dns)
    for i in range(5):
        r.resolve("%d.test" % i, 1)
    assert len(r) == 3
    r.resolve("4.test", 1)  # still cached
    r.resolve("0.test", 1)  # evicted: looked up again
    assert dns.calls.count("4.test") == 1
    assert dns.calls.count("0.test") == 2


def test_real_localhost():
    addrs = Resolver(timeout=3).resolve("localhost", 8080)
    assert addrs
    ips = {sockaddr[0] for _family, sockaddr in addrs}
    assert ips & {"127.0.0.1", "::1"}
    assert all(sockaddr[1] == 8080 for _family, sockaddr in addrs)


# --- Dialer ---------------------------------------------------------------------

@pytest.fixture
def listener():
    sock = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


def closed_port():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_real_connect_allowed_by_rule(listener):
    port = listener.getsockname()[1]
    dialer = Dialer(Resolver(), DestinationAcl(allow_private_to=["127.0.0.1/32:%d" % port]),
                    connect_timeout=2)
    conn = dialer.dial("127.0.0.1", port)
    try:
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert conn.gettimeout() is None
        peer, _ = listener.accept()
        conn.sendall(b"ping")
        assert peer.recv(4) == b"ping"
        peer.close()
    finally:
        conn.close()
    assert dialer.dial_stats["connected"] == 1


def test_real_connect_falls_back_to_next_address(listener):
    # ::1 has no listener on this port (refused, or unreachable without IPv6);
    # 127.0.0.1 accepts.
    port = listener.getsockname()[1]
    dns = FakeDns({"svc.test": ["::1", "127.0.0.1"]})
    dialer = Dialer(Resolver(resolve_fn=dns), DestinationAcl(allow_private_to=["svc.test"]),
                    connect_timeout=2)
    conn = dialer.dial("svc.test", port)
    try:
        assert conn.getpeername()[:2] == ("127.0.0.1", port)
    finally:
        conn.close()
    assert dialer.dial_stats["attempts"] == 2


def test_refused_port():
    port = closed_port()
    dialer = Dialer(Resolver(), DestinationAcl(allow_private_to=["127.0.0.1"]), connect_timeout=2)
    with pytest.raises(ConnectionRefused) as info:
        dialer.dial("127.0.0.1", port)
    assert info.value.reply == REP_CONNECTION_REFUSED
    assert str(info.value) == "cannot connect to 127.0.0.1:%d: connection refused" % port
    assert dialer.dial_stats["refused"] == 1


def test_loopback_refused_by_default_without_connect_attempt():
    connect = RecordingConnect()
    dialer = Dialer(Resolver(resolve_fn=FakeDns({})), DestinationAcl(), connect_fn=connect)
    for host in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        with pytest.raises(NotAllowed) as info:
            dialer.dial(host, 22)
        assert info.value.reply == REP_NOT_ALLOWED
        assert "(loopback)" in str(info.value)
    assert connect.calls == []
    assert dialer.dial_stats["not_allowed"] == 3


def test_name_resolving_to_loopback_refused():
    connect = RecordingConnect()
    dns = FakeDns({"evil.test": ["127.0.0.1"]})
    dialer = Dialer(Resolver(resolve_fn=dns), DestinationAcl(), connect_fn=connect)
    with pytest.raises(NotAllowed, match=r"^destination evil\.test:80 \(127\.0\.0\.1\) "
                                         r"is not allowed \(loopback\)$"):
        dialer.dial("evil.test", 80)
    assert connect.calls == []
    assert dns.calls == ["evil.test"]


def test_refused_addresses_are_skipped():
    sentinel = object()
    connect = RecordingConnect({"127.0.0.9": sentinel})
    dns = FakeDns({"mixed.test": ["10.0.0.1", "127.0.0.9"]})
    dialer = Dialer(Resolver(resolve_fn=dns), DestinationAcl(allow_private_to=["127.0.0.9"]),
                    connect_fn=connect)
    assert dialer.dial("mixed.test", 443) is sentinel
    assert [c[0] for c in connect.calls] == ["127.0.0.9"]
    assert dialer.dial_stats["skipped"] == 1


def test_name_deny_applies_before_resolution():
    dns = FakeDns({"x.blocked.test": ["127.0.0.1"]})
    dialer = Dialer(Resolver(resolve_fn=dns), DestinationAcl(deny=["*.blocked.test"]),
                    connect_fn=RecordingConnect())
    with pytest.raises(NotAllowed, match="denied by rule"):
        dialer.dial("x.blocked.test", 443)
    assert dns.calls == []


def test_unresolvable_name():
    dialer = Dialer(Resolver(resolve_fn=FakeDns({})), DestinationAcl(),
                    connect_fn=RecordingConnect())
    with pytest.raises(HostUnreachable, match=r"^cannot resolve nx\.test: "):
        dialer.dial("nx.test", 443)
    assert dialer.dial_stats["unresolved"] == 1


@pytest.mark.parametrize("exc,cls,reply,text", [
    (socket.timeout("timed out"), TimedOut, REP_TTL_EXPIRED, "timed out after 3s"),
    (OSError(errno.ETIMEDOUT, "Connection timed out"), TimedOut, REP_TTL_EXPIRED,
     "timed out after 3s"),
    (OSError(errno.ENETUNREACH), NetworkUnreachable, REP_NETWORK_UNREACHABLE,
     "network is unreachable"),
    (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), NetworkUnreachable,
     REP_NETWORK_UNREACHABLE, "cannot assign requested address"),
    (OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol"), NetworkUnreachable,
     REP_NETWORK_UNREACHABLE, "address family not supported by protocol"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), HostUnreachable, REP_HOST_UNREACHABLE,
     "no route to host"),
    (OSError(errno.ECONNREFUSED, "Connection refused"), ConnectionRefused, REP_CONNECTION_REFUSED,
     "connection refused"),
    (OSError(errno.EACCES, "Permission denied"), DestinationError, REP_GENERAL_FAILURE,
     "permission denied (EACCES)"),
])
def test_connect_error_mapping(exc, cls, reply, text):
    connect = RecordingConnect(default=exc)
    dialer = Dialer(Resolver(), DestinationAcl(allow_private_to=["127.0.0.7"]), connect_timeout=3,
                    connect_fn=connect)
    with pytest.raises(DestinationError) as info:
        dialer.dial("127.0.0.7", 8443)
    assert type(info.value) is cls
    assert info.value.reply == reply
    assert str(info.value) == "cannot connect to 127.0.0.7:8443: %s" % text
    assert len(connect.calls) == 1


def test_most_specific_error_wins_and_budget_is_shared():
    connect = RecordingConnect({
        "::1": OSError(errno.ENETUNREACH, "Network is unreachable"),
        "127.0.0.1": OSError(errno.ECONNREFUSED, "Connection refused"),
        "127.0.0.2": OSError(errno.EHOSTUNREACH, "No route to host"),
    })
    dns = FakeDns({"multi.test": ["::1", "127.0.0.1", "127.0.0.2"]})
    dialer = Dialer(Resolver(resolve_fn=dns), DestinationAcl(allow_private=True),
                    connect_timeout=12, connect_fn=connect, clock=FakeClock())
    with pytest.raises(ConnectionRefused) as info:
        dialer.dial("multi.test", 80)
    assert str(info.value) == ("cannot connect to multi.test:80 (127.0.0.1): connection refused "
                               "(3 addresses tried)")
    # the clock does not move: 12/3, 12/2, 12/1
    assert [c[2] for c in connect.calls] == [4, 6, 12]


def test_real_connect_timeout_on_full_backlog():
    # A listener that never accepts, with a full accept queue, drops SYNs:
    # a real connect timeout on loopback (skipped where the stack differs).
    lsock = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    dialer = Dialer(Resolver(), DestinationAcl(allow_private_to=["127.0.0.1"]), connect_timeout=0.2)
    opened = []
    try:
        for _ in range(4):
            try:
                opened.append(dialer.dial("127.0.0.1", port))
            except TimedOut as exc:
                assert exc.reply == REP_TTL_EXPIRED
                assert str(exc) == "cannot connect to 127.0.0.1:%d: timed out after 0.2s" % port
                return
        pytest.skip("this network stack does not drop SYNs on a full backlog")
    finally:
        for sock in opened:
            sock.close()
        lsock.close()
