"""Resumption inside a session pair over socketpairs (issue 15, part 2): what a cut loses
on the wire -- an OPEN, DATA queued or in flight both ways, a FIN -- is sent again on the
new link, and the bytes arrive exactly once, in order."""

import hashlib
import os
import socket

import gevent
import pytest

from afb.codec import frames
from afb.codec import resume as resume_wire
from afb.transport.relay import SocketRelay
from afb.transport.session import Session
from afb.transport.wsconn import WsConnection
from tests.support import recv_all, recv_exact, wait_until

BINDING = b"binding of the first link"


class Pair:
    """A client and a server session, resumable, and the sockets of their apps."""

    def __init__(self, grace=5.0):
        self.destinations = []          # the server's far ends (what the "internet" sees)
        self.client = self.server = None
        self._link()
        self.client = Session(self.ws[0], client=True, ping_interval=0, resume_grace=grace)
        self.server = Session(self.ws[1], client=False, ping_interval=0, resume_grace=grace,
                              on_open=self._on_open)
        shake = gevent.spawn(self.server.handshake, 5, None, BINDING)
        self.client.handshake(5, binding=BINDING)
        shake.get(5)
        for session in (self.client, self.server):
            session.start()
        self.runs = [gevent.spawn(self.client.run), gevent.spawn(self.server.run)]
        assert self.client.resume is not None and self.server.resume is not None

    def _link(self):
        sock_a, sock_b = socket.socketpair()
        self.socks = (sock_a, sock_b)
        self.ws = (WsConnection(sock_a, client=True), WsConnection(sock_b, client=False))

    def _on_open(self, session, stream, _command):
        far, near = socket.socketpair()
        self.destinations.append(far)
        SocketRelay(near, stream).start()
        session.accept(stream)

    def open(self, early=b""):
        """A stream from a client app (its first bytes ``early`` in OPEN): -> the app's
        socket."""
        app, near = socket.socketpair()
        stream = self.client.open_stream(frames.CMD_CONNECT, "example.net", 80, early=early,
                                         wait=False)
        SocketRelay(near, stream).start()
        return app

    def cut(self):
        """The link dies (both sockets reset, no close frame); both sides hold."""
        for ws in self.ws:
            ws.abort()
        assert wait_until(lambda: self.client.detached and self.server.detached, 5)

    def resume(self):
        self._link()
        assert self.server.resume.attach(self.ws[1]) is not None
        assert self.client.resume.attach(self.ws[0]) is not None
        assert wait_until(lambda: not self.client.holding and not self.server.holding, 5)

    def close(self):
        self.client.close()
        self.server.close()
        gevent.joinall(self.runs, timeout=5)


@pytest.fixture
def pair():
    made = Pair()
    yield made
    made.close()


def test_an_open_lost_with_the_link_is_sent_again(pair):
    pair.ws[0].abort()                      # the OPEN below never leaves
    app = pair.open()
    app.sendall(b"hello")
    assert wait_until(lambda: pair.client.detached and pair.server.detached, 5)
    assert not pair.destinations
    pair.resume()
    assert wait_until(lambda: pair.destinations, 5)
    far = pair.destinations[0]
    assert recv_exact(far, 5) == b"hello"
    far.sendall(b"world")
    assert recv_exact(app, 5) == b"world"


@pytest.mark.parametrize("lost", [True, False])
def test_early_data_counts_in_the_offsets_whether_its_open_was_lost_or_not(pair, lost):
    if lost:
        pair.ws[0].abort()
    app = pair.open(early=b"early:")
    app.sendall(b"later")
    if not lost:
        assert wait_until(lambda: pair.destinations, 5)
        assert recv_exact(pair.destinations[0], 11) == b"early:later"
        pair.cut()
        app.sendall(b"+more")
    assert wait_until(lambda: pair.client.detached and pair.server.detached, 5)
    pair.resume()
    assert wait_until(lambda: pair.destinations, 5)
    far = pair.destinations[0]
    assert recv_exact(far, 11 if lost else 5) == (b"early:later" if lost else b"+more")
    far.sendall(b"ok")
    assert recv_exact(app, 2) == b"ok"


def test_data_in_flight_both_ways_arrives_once_and_in_order_after_a_cut(pair):
    app = pair.open()
    app.sendall(b"x")
    assert wait_until(lambda: pair.destinations, 5)
    far = pair.destinations[0]
    assert recv_exact(far, 1) == b"x"
    up, down = os.urandom(3 << 20), os.urandom(3 << 20)
    senders = [gevent.spawn(app.sendall, up), gevent.spawn(far.sendall, down)]
    got_up, got_down = bytearray(), bytearray()

    def read(sock, into, size):
        while len(into) < size:
            data = sock.recv(65536)
            assert data
            into += data

    readers = [gevent.spawn(read, far, got_up, len(up)), gevent.spawn(read, app, got_down,
                                                                        len(down))]
    for _ in range(3):                      # three cuts while both ways move
        assert wait_until(lambda: len(got_up) + len(got_down) > 0, 5)
        gevent.sleep(0.02)
        pair.cut()
        gevent.sleep(0.05)
        pair.resume()
    gevent.joinall(senders + readers, timeout=20, raise_error=True)
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
    assert pair.client.resume.resumes == 3


def test_a_fin_lost_with_the_link_is_sent_again(pair):
    app = pair.open()
    app.sendall(b"request")
    assert wait_until(lambda: pair.destinations, 5)
    far = pair.destinations[0]
    assert recv_exact(far, 7) == b"request"
    pair.ws[1].abort()                      # the server's answer and FIN never leave
    far.sendall(b"answer")
    far.shutdown(socket.SHUT_WR)
    assert wait_until(lambda: pair.client.detached and pair.server.detached, 5)
    pair.resume()
    assert recv_all(app) == b"answer"       # then EOF: the FIN came through
    app.shutdown(socket.SHUT_WR)
    assert recv_all(far) == b""
    assert wait_until(lambda: not pair.client.streams and not pair.server.streams, 5)
    assert wait_until(lambda: not pair.client.resume.lingering
                      and not pair.server.resume.lingering, 5)


def test_the_grace_passing_resets_the_held_streams(pair):
    pair.client.resume.grace = pair.server.resume.grace = 0.3
    app = pair.open()
    app.sendall(b"x")
    assert wait_until(lambda: pair.destinations, 5)
    pair.cut()
    assert wait_until(lambda: pair.client.closed and pair.server.closed, 5)
    app.settimeout(5)
    try:
        assert app.recv(10) == b""          # closed (a socketpair has no RST to give)
    except ConnectionResetError:
        pass
    assert "not resumed within" in pair.client.close_reason


def test_a_resume_frame_outside_the_start_of_a_new_link_closes_the_tunnel(pair):
    """A peer cannot rewind a live tunnel's offsets or credit with a stray RESUME."""
    pair.client.queue_control(frames.frame(frames.RESUME, 0,
                                           resume_wire.state_payloads(0, [], 4096)[0]))
    assert wait_until(lambda: pair.server.closed and pair.client.closed, 5)
    assert "RESUME outside" in pair.server.close_reason
