"""The session's writer: batches, flush, a peer that does not read, a write that fails.

A real Session over a WebSocket stand-in (tests/support.RecordingWs, or one
whose sends block like a peer that never reads)."""

import gevent

from afb.codec import frames
from afb.errors import CLOSE_POLICY_VIOLATION
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
