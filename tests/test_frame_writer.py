"""The session's writer: batches, flush, a peer that does not read, a write that fails,
and its fast and paced modes (over a stand-in link that blocks like a slow one).

A real Session over a WebSocket stand-in (tests/support.RecordingWs, or one
whose sends block like a peer that never reads)."""

import time

import gevent

from afb.codec import frames
from afb.errors import CLOSE_POLICY_VIOLATION
from afb.mux.budget import ByteBudget
from afb.transport.frame_writer import FrameWriter
from afb.transport.session import Session
from tests.support import RecordingWs, wait_until


class StuckWs(RecordingWs):
    """A WebSocket whose peer never reads: the first send blocks."""

    def __init__(self):
        super().__init__()
        self.close_args = None

    def send_message(self, parts):
        gevent.sleep(60)

    def close(self, code=None, reason=""):
        self.closed = True
        self.close_args = (code, reason)


class BrokenWs(RecordingWs):
    def send_message(self, parts):
        raise BrokenPipeError("peer went away")


def _session(ws, **kw):
    session = Session(ws, client=False, ping_interval=0, **kw)
    session.start()
    gevent.sleep(0)
    return session


def test_flush_waits_until_everything_queued_was_sent():
    ws = RecordingWs()
    session = _session(ws)
    for number in range(50):
        session.queue_control(frames.frame(frames.PING, 0, frames.ping_payload(number)))
    session.flush(1.0)
    assert sum(1 for t, _s, _p in ws.frames() if t == frames.PING) == 50
    assert session.down.used == 0            # everything taken is released from the budget
    session.close()


def test_a_peer_that_sends_but_never_reads_is_closed_past_its_backlog():
    ws = StuckWs()
    session = _session(ws, buffer_limit=256 * 1024)
    pong = frames.frame(frames.PONG, 0, frames.ping_payload(1))
    for _ in range(40_000):                  # ~5 MiB of answers nobody reads
        session.queue_control(pong)
        if ws.closed:
            break
    assert wait_until(lambda: ws.closed, 2)
    assert ws.close_args == (CLOSE_POLICY_VIOLATION, "peer does not read")
    assert session.close_reason.startswith("peer does not read")
    assert session.down.used <= session.writer.backlog_limit + 256


def test_a_failed_write_closes_the_session_with_the_reason():
    ws = BrokenWs()
    session = _session(ws)
    session.queue_control(frames.frame(frames.PING, 0, frames.ping_payload(1)))
    assert wait_until(lambda: session.closed, 2)
    assert session.close_reason == "write failed: peer went away"


# --- fast and paced modes (module doc of afb/transport/frame_writer.py) -------------------

class LinkWs(RecordingWs):
    """A WebSocket over a link of ``rate`` bytes/s: a send blocks for its bytes' time
    (``blocking``), or returns at once and leaves ``unsent`` bytes in the "kernel"."""

    def __init__(self, rate, blocking=True, unsent=0):
        super().__init__()
        self.rate = rate
        self.blocking = blocking
        self.held = unsent
        self.paced_calls = []
        self.batches = []

    def send_message(self, parts):
        size = sum(len(p) for p in parts)
        self.batches.append(size)
        if self.blocking:
            gevent.sleep(size / self.rate)

    def unsent(self):
        return self.held

    def set_paced(self, paced):
        self.paced_calls.append(paced)

    def wait_writable(self):
        pass


def _writer(ws):
    writer = FrameWriter(ws, ByteBudget(limit=64 << 20), backlog_limit=1 << 30,
                         on_overflow=lambda: None, on_failure=lambda exc: None)
    return writer, gevent.spawn(writer.run)


def _download(writer, seconds, chunk=16384, backlog=64):
    """A bulk stream that keeps ``backlog`` chunks queued for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        while writer.sched.queued(1) < backlog * chunk:
            writer.queue(1, frames.DATA, bytes(chunk))
        gevent.sleep(0.005)


def test_a_slow_link_makes_the_writer_pace_with_small_batches():
    ws = LinkWs(rate=2.5e6)                       # 20 Mbit/s: sends block
    writer, runner = _writer(ws)
    _download(writer, 0.4)
    assert writer.paced and ws.paced_calls == [True]
    assert writer.batch_now < 64 * 1024           # ~2 ms of the link, not 256 KiB
    assert max(ws.batches[-5:]) <= writer.batch_now + 1024
    writer.close()
    runner.kill()


def test_a_window_limited_stream_on_a_slow_link_paces_too():
    # Sends return at once (the stream's window, not the socket, stops the writer),
    # but what was sent sits unsent in the kernel: the link is slow all the same.
    ws = LinkWs(rate=2.5e6, blocking=False, unsent=200_000)
    writer, runner = _writer(ws)
    for _ in range(4):
        writer.queue(1, frames.DATA, bytes(256 * 1024))
        gevent.sleep(0.1)
    assert writer.paced
    writer.close()
    runner.kill()


def test_a_fast_link_never_paces_and_sends_full_batches():
    ws = LinkWs(rate=2e9)                         # loopback-like
    writer, runner = _writer(ws)
    _download(writer, 0.3, backlog=128)
    assert not writer.paced and ws.paced_calls == []
    assert max(ws.batches) >= 200 * 1024
    writer.close()
    runner.kill()


def test_a_paced_writer_goes_fast_again_when_the_link_does():
    ws = LinkWs(rate=2.5e6)
    writer, runner = _writer(ws)
    _download(writer, 0.3)
    assert writer.paced
    ws.rate = 2e9
    _download(writer, 0.3, backlog=128)
    assert not writer.paced and ws.paced_calls == [True, False]
    writer.close()
    runner.kill()


def test_an_idle_tunnel_on_a_slow_link_stays_fast():
    ws = LinkWs(rate=2.5e6)
    writer, runner = _writer(ws)
    for _ in range(30):                           # an echo every 10 ms: the sender sets the pace
        writer.queue(1, frames.DATA, b"e" * 64)
        gevent.sleep(0.01)
    assert not writer.paced
    writer.close()
    runner.kill()
