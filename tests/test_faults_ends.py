"""Faults at the ends (issue 15, part 3): the server killed (``kill -9``) and started again;
destinations that reset, that black-hole, that accept and never read.  Real daemons in
two network namespaces (tests/fault_rig.py); apps with PySocks or a hand-made SOCKS5
request.  Each case ends in a clean error the app sees within its timeout (or the data
byte-exact), no hang, and the daemons' descriptors back to their count before."""

import logging
import os
import signal
import socket
import struct
import time

import gevent
import pytest

from tests.fault_rig import NO_IPTABLES, Echoer, FaultRig, Transfer, record
from tests.netns import unavailable

log = logging.getLogger(__name__)

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


def _wait(predicate, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(interval)
    return True


def _rss_kib(proc):
    with open("/proc/%d/status" % proc.pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.timeout(120)
def test_a_killed_server_resets_the_open_streams_and_new_ones_work_once_it_is_back(tmp_path):
    """The destination sockets died with the server: the streams cannot resume.  The
    client's resume is refused by the new server (or the grace runs out) and the apps
    see a reset, not a hang; the client keeps no descriptor of them."""
    with FaultRig(tmp_path, grace=10) as rig:
        client_fds = rig.baseline(rig.client)
        transfer = Transfer(rig, 1 << 20, 64 << 20, rate=2 << 20)
        echoer = Echoer(rig)
        assert _wait(lambda: echoer.sent >= 5 and transfer.got > 0, 10)
        killed_at = time.monotonic()
        rig.server.send_signal(signal.SIGKILL)
        rig.server.wait(10)
        gevent.sleep(1.0)
        rig.start_server()
        back_at = time.monotonic()
        assert _wait(lambda: echoer.error is not None and transfer.error is not None, 15), \
            "the held streams hang"
        ended = max(echoer.error_at, transfer.ended_at) - killed_at
        assert isinstance(echoer.error, (OSError, EOFError)), echoer.error
        assert isinstance(transfer.error, (OSError, EOFError)), transfer.error
        assert "cannot resume" in rig.output("client"), rig.output("client")[-2000:]
        again = Echoer(rig)
        assert _wait(lambda: again.sent >= 3, 15), "no new stream after the restart"
        again.stop()
        assert again.error is None, again.error
        new_stream_after = time.monotonic() - back_at
        echoer.stop()
        after = rig.settled_descriptors(rig.client, client_fds)
        assert after <= client_fds, (client_fds, after)
    log.warning("server killed, back after 1 s: the apps saw a reset %.2f s after the kill "
                "(%d of %d bytes downloaded before it), a new stream echoed %.2f s after the "
                "restart; client descriptors %d before, %d after", ended, transfer.got,
                transfer.down, new_stream_after, client_fds, after)
    record("server kill -9, back after 1 s", None, ended,
           "open streams reset (cannot resume: their sockets died); a new stream %.2f s after "
           "the restart; client fds %d -> %d" % (new_stream_after, client_fds, after))


@pytest.mark.timeout(60)
def test_a_destination_that_resets_mid_transfer_is_a_clean_error(tmp_path):
    sent = 256 * 1024

    def resetter(sock, _address):
        try:
            sock.sendall(os.urandom(sent))
            gevent.sleep(0.3)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            sock.close()                # with SO_LINGER 0: an RST

    with FaultRig(tmp_path) as rig:
        port = rig.listen(resetter)
        baseline = rig.baseline(rig.client), rig.baseline(rig.server)
        echoer = Echoer(rig)
        sock = rig.socks(port, timeout=20)
        started = time.monotonic()
        got = 0
        error = None
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                got += len(data)
        except OSError as exc:
            error = exc
        ended = time.monotonic() - started
        sock.close()
        assert got <= sent
        assert ended < 10
        gevent.sleep(0.5)
        echoer.stop()
        assert echoer.error is None, echoer.error      # the other stream went on
        assert rig.settled_descriptors(rig.client, baseline[0]) <= baseline[0]
        assert rig.settled_descriptors(rig.server, baseline[1]) <= baseline[1]
    log.warning("destination reset after %d bytes: the app got %d bytes then %s after "
                "%.2f s", sent, got, "EOF" if error is None else repr(error), ended)
    record("destination resets mid-transfer", None, ended,
           "the app got %d of %d bytes, then %s" % (got, sent, "EOF" if error is None
                                                    else type(error).__name__))


@pytest.mark.skipif(NO_IPTABLES is not None, reason=str(NO_IPTABLES))
@pytest.mark.timeout(60)
def test_a_black_holed_destination_times_out_with_a_socks_error(tmp_path):
    """SYNs to the destination are dropped (iptables in the server's namespace): the
    server's connect times out after ``connect_timeout`` (3 s) and the app gets SOCKS
    reply 0x04 or 0x06, not a hang."""
    with FaultRig(tmp_path, server_extra="connect_timeout = 3\n", fast_open=False) as rig:
        port = rig.listen(lambda sock, _address: sock.close())
        rig.link.server.run(["iptables-legacy", "-A", "OUTPUT", "-p", "tcp", "-d", "127.0.0.1",
                             "--dport", str(port), "-j", "DROP"], check=True)
        baseline = rig.baseline(rig.client), rig.baseline(rig.server)
        echoer = Echoer(rig)
        code, seconds, sock = rig.socks_reply(port, timeout=20)
        sock.close()
        echoer.stop()
        assert code in (0x04, 0x06), code
        assert 2.5 <= seconds < 6, seconds
        assert echoer.error is None, echoer.error
        assert rig.settled_descriptors(rig.client, baseline[0]) <= baseline[0]
        assert rig.settled_descriptors(rig.server, baseline[1]) <= baseline[1]
    log.warning("black-holed destination: SOCKS reply 0x%02x after %.2f s (connect_timeout "
                "3 s)", code, seconds)
    record("destination black-holed", None, seconds,
           "SOCKS reply 0x%02x (connect_timeout 3 s)" % code)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("close", ["reset", "fin"])
def test_a_destination_that_never_reads_stalls_only_its_own_upload(tmp_path, close):
    """The upload stops once the window and the socket buffers are full (the server's
    memory stays bounded); an echo and a transfer beside it flow; the app closes it and
    every descriptor of it goes.  ``reset``: the app aborts (RST); the client, which
    reads nothing from a stalled socket, finds the error at its next ping (1 s here;
    before the fix it kept the stream until the far end's idle timeout).  ``fin``: a
    plain close may be a half-close awaiting an answer: the stream stays until the
    server's ``idle_timeout`` (4 s here) resets it."""
    held = []

    def sink(sock, _address):
        held.append(sock)
        gevent.sleep(3600)              # accepts, never reads; closed by the rig's end

    extra = {"reset": dict(client_extra="ping_interval = 1\n"),
             "fin": dict(server_extra="idle_timeout = 4\n")}[close]
    with FaultRig(tmp_path, **extra) as rig:
        port = rig.listen(sink)
        baseline = rig.baseline(rig.client), rig.baseline(rig.server)
        rss_before = _rss_kib(rig.server)
        sock = rig.socks(port, timeout=30)
        sock.setblocking(False)
        pushed = 0
        chunk = b"x" * 65536
        last_progress = time.monotonic()
        while time.monotonic() - last_progress < 2.0:
            try:
                pushed += sock.send(chunk)
                last_progress = time.monotonic()
            except BlockingIOError:
                gevent.sleep(0.05)
            assert pushed < 256 << 20, "the upload never stalls"
        rss_stalled = _rss_kib(rig.server)
        echoer = Echoer(rig)
        transfer = Transfer(rig, 2 << 20, 8 << 20)
        assert transfer.wait(60), "the transfer beside the stalled upload hangs"
        assert transfer.exact(), transfer.error
        assert _wait(lambda: echoer.sent >= 10, 10)
        echoer.stop()
        assert echoer.error is None, echoer.error
        if close == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        closed_at = time.monotonic()
        sock.close()
        client_after = rig.settled_descriptors(rig.client, baseline[0], timeout=10)
        server_after = rig.settled_descriptors(rig.server, baseline[1], timeout=10)
        released = time.monotonic() - closed_at
        assert client_after <= baseline[0]
        assert server_after <= baseline[1], "the server keeps the destination socket"
    assert released < (4 if close == "reset" else 8), released
    assert pushed < 16 << 20, pushed
    assert rss_stalled - rss_before < 32 << 10, (rss_before, rss_stalled)
    log.warning("destination never reads (%s): the upload stalled after %d KiB; server RSS "
                "%+d KiB; descriptors released %.2f s after the app closed", close,
                pushed >> 10, rss_stalled - rss_before, released)
    record("destination never reads, app closes (%s)" % close, None, released,
           "upload stalled after %d KiB, server RSS %+d KiB; a transfer beside it byte-exact"
           % (pushed >> 10, rss_stalled - rss_before))
