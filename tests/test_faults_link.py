"""Faults of the path between client and server (issue 15, part 3): a slow lossy link, the
connection cut mid-transfer, the server stopped for 10 s.  Real ``afb server`` and ``afb
client`` processes in two network namespaces (tests/fault_rig.py); apps with PySocks.
Each case ends byte-exact within its timeout, with both daemons' descriptors back to
their count before the apps."""

import logging
import signal
import time

import gevent
import pytest

from tests.fault_rig import NO_IPTABLES, Echoer, FaultRig, Transfer, record
from tests.netns import unavailable

log = logging.getLogger(__name__)

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


def _baseline(rig):
    return rig.baseline(rig.client), rig.baseline(rig.server)


def _assert_no_leak(rig, baseline):
    client, server = baseline
    for proc, count, space in ((rig.client, client, rig.link.client),
                               (rig.server, server, rig.link.server)):
        if rig.settled_descriptors(proc, count) > count:
            sockets = space.run(["ss", "-tanpe"]).stdout.decode(errors="replace")
            raise AssertionError("descriptors %d -> %s\n%s" % (
                count, "\n".join(rig.descriptor_list(proc)), sockets))


@pytest.mark.skipif(NO_IPTABLES is not None, reason=str(NO_IPTABLES))
@pytest.mark.timeout(240)
def test_a_slow_lossy_reordering_link_delivers_byte_exact(tmp_path):
    """200 ms RTT, 5 % loss each way, +-10 ms jitter (reordering), by
    tests/userspace_netem.py: 2 MiB up and down at once, an echo beside."""
    size = 2 << 20
    with FaultRig(tmp_path) as rig:
        baseline = _baseline(rig)
        rig.link.netem(100, jitter=10, loss=0.05)
        echoer = Echoer(rig, interval=0.2)
        transfer = Transfer(rig, size, size, timeout=180)
        assert transfer.wait(200), "the transfer hangs"
        echoer.stop()
        counts = rig.link.stop_netem()
        assert transfer.exact(), transfer.error
        assert echoer.error is None, echoer.error
        assert echoer.sent >= 5
        _assert_no_leak(rig, baseline)
    log.warning("200 ms RTT, 5 %% loss, reordering: %d KiB each way in %.1f s (%.0f KiB/s "
                "each way), 0 bytes lost; echo p50 %.0f ms, p99 %.0f ms beside it; %s",
                size >> 10, transfer.seconds, (size >> 10) / transfer.seconds,
                echoer.p(0.5) * 1000, echoer.p(0.99) * 1000, counts)
    record("200 ms RTT, 5 % loss, reordering", 0, transfer.seconds,
           "%d KiB each way at once in %.1f s (%.0f KiB/s each way); echo p50 %.0f ms, p99 "
           "%.0f ms beside it" % (size >> 10, transfer.seconds, (size >> 10) / transfer.seconds,
                                  echoer.p(0.5) * 1000, echoer.p(0.99) * 1000))


def _kill_tunnel_connection(rig):
    """``ss -K`` in the client's namespace: its TCP connection to the server is aborted
    (the kernel resets it: the server gets an RST)."""
    res = rig.link.client.run(["ss", "-K", "-t", "dst", rig.link.server_addr, "dport", "=",
                               ":%d" % rig.setup.server_port])
    assert res.returncode == 0, res.stderr


@pytest.mark.timeout(180)
def test_the_connection_cut_mid_transfer_resumes_with_nothing_lost(tmp_path):
    with FaultRig(tmp_path) as rig:
        baseline = _baseline(rig)
        transfer = Transfer(rig, 8 << 20, 24 << 20, rate=4 << 20)
        echoer = Echoer(rig, interval=0.02)
        recoveries = []
        for _cut in range(3):
            gevent.sleep(1.0)
            cut_at = time.monotonic()
            lines = echoer.sent
            _kill_tunnel_connection(rig)
            deadline = time.monotonic() + 15
            while echoer.sent <= lines + 2 and time.monotonic() < deadline:
                gevent.sleep(0.02)
            assert echoer.sent > lines + 2, "the echo stalled"
            recoveries.append(echoer.slowest_after(cut_at))
        assert transfer.wait(60), "the transfer hangs"
        echoer.stop()
        assert transfer.exact(), transfer.error
        assert echoer.error is None, echoer.error
        assert rig.output("client").count("resumed on a new WebSocket") == 3
        assert rig.output("client").count("tunnel up to") == 1
        _assert_no_leak(rig, baseline)
    log.warning("connection cut (ss -K) 3 times mid-transfer: 0 bytes lost of 8 MiB up + "
                "24 MiB down; echo stalled %s s", ", ".join("%.2f" % r for r in recoveries))
    record("connection cut mid-transfer (ss -K), x3", 0, max(recoveries),
           "resumed each time; echo stalls %s s" % ", ".join("%.2f" % r for r in recoveries))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("pinger", ["default", "fast"])
def test_a_server_stopped_for_10_s_goes_on_byte_exact(tmp_path, pinger):
    """SIGSTOP, 10 s, SIGCONT.  ``default``: the pinger (20 s + 15 s) does not notice and
    plain TCP carries on; ``fast`` (1 s + 2 s): the client gives the link up, dials again
    (the stopped server's kernel accepts, nobody answers the TLS handshake) and resumes
    once the server runs again."""
    extra = "ping_interval = 1\nping_timeout = 2\n" if pinger == "fast" else ""
    with FaultRig(tmp_path, client_extra=extra) as rig:
        baseline = _baseline(rig)
        transfer = Transfer(rig, 4 << 20, 16 << 20, rate=1 << 20)
        echoer = Echoer(rig, interval=0.05)
        gevent.sleep(1.5)
        stopped_at = time.monotonic()
        rig.server.send_signal(signal.SIGSTOP)
        gevent.sleep(10)
        rig.server.send_signal(signal.SIGCONT)
        lines = echoer.sent
        deadline = time.monotonic() + 30
        while echoer.sent <= lines + 2 and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert echoer.sent > lines + 2, "the echo stalled"
        stall = echoer.slowest_after(stopped_at)
        assert transfer.wait(90), "the transfer hangs"
        echoer.stop()
        assert transfer.exact(), transfer.error
        assert echoer.error is None, echoer.error
        if pinger == "fast":
            assert "resumed on a new WebSocket" in rig.output("client")
        _assert_no_leak(rig, baseline)
    assert 9.5 <= stall < 25, stall
    log.warning("server stopped 10 s (%s pinger): 0 bytes lost, echo stalled %.2f s "
                "(%.2f s beyond the stop)", pinger, stall, stall - 10)
    record("server SIGSTOP 10 s (%s pinger)" % pinger, 0, stall,
           "echo stall, the 10 s stop included; %s" % (
               "plain TCP carried on" if pinger == "default" else "link dropped and resumed"))
