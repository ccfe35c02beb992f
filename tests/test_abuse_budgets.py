"""Per-tunnel and per-user budgets (issue 9, item 1): tight, shared, and lossless.

The budgets stop relays and readers; these tests check that they also start
them again (no byte lost, no stall) and that a user's tunnels share one
budget and one tunnel limit.
"""

import random

import gevent
import pytest

from afb.errors import AuthError
from afb.mux.scheduler import FRAME_COST
from afb.transport.relay import READ_CHUNK
from tests.abuse import FastSource, RawTunnel
from tests.support import Daemon, HashTarget, Setup, wait_port, wait_until
from tests.test_tunnel_integrity import PATTERN, _one_stream

MiB = 1 << 20


def test_streams_arrive_intact_through_budgets_far_smaller_than_their_windows(tmp_path):
    """256 KiB budgets on both sides, 120 streams of up to 2 MiB each way at
    once: the relays and readers pause and resume constantly, and every byte
    arrives."""
    setup = Setup(tmp_path, server_extra="[tunnel]\nmax_buffer = 256K\n"
                                          "max_buffer_per_user = 256K\n",
                  client_extra="max_buffer = 256K\n")
    server = Daemon("server", setup.server_conf, str(tmp_path / "server.log"))
    client = Daemon("client", setup.client_conf, str(tmp_path / "client.log"))
    target = HashTarget(PATTERN)
    try:
        wait_port(setup.server_port)
        wait_port(setup.proxy_port)
        rng = random.Random(9)
        proxy = ("127.0.0.1", setup.proxy_port)
        jobs = [gevent.spawn(_one_stream, proxy, target, rng.randbytes(16),
                             rng.randint(0, 2 * MiB), rng.randint(0, 2 * MiB)) for _ in range(120)]
        gevent.joinall(jobs, timeout=180, raise_error=True)
        for job in jobs:
            ident, up_hash, down_hash = job.value
            assert target.results[ident] == (up_hash, down_hash)
    finally:
        target.close()
        client.stop()
        server.stop()


@pytest.fixture
def small_budget_server(tmp_path):
    from afb.apps.server import TunnelServer

    setup = Setup(tmp_path, server_extra="[tunnel]\nmax_buffer = 1M\nmax_buffer_per_user = 1M\n"
                                         "max_tunnels_per_user = 2\n")
    server = TunnelServer(setup.server_cfg())
    server.start()
    source = FastSource(lifetime=30)
    try:
        yield setup, server, source
    finally:
        source.close()
        server.stop(timeout=0)


def test_a_users_tunnels_share_one_budget(small_budget_server):
    setup, server, source = small_budget_server
    attackers = [RawTunnel(setup) for _ in range(2)]
    for attacker in attackers:
        assert attacker.read_hello() is not None
        for _ in range(20):
            attacker.open("127.0.0.1", source.port)
    user = wait_until(lambda: server.users.get("tester"), 5)
    assert wait_until(lambda: user.streams == 40 and user.down.waiting, 10)
    gevent.sleep(0.5)                              # the flood presses on; the peak must hold
    # One read may cross the limit before the relays see it (and each frame's cost).
    slack = READ_CHUNK + 64 * FRAME_COST
    assert user.down.peak <= 1 * MiB + slack
    sessions = list(user.sessions)
    assert len(sessions) == 2 and sum(s.down.used for s in sessions) == user.down.used
    for attacker in attackers:
        attacker.close()
    assert wait_until(lambda: server.users.get("tester") is None, 10)


def test_a_user_beyond_its_tunnel_limit_is_told_why(small_budget_server):
    setup, server, _source = small_budget_server
    first, second = RawTunnel(setup), RawTunnel(setup)
    assert first.read_hello() is not None and second.read_hello() is not None
    with pytest.raises(AuthError) as refused:
        RawTunnel(setup)
    assert str(refused.value) == ("the server refused the tunnel: user tester has 2 tunnels "
                                  "already (limit 2: [tunnel] max_tunnels_per_user)")
    first.close()
    assert wait_until(lambda: server.users.get("tester").tunnels == 1, 10)
    fourth = RawTunnel(setup)                      # room again
    assert fourth.read_hello() is not None
    for tunnel in (second, fourth):
        tunnel.close()
