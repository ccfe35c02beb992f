"""Issue 15, part 5: slow half-open handshakes and a flood of OPENs keep no real user out.

Real ``afb server`` and ``afb client`` processes on loopback, attacked from
other processes:

* 1,000 slow half-open handshakes (``tests/slow_handshakes.py``: one byte
  every 2 s, never the last, a new connection for each one closed) of each
  kind -- a SOCKS5 greeting or an HTTP proxy head to the client's local
  proxy, a TLS ClientHello and an HTTP upgrade head (after TLS) to the
  server -- from 50 source
  addresses (20 each: under the server's per-source cap of 32, so that cap
  alone does not explain the result) and from one.  The attacked process runs
  with a low descriptor limit (512 for the client, 1,024 for the server), so
  the 1,000 would take every descriptor if nothing bounded them.  Meanwhile
  a real app's curl through the client, and a new tunnel, each take less than
  :data:`BOUND`; the attacked process's descriptors and RSS stay bounded.
* A tunnel client that sends OPENs as fast as it can (``tests/flood_client.py
  opens``) meets ``max_streams_per_user``, ``max_streams`` and ``[qos]
  max_new_streams_per_second``: OPEN_FAIL with the reason, its tunnel kept;
  another user's echo p99 stays under 50 ms and the server's RSS bounded.

Every figure is printed (``pytest -s``); every load is bounded in count and time.
"""

import json
import time

import gevent
import pytest

from afb.apps.socks_handshake import PendingHandshakes, pending_limit
from afb.policy.auth import issue_token
from afb.transport.admission import Admission
from tests.abuse import (
    ProcessWatch,
    SlowHandshakes,
    StuckSink,
    curl_through,
    flood_process,
    new_tunnel_seconds,
    ok_server,
    open_fds,
)
from tests.support import Setup, recv_exact, running, socks_connect, wait_log, wait_until

#: The stated bound: a real app's request, or a new tunnel, while the 1,000 are held.
BOUND = 1.0
SLOW = 1000
MANY_SOURCES = "127.0.15.1-50"          # 20 connections each
ONE_SOURCE = "127.0.16.1"
CLIENT_FDS = 512
SERVER_FDS = 1024
MiB = 1 << 20


@pytest.fixture
def web():
    server = ok_server()
    yield server.server_port
    server.stop()


def _hold(attack):
    """Wait until the attacker has opened its 1,000 and kept at it for 2 s."""
    assert wait_until(lambda: attack.status["opened"] >= SLOW, 30), attack.status
    gevent.sleep(2.0)
    assert attack.proc.poll() is None


@pytest.mark.parametrize("kind", ["socks", "connect"])
@pytest.mark.parametrize("sources", [MANY_SOURCES, ONE_SOURCE], ids=["50-sources", "1-source"])
def test_slow_proxy_handshakes_do_not_keep_apps_out(tmp_path, web, kind, sources, capsys):
    """SOCKS5 greetings, or HTTP proxy heads (``connect``), to the client's local proxy."""
    setup = Setup(tmp_path)
    with running("server", setup, tmp_path / "server.log"), \
            running("client", setup, tmp_path / "client.log", nofile=CLIENT_FDS) as client:
        curl_through(setup, web)                                   # the tunnel is up
        watch = ProcessWatch(client.proc.pid)
        attack = SlowHandshakes(kind, setup.proxy_port, SLOW, sources, seconds=40)
        try:
            _hold(attack)
            times = [curl_through(setup, web) for _ in range(5)]
            status = dict(attack.status)
        finally:
            attack.close()
        watch.stop()
    with capsys.disabled():
        print("\n[handshakes] %s x %d from %s: curl max %.0f ms (median %.0f); attacker %s; "
              "client %s" % (kind, SLOW, sources, max(times) * 1e3, sorted(times)[2] * 1e3,
                             json.dumps(status), watch.line()))
    assert max(times) < BOUND
    cap = CLIENT_FDS // 4                                   # max_pending_handshakes' share
    # An HTTP head closed to make room is in a greenlet, whose socket closes when it
    # next runs: a burst of accepts (64 a callback) may pass the bound meanwhile.
    slack = 16 if kind == "socks" else 16 + 2 * 64
    assert watch.fds_peak <= watch.fds0 + cap + slack, watch.line()
    assert watch.rss_peak - watch.rss0 < 16 * MiB, watch.line()
    out = client.output()
    assert "Traceback" not in out and "Too many open files" not in out
    assert out.count("closing the oldest for each new one ([client] "
                     "max_pending_handshakes = %d)" % cap) == 1


@pytest.mark.parametrize("kind", ["tls", "http"])
@pytest.mark.parametrize("sources", [MANY_SOURCES, ONE_SOURCE], ids=["50-sources", "1-source"])
def test_slow_server_handshakes_do_not_keep_tunnels_out(tmp_path, web, kind, sources, capsys):
    setup = Setup(tmp_path)
    with running("server", setup, tmp_path / "server.log", nofile=SERVER_FDS) as server, \
            running("client", setup, tmp_path / "client.log"):
        curl_through(setup, web)
        watch = ProcessWatch(server.proc.pid)
        # (an upgrade head needs a TLS handshake first: 1,000 new ones a second are a
        # handshake flood that takes a core of the server, bench/abuse measures that)
        attack = SlowHandshakes(kind, setup.server_port, SLOW, sources, seconds=50,
                                rate=250 if kind == "http" else 1000)
        try:
            _hold(attack)
            held = open_fds(server.proc.pid)
            times = [curl_through(setup, web) for _ in range(5)]
            tunnels = [new_tunnel_seconds(setup) for _ in range(5)]
            status = dict(attack.status)
        finally:
            attack.close()
        watch.stop()
    with capsys.disabled():
        print("\n[handshakes] %s x %d from %s: curl max %.0f ms, new tunnel max %.0f ms "
              "(median %.0f); attacker %s; server %s, %d while held" % (
                  kind, SLOW, sources, max(times) * 1e3, max(tunnels) * 1e3,
                  sorted(tunnels)[2] * 1e3, json.dumps(status), watch.line(), held))
    assert max(times) < BOUND
    assert max(tunnels) < BOUND
    # The high-water mark, 819 (measured: 830 held for slow ClientHellos); a burst of
    # accepts passes it until the greenlets of the closed ones have run, never to the limit.
    assert held < SERVER_FDS - 16 and watch.fds_peak < SERVER_FDS, watch.line()
    # Bounded by the mark: ~70 KiB for each connection in its TLS handshake.
    assert watch.rss_peak - watch.rss0 < 96 * MiB, watch.line()
    out = server.output()
    assert "Traceback" not in out and "out of descriptors" not in out


def test_max_pending_bounds_slow_handshakes_whatever_the_descriptors(tmp_path, web, capsys):
    """The inherited descriptor limit (20,000 here: a mark of 16,000), [access]
    max_pending = 300: 1,000 slow ClientHellos from 50 sources hold ~300."""
    setup = Setup(tmp_path, server_extra="[access]\nmax_pending = 300\n")
    with running("server", setup, tmp_path / "server.log") as server, \
            running("client", setup, tmp_path / "client.log"):
        curl_through(setup, web)
        watch = ProcessWatch(server.proc.pid)
        attack = SlowHandshakes("tls", setup.server_port, SLOW, MANY_SOURCES, seconds=40)
        try:
            _hold(attack)
            held = open_fds(server.proc.pid)
            tunnels = [new_tunnel_seconds(setup) for _ in range(5)]
            times = [curl_through(setup, web) for _ in range(5)]
        finally:
            attack.close()
        watch.stop()
    with capsys.disabled():
        print("\n[handshakes] tls x %d, max_pending 300: curl max %.0f ms, new tunnel max %.0f ms; "
              "server %s, %d while held" % (SLOW, max(times) * 1e3, max(tunnels) * 1e3,
                                            watch.line(), held))
    assert max(times) < BOUND and max(tunnels) < BOUND
    assert held <= watch.fds0 + 300 + 32, watch.line()
    assert watch.rss_peak - watch.rss0 < 48 * MiB, watch.line()
    assert "[access] max_pending 300): closed the" in server.output()


def test_pending_handshakes_close_the_oldest_for_a_newcomer():
    closed = []
    pending = PendingHandshakes(3)
    for name in "abc":
        pending.add(name, lambda name=name: closed.append(name))
    pending.discard("b")                             # finished: no longer counted
    pending.add("d", lambda: closed.append("d"))
    assert closed == [] and len(pending) == 3
    pending.add("e", lambda: closed.append("e"))
    # "a" was aborted but is not discarded yet (a killed greenlet): it still counts,
    # so "c" goes too, and no more than those two
    assert closed == ["a", "c"] and len(pending) == 4 and pending.evicted == 2
    pending.discard("a")
    pending.discard("c")
    pending.add("f", lambda: closed.append("f"))
    assert closed == ["a", "c"] and len(pending) == 3
    assert PendingHandshakes(0).limit == 0


def test_the_pending_limit_is_at_most_a_quarter_of_the_descriptors():
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert pending_limit(256) == min(256, max(16, soft // 4))
    assert pending_limit(0) == max(16, soft // 4)


def test_pending_connections_count_against_the_high_water_mark():
    adm = Admission(fd_limit=1000, high_water=0.8)
    assert not adm.over_high_water(10, pending=799)
    assert adm.over_high_water(10, pending=800) and adm.over_high_water(800)
    capped = Admission(fd_limit=1000, high_water=0.8, max_pending=100)
    assert not capped.over_high_water(10, pending=99) and capped.over_high_water(10, 100)
    adm.admit("192.0.2.1")
    adm.admit("192.0.2.1")
    assert adm.count("192.0.2.1") == 2 and adm.count("192.0.2.2") == 0


# --- a flood of OPENs ------------------------------------------------------------------

FLOOD_SECONDS = 5.0
#: Another user's echo p99 during the flood (as tests/test_abuse_cpu.py states it).
ECHO_P99_BOUND = 0.05


def _echo_p99(sock, seconds):
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        sock.sendall(b"x" * 64)
        recv_exact(sock, 64)
        times.append(time.perf_counter() - started)
    return sorted(times)[int(len(times) * 0.99)], len(times)


@pytest.mark.parametrize("extra, reason, most", [
    ("", "user mallory has too many streams (limit N)", 2048),
    ("[tunnel]\nmax_streams = 1000\nmax_streams_per_user = 0\n", "too many streams (limit N)",
     1000),
    ("[qos]\nmax_new_streams_per_second = 200\n",
     "user mallory opens too many streams (limit N a second", 2048),
], ids=["max_streams_per_user", "max_streams", "max_new_streams_per_second"])
def test_a_flood_of_opens_meets_the_limits_cleanly(tmp_path, echo, extra, reason, most, capsys):
    setup = Setup(tmp_path, server_extra=extra)
    sink = StuckSink(lifetime=60)
    with running("server", setup, tmp_path / "server.log") as server, \
            running("client", setup, tmp_path / "client.log"):
        sock = socks_connect(("127.0.0.1", setup.proxy_port), "127.0.0.1", echo.port)
        baseline, _ = _echo_p99(sock, 1.0)
        watch = ProcessWatch(server.proc.pid)
        mallory = issue_token(setup.jwt_key, "mallory", 3600)
        log = tmp_path / "flood.log"
        flooder = flood_process(setup, "opens", FLOOD_SECONDS, str(log), token=mallory,
                                extra=["--target", "127.0.0.1:%d" % sink.port])
        try:
            wait_log(server, "tunnel mallory@", 15)
            during, echoes = _echo_p99(sock, FLOOD_SECONDS - 2)
        finally:
            flooder.wait(30)
            sink.close()
        watch.stop()
        sock.close()
        line = open(log).read().strip()
        assert server.proc.poll() is None
    with capsys.disabled():
        print("\n[opens] %s: %s; echo p99 %.1f ms (baseline %.1f ms, %d echoes); server %s" % (
            extra.replace("\n", " ").strip() or "defaults", line, during * 1e3, baseline * 1e3,
            echoes, watch.line()))
    answers = json.loads(line.split("answers ", 1)[1])
    assert "0 reconnects" in line, line                 # the tunnel was kept
    assert not any(key.startswith("tunnel closed") for key in answers), answers
    refused = sum(n for key, n in answers.items() if key.startswith("OPEN_FAIL 0x01 " + reason))
    assert refused > 10000 and answers["OPEN_OK"] <= most, answers
    assert during < ECHO_P99_BOUND
    assert watch.rss_peak - watch.rss0 < 96 * MiB, watch.line()
    assert "Traceback" not in server.output()
