"""Stream: the frames a stream makes and what it does with the peer's, under a real
Session whose WebSocket only records (tests/support.RecordingWs)."""

import gevent
import pytest

from afb.codec import frames
from afb.errors import DestinationError, ProtocolError, StreamReset
from tests.support import RecordingWs, wait_until
from tests.test_relay import _session

KiB = 1024


class Sink:
    """A stand-in for the relay that records what the stream hands it."""

    def __init__(self):
        self.events = []
        self.out_bytes = 0

    def deliver(self, data):
        self.events.append(("data", bytes(data)))

    def remote_eof(self):
        self.events.append(("eof",))

    def abort(self, error):
        self.events.append(("abort", error.reply))

    def credit_available(self):
        self.events.append(("credit",))


def test_data_before_the_sink_waits_charged_to_the_budget_then_is_replayed_in_order():
    session, _ws = _session()
    stream = session.new_stream(1, "example.org", 443)
    stream.on_data(b"one ")
    stream.on_data(memoryview(bytearray(b"two "))[0:4])
    stream.on_fin()
    assert session.up.used == 8 and stream.buffered == 8
    sink = Sink()
    stream.attach(sink)
    assert sink.events == [("data", b"one "), ("data", b"two "), ("eof",)]
    assert session.up.used == 0
    session.close()


def test_a_reset_while_dialling_cancels_the_dial_and_frees_the_early_data():
    session, ws = _session()
    stream = session.new_stream(1, "example.org", 443)
    stream.on_data(b"x" * 100)
    cancelled = []
    stream.pending = lambda: cancelled.append(True)
    stream.on_reset(0x05, "connection refused")
    assert cancelled == [True] and session.up.used == 0
    assert stream.id not in session.streams
    stream.on_reset(0x05, "again")                  # once only
    assert cancelled == [True]
    session.close()


def test_the_peer_sending_beyond_its_credit_is_a_protocol_error():
    session, _ws = _session(window=16 * KiB)
    stream = session.new_stream(1, "example.org", 443)
    stream.on_data(b"x" * (16 * KiB))
    with pytest.raises(ProtocolError, match="flow control violation"):
        stream.on_data(b"y")
    session.close()


def test_send_within_credit_queues_data_and_wait_open_reports_the_servers_answer():
    ws = RecordingWs()
    from afb.transport.session import Session

    session = Session(ws, client=True, ping_interval=0)
    session.start()
    gevent.sleep(0)
    ok = session.open_stream(frames.CMD_CONNECT, "example.org", 443)
    ok.send(b"GET / HTTP/1.1\r\n\r\n")
    assert wait_until(lambda: len(ws.frames()) >= 2, 5), ws.frames()
    assert [(t, sid) for t, sid, _p in ws.frames()] == [(frames.OPEN, 1), (frames.DATA, 1)]
    ok.on_open_result(None)
    assert ok.wait_open(1) is True
    refused = session.open_stream(frames.CMD_CONNECT, "example.org", 444)
    refused.on_reset(0x05, "connection refused")
    with pytest.raises(DestinationError) as failure:
        refused.wait_open(1)
    assert failure.value.reply == 0x05
    with pytest.raises(AssertionError):           # more than the credit: a bug of the caller
        ok.send(b"z" * (ok.credit.available + 1))
    assert isinstance(refused.reset_error, StreamReset)
    session.close()
