"""Flow control and fair scheduling, sans-IO."""

import pytest

from afb.codec import frames
from afb.errors import ProtocolError
from afb.mux.flow import ReceiveWindow, SendCredit
from afb.mux.scheduler import FairScheduler


def test_window_update_only_after_half_a_window_is_consumed():
    window = ReceiveWindow(1000)
    window.on_data(1000)
    assert window.on_consumed(400, now=0.0) == 0
    assert window.on_consumed(100, now=10.0) == 500
    assert window.outstanding == 500


def test_peer_overrunning_its_credit_is_a_protocol_error():
    window = ReceiveWindow(1000)
    window.on_data(900)
    with pytest.raises(ProtocolError, match="flow control"):
        window.on_data(101)


def test_window_grows_only_while_data_moves_fast_and_stops_at_maximum():
    window = ReceiveWindow(1000, maximum=4000, grow_interval=0.05)
    now = 0.0
    increments = []
    for _ in range(8):
        window.on_data(window.outstanding)
        now += 0.001
        increments.append(window.on_consumed(window.size, now))
    assert window.size == 4000
    assert increments[0] == 1000          # first update: no history, no growth
    slow = ReceiveWindow(1000, maximum=4000, grow_interval=0.05)
    for step in range(8):
        slow.on_data(500)
        slow.on_consumed(500, now=step * 1.0)
    assert slow.size == 1000              # a slow reader never earns a bigger window


def test_send_credit_take_and_grant():
    credit = SendCredit(100)
    assert credit.take(60) == 60
    assert credit.take(60) == 40
    assert credit.take(1) == 0
    credit.grant(10)
    assert credit.take(100) == 10
    credit.grant(frames.MAX_WINDOW - credit.available)     # up to the largest window
    with pytest.raises(ProtocolError):
        credit.grant(1)


def _decode(parts):
    message = b"".join(bytes(p) for p in parts)
    return [(t, s, bytes(p)) for t, _f, s, p in frames.iter_frames(message)]


def test_control_frames_jump_the_queue_and_stream_order_is_kept():
    sched = FairScheduler(quantum=100)
    sched.push(1, frames.OPEN, b"open")
    sched.push(1, frames.DATA, b"a" * 10)
    sched.push(1, frames.FIN)
    sched.push_control(frames.frame(frames.PING, 0, b"12345678"))
    parts, _size = sched.next_batch(10_000)
    assert [(t, s) for t, s, _p in _decode(parts)] == [
        (frames.PING, 0), (frames.OPEN, 1), (frames.DATA, 1), (frames.FIN, 1)]
    assert not sched and sched.queued_bytes == 0


def test_bulk_stream_cannot_starve_an_interactive_one():
    sched = FairScheduler(quantum=1000)
    sched.push(1, frames.DATA, b"B" * 1_000_000)
    sched.push(3, frames.DATA, b"i" * 10)
    parts, size = sched.next_batch(64 * 1024)
    decoded = _decode(parts)
    assert (frames.DATA, 3, b"i" * 10) in decoded
    assert decoded.index((frames.DATA, 3, b"i" * 10)) <= 1   # after at most one quantum of bulk
    assert size <= 64 * 1024 + frames.HEADER_SIZE


def test_alone_a_stream_fills_the_batch_and_splits_without_loss():
    sched = FairScheduler(quantum=1000)
    blob = bytes(range(256)) * 1000
    sched.push(5, frames.DATA, blob)
    got = b""
    while sched:
        parts, size = sched.next_batch(50_000)
        assert size <= 50_000 + frames.HEADER_SIZE
        got += b"".join(p for _t, _s, p in _decode(parts))
    assert got == blob and sched.queued_bytes == 0


def test_drop_forgets_a_reset_stream_only():
    sched = FairScheduler()
    sched.push(1, frames.DATA, b"x" * 100)
    sched.push(3, frames.DATA, b"y" * 50)
    assert sched.drop(1) == 100
    assert sched.queued(3) == 50 and sched.queued(1) == 0
    assert [s for _t, s, _p in _decode(sched.next_batch(1000)[0])] == [3]
