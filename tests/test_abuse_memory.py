"""One user must not exhaust the server's memory (issue 9, item 1).

Real ``afb server`` processes on loopback, attacked by a tunnel client that
writes its frames by hand (:class:`tests.abuse.RawTunnel`): it advertises
huge windows, opens many streams to a source that sends as fast as it can,
and never reads its WebSocket; or it pushes data into streams whose
destination never reads.  The server's resident memory must stay within the
documented bound (``[tunnel] max_buffer``, 8 MiB a direction, plus the
streams' bookkeeping), where it used to grow by gigabytes.
"""

import os

import gevent
import pytest

from afb.codec import frames
from afb.errors import CLOSE_PROTOCOL_ERROR
from tests.abuse import FastSource, RawTunnel, StuckSink, rss, socket_memory
from tests.support import Setup, running

MiB = 1 << 20


@pytest.fixture
def server(tmp_path):
    setup = Setup(tmp_path)
    with running("server", setup, tmp_path / "server.log") as daemon:
        yield setup, daemon


def _growth_while(daemon, seconds, limit, kernel=False):
    """Largest RSS growth of ``daemon`` seen within ``seconds`` (stops early past
    ``limit``); with ``kernel``, plus the growth of its sockets' kernel queues."""
    def used():
        pid = daemon.proc.pid
        return rss(pid) + (socket_memory(pid) if kernel else 0)

    base = used()
    worst = 0
    for _ in range(int(seconds / 0.1)):
        gevent.sleep(0.1)                    # a sample every 0.1 s
        worst = max(worst, used() - base)
        if worst > limit:
            break
    return worst


def test_a_hello_window_above_the_protocol_maximum_is_refused(server):
    setup, daemon = server
    attacker = RawTunnel(setup, window=0xFFFFFFFF)
    assert attacker.read_hello() is None or attacker.ws.recv_message() is None
    assert attacker.raw.peer_close_code == CLOSE_PROTOCOL_ERROR
    assert "exceeds the protocol's largest" in attacker.raw.peer_close_reason
    attacker.close()
    assert daemon.proc.poll() is None


@pytest.mark.parametrize("window, streams, bound", [
    (frames.MAX_WINDOW, 64, 40 * MiB),    # the largest windows allowed
    (256 * 1024, 2000, 48 * MiB),         # the default window, many streams
])
def test_a_client_that_never_reads_cannot_grow_the_server(server, window, streams, bound):
    """Streams of a fast download, nothing read: bounded by the budget (8 MiB)
    plus the streams' bookkeeping (~6 KiB each: two sockets' worth)."""
    setup, daemon = server
    source = FastSource(lifetime=40)
    try:
        attacker = RawTunnel(setup, window=window)
        assert attacker.read_hello() is not None
        attacker.open_many("127.0.0.1", source.port, streams)
        growth = _growth_while(daemon, 5.0, limit=512 * MiB)
        assert growth < bound, "server grew by %.0f MiB" % (growth / MiB)
        attacker.close()
    finally:
        source.close()
    assert daemon.proc.poll() is None


def test_data_for_destinations_that_never_read_is_not_buffered_without_bound(server):
    """400 streams pushed at a sink that reads nothing, every byte within the
    credit the server grants.  The server's kernel takes 46 KiB per socket
    (TCP_NOTSENT_LOWAT), afb holds its budget, then stops reading the tunnel:
    not a window per stream in afb (100 MiB), not ~3.8 MiB per socket in the
    kernel (1.5 GiB).  Measured: the server's RSS plus its sockets' kernel
    queues (the tunnel's own included)."""
    setup, daemon = server
    sink = StuckSink(lifetime=40)
    try:
        attacker = RawTunnel(setup)
        assert attacker.read_hello() is not None
        ids = [attacker.open("127.0.0.1", sink.port) for _ in range(400)]
        pusher = gevent.spawn(attacker.push, ids, os.urandom(32 * 1024), 2 * MiB, 8.0)
        growth = _growth_while(daemon, 6.0, limit=512 * MiB, kernel=True)
        pusher.kill()
        assert growth < 96 * MiB, "server and kernel grew by %.0f MiB" % (growth / MiB)
        attacker.close()
    finally:
        sink.close()
