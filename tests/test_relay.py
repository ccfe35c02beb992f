"""SocketRelay on real sockets, under a real Session whose WebSocket only records.

What reaches the socket, what becomes frames, when credit goes back, how a
relay pauses for the tunnel's budget and resumes, how it ends (FIN after the
queued bytes, RST on a reset), and the memory a stalled socket may keep: a
slice of a received message must not pin the whole message buffer
(issue 10, item 9: 1 MiB of held payload once pinned 10 MiB).
"""

import gc
import socket
import tracemalloc

import gevent
import pytest

from afb.buffers import POOL_BUFFER
from afb.codec import frames
from afb.transport.relay import SocketRelay
from afb.transport.session import Session
from tests.support import RecordingWs, wait_until

KiB = 1024


def _session(**kw):
    ws = RecordingWs()
    session = Session(ws, client=False, ping_interval=0, **kw)
    session.start()
    gevent.sleep(0)
    return session, ws


def _tcp_pair():
    """(ours, theirs): a connected TCP pair on loopback (RST and FIN behave as on a network)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    ours = socket.create_connection(listener.getsockname())
    theirs, _ = listener.accept()
    listener.close()
    ours.setblocking(False)
    return ours, theirs


def _relay(session, stream_id=1, pair=None):
    ours, theirs = pair or _tcp_pair()
    stream = session.new_stream(stream_id, "127.0.0.1", 80)
    relay = SocketRelay(ours, stream)
    relay.start()
    return stream, relay, theirs


def _data(ws, stream_id):
    return b"".join(p for t, sid, p in ws.frames() if t == frames.DATA and sid == stream_id)


def test_bytes_from_the_socket_become_data_frames_within_the_credit():
    session, ws = _session()
    stream, _relay_, theirs = _relay(session)
    theirs.sendall(b"hello")
    assert wait_until(lambda: _data(ws, 1) == b"hello", 2)
    assert stream.bytes_out == 5
    session.close()


def test_peer_data_reaches_the_socket_and_credit_returns_for_what_it_took():
    session, ws = _session(window=64 * KiB)
    stream, _relay_, theirs = _relay(session)
    stream.on_data(b"x" * (40 * KiB))              # over half the window: one WINDOW
    got = b""
    theirs.settimeout(2)
    while len(got) < 40 * KiB:
        got += theirs.recv(65536)
    assert got == b"x" * (40 * KiB)
    assert wait_until(lambda: _credit_returned(ws) == 40 * KiB, 2)
    session.close()


def _credit_returned(ws):
    return sum(frames.parse_window(p) for t, _sid, p in ws.frames() if t == frames.WINDOW)


def test_eof_from_the_socket_is_a_fin_and_the_peers_fin_a_shutdown_after_the_data():
    session, ws = _session()
    stream, relay, theirs = _relay(session)
    theirs.shutdown(socket.SHUT_WR)
    assert wait_until(lambda: any(t == frames.FIN for t, _s, _p in ws.frames()), 2)
    stream.on_data(b"last bytes")
    stream.on_fin()
    theirs.settimeout(2)
    assert theirs.recv(100) == b"last bytes"
    assert theirs.recv(100) == b""                  # our write side shut after the data
    assert wait_until(lambda: relay.closed, 2)
    assert stream.id not in session.streams
    session.close()


def test_a_reset_closes_the_socket_with_an_rst():
    session, _ws = _session()
    stream, relay, theirs = _relay(session)
    stream.reset(1, "gave up")
    assert relay.closed
    theirs.settimeout(2)
    with pytest.raises(ConnectionResetError):
        theirs.recv(100)
    session.close()


def test_reading_pauses_while_the_tunnels_budget_is_exhausted_and_resumes_after():
    session, ws = _session(buffer_limit=256 * KiB)
    session.writer.sched.budget.charge(256 * KiB)         # as if the peer had not read yet
    stream, relay, theirs = _relay(session)
    theirs.sendall(b"waiting")
    gevent.sleep(0.1)                                     # time to read, if it (wrongly) did
    assert _data(ws, 1) == b"" and not relay._reading and session.down.waiting == 1
    session.writer.sched.budget.release(256 * KiB)        # the writer drained it
    assert wait_until(lambda: _data(ws, 1) == b"waiting", 2)
    session.close()


def test_a_stalled_slice_does_not_pin_its_whole_message():
    """200 streams whose sockets take almost nothing, each handed a 32 KiB slice of
    a 320 KiB received message: the memory kept is about what the slices hold
    (it was the messages: 62 MiB for 5 MiB of payload)."""
    session, _ws = _session(buffer_limit=64 << 20)
    relays, far_ends = [], []
    for number in range(200):
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        ours.setblocking(False)
        stream, relay, theirs = _relay(session, 2 * number + 1, (ours, theirs))
        relays.append((stream, relay))
        far_ends.append(theirs)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for stream, _ in relays:
            message = bytearray(POOL_BUFFER)
            stream.on_data(memoryview(message)[1000:1000 + 32 * KiB])
            del message
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    held = sum(relay.out_bytes for _stream, relay in relays)
    assert held > 200 * 16 * KiB                    # the sockets really took little
    assert session.up.used == held
    assert kept < 2 * held + (1 << 20), "%d KiB kept for %d KiB held" % (kept // KiB,
                                                                         held // KiB)
    for sock in far_ends:
        sock.close()
    session.close()
