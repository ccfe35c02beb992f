"""Latency plumbing: frames queued from the event loop leave in the same
iteration, an OPEN leaves before ``open_stream`` returns, accepted
connections are handled at once, and mask keys come from a pooled CSPRNG."""

import socket

import gevent
from gevent.hub import get_hub

from afb.apps.local_proxy import start_now
from afb.codec import frames
from afb.codec import websocket as wsc
from afb.policy.acl import DestinationAcl
from afb.transport.dialer import Dialer
from afb.transport.resolver import Resolver
from afb.transport.session import Session
from tests.support import RecordingWs, wait_until


def _types(message):
    return [ftype for ftype, _flags, _sid, _payload in frames.iter_frames(message)]


def _session():
    ws = RecordingWs()
    session = Session(ws, client=True, ping_interval=0)
    session.start()
    gevent.sleep(0)          # the writer parks
    return session, ws


def test_open_stream_sends_the_open_before_it_returns():
    session, ws = _session()
    stream = session.open_stream(frames.CMD_CONNECT, "example.org", 443, b"early")
    assert [_types(m) for m in ws.sent] == [[frames.OPEN]]
    assert stream.bytes_out == 5
    # And again, with the writer back in its place:
    session.open_stream(frames.CMD_CONNECT, "example.org", 80)
    assert len(ws.sent) == 2
    session.close()


def test_a_frame_queued_from_an_event_loop_callback_leaves_in_that_callback():
    session, ws = _session()
    stream = session.open_stream(frames.CMD_CONNECT, "example.org", 443)
    seen = []

    def callback():
        stream.send(b"x" * 64)
        seen.append(len(ws.sent))     # sent before the callback returned

    get_hub().loop.run_callback(callback)
    assert wait_until(lambda: seen, 5), "the callback did not run"
    assert seen == [2]
    assert _types(ws.sent[1]) == [frames.DATA]
    session.close()


def test_frames_queued_from_another_greenlet_still_leave():
    session, ws = _session()
    session.open_stream(frames.CMD_CONNECT, "example.org", 443)
    gevent.spawn(session.queue_control, frames.frame(frames.PING, 0, frames.ping_payload(1))).join()
    assert wait_until(lambda: _types(ws.sent[-1]) == [frames.PING], 5), ws.sent
    session.close()


def test_start_now_runs_the_handler_inside_the_event_loop_callback():
    order = []

    def callback():
        start_now(order.append, "handler")
        order.append("callback done")

    get_hub().loop.run_callback(callback)
    assert wait_until(lambda: "callback done" in order, 5), "the callback did not run"
    assert order == ["handler", "callback done"]
    # From a greenlet it is an ordinary spawn.
    greenlet = start_now(order.append, "later")
    assert order[-1] == "callback done"
    greenlet.join()
    assert order[-1] == "later"


def test_dial_to_a_listening_loopback_port_reports_once_and_connected():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    dialer = Dialer(Resolver(), DestinationAcl(allow_private=True), connect_timeout=5)
    outcomes = []
    for _ in range(20):
        dialer.dial_nowait("127.0.0.1", port, lambda sock, error: outcomes.append((sock, error)))
    assert wait_until(lambda: len(outcomes) >= 20, 5), outcomes
    assert len(outcomes) == 20
    for sock, error in outcomes:
        assert error is None
        assert sock.getpeername()[1] == port
        sock.close()
    listener.close()


def test_mask_keys_are_four_fresh_bytes_and_the_pool_refills():
    keys = [wsc.mask_key() for _ in range(3 * wsc._MASK_KEYS // 4)]
    assert all(len(key) == 4 for key in keys)
    assert len(set(keys)) > len(keys) * 0.99     # 32-bit random keys: ~no repeats


def _server_session(accept_at_once=True):
    ws = RecordingWs()
    opened = []

    def on_open(session, stream, command):
        opened.append(stream)
        if accept_at_once:
            session.accept(stream)

    session = Session(ws, client=False, ping_interval=0, on_open=on_open)
    session.start()
    gevent.sleep(0)
    return session, ws, opened


def _open_frame(stream_id, flags):
    return (frames.OPEN, flags, stream_id, frames.open_payload(frames.CMD_CONNECT, "10.0.0.1", 80))


def test_open_ok_leaves_at_once_for_a_client_that_waits():
    session, ws, _opened = _server_session()
    get_hub().loop.run_callback(session.reader.dispatch, *_open_frame(1, 0))
    assert wait_until(lambda: ws.sent, 5), "no OPEN_OK"
    assert [_types(m) for m in ws.sent] == [[frames.OPEN_OK]]
    session.close()


def test_open_ok_rides_with_the_first_data_when_the_client_does_not_wait():
    session, ws, opened = _server_session()
    get_hub().loop.run_callback(session.reader.dispatch, *_open_frame(1, frames.FLAG_NO_WAIT))
    assert wait_until(lambda: opened, 5), "the OPEN was not dispatched"
    assert ws.sent == []                        # no message of its own
    get_hub().loop.run_callback(opened[0].send, b"reply")
    assert wait_until(lambda: ws.sent, 5), "nothing sent"
    assert [_types(m) for m in ws.sent] == [[frames.OPEN_OK, frames.DATA]]
    # ... and a graceful stop still sends one that nothing else carried.
    get_hub().loop.run_callback(session.reader.dispatch, *_open_frame(3, frames.FLAG_NO_WAIT))
    assert wait_until(lambda: len(opened) == 2, 5), "the second OPEN was not dispatched"
    session.flush(1.0)
    assert _types(ws.sent[-1]) == [frames.OPEN_OK]
    session.close()


def test_fast_open_clients_mark_their_open_and_others_do_not():
    session, ws = _session()
    session.open_stream(frames.CMD_CONNECT, "example.org", 443, wait=False)
    session.open_stream(frames.CMD_CONNECT, "example.org", 443)
    flags = [next(frames.iter_frames(m))[1] for m in ws.sent]
    assert flags == [frames.FLAG_NO_WAIT, 0]
    session.close()
