"""Tunnel resumption (issue 15, part 2): the codec on bytes, the unacked buffer, and a
server + client in this process: what a resume request must prove, what an old peer
gets, how much unacknowledged data a stream keeps."""

import hashlib
import logging
import os

import gevent
import pytest
from hypothesis import given
from hypothesis import strategies as st

from afb import PROTOCOL_VERSION
from afb.codec import frames
from afb.codec import resume as wire
from afb.errors import ProtocolError
from afb.mux.resend import Unacked
from afb.transport import tls, wsclient
from afb.transport.secure_channel import client_secure
from tests.support import HashTarget, InProcessTunnel, Setup, recv_exact, socks_connect, wait_until

# --- the codec ---------------------------------------------------------------------


def test_hello_extensions_round_trip():
    secret = os.urandom(32)
    ext = wire.parse_ext(wire.grant(30, secret, "wrong resume proof"))
    assert (ext.kind, ext.grace, ext.secret, ext.reason) == (wire.GRANT, 30.0, secret,
                                                            "wrong resume proof")
    nonce, proof = os.urandom(16), os.urandom(32)
    ext = wire.parse_ext(wire.request(7, nonce, proof))
    assert (ext.kind, ext.generation, ext.nonce, ext.proof) == (wire.REQUEST, 7, nonce, proof)
    assert wire.parse_ext(wire.offer()).kind == wire.OFFER
    assert wire.parse_ext(wire.resumed(1.5)).grace == 1.5
    assert wire.parse_ext(b"") is None                       # an old peer: no extension
    assert wire.parse_ext(b"RSM1\x63") is None               # a later kind: ignored


def test_an_old_peers_hello_parser_ignores_the_extension():
    payload = frames.hello_payload(PROTOCOL_VERSION, 65536, 1 << 20) + wire.offer()
    assert frames.parse_hello(payload, PROTOCOL_VERSION)[:3] == (PROTOCOL_VERSION, 65536,
                                                                1 << 20)


def test_resume_state_is_split_over_frames_and_read_back():
    entries = [(2 * i + 1, i * 1000, i * 1000 + 65536, i % 4) for i in range(1000)]
    payloads = wire.state_payloads(41, entries, 4096)
    assert len(payloads) > 1 and all(len(p) <= 4096 for p in payloads)
    back = []
    for payload in payloads:
        last_id, chunk = wire.parse_state(payload)
        assert last_id == 41
        back += chunk
    assert back == entries
    assert wire.parse_state(wire.state_payloads(0, [], 4096)[0]) == (0, [])


def test_the_proof_binds_key_session_generation_and_link():
    key = wire.resume_key(os.urandom(32), b"first link")
    sid, nonce = os.urandom(16), os.urandom(16)
    good = wire.HelloExt(wire.REQUEST, generation=3, nonce=nonce,
                         proof=wire.proof(key, sid, 3, nonce, b"new link"))
    assert wire.check_proof(key, sid, good, b"new link")
    assert not wire.check_proof(key, sid, good, b"another link")
    assert not wire.check_proof(key, os.urandom(16), good, b"new link")
    assert not wire.check_proof(wire.resume_key(os.urandom(32), b"first link"), sid, good,
                                b"new link")


@given(st.binary(max_size=120))
def test_bad_extensions_and_states_raise_protocol_errors_only(data):
    for parse in (lambda: wire.parse_ext(b"RSM1" + data), lambda: wire.parse_state(data),
                  lambda: wire.parse_ack(data)):
        try:
            parse()
        except ProtocolError:
            pass


# --- the unacked buffer --------------------------------------------------------------

def test_unacked_frees_what_is_acknowledged_and_gives_back_the_rest():
    sent = Unacked()
    for chunk in (b"a" * 10, b"b" * 10, b"c" * 10):
        sent.append(chunk)
    sent.ack(15)
    assert (sent.start, sent.held) == (15, 15)
    assert b"".join(bytes(c) for c in sent.since(18)) == b"b" * 2 + b"c" * 10
    sent.ack(12)                                   # an old ACK: nothing changes
    assert sent.start == 18
    with pytest.raises(ProtocolError):
        sent.ack(31)                               # never sent
    with pytest.raises(ProtocolError):
        sent.since(10)                             # freed already
    sent.ack(30)
    assert sent.held == 0 and not sent.done
    sent.fin_acked = True
    assert sent.done and sent.peak == 30


# --- a server and a client in this process -----------------------------------------------

@pytest.fixture
def resumable(tmp_path):
    setup = Setup(tmp_path, server_extra="[tunnel]\nresume_grace = 30\n",
                  client_extra="resume_grace = 30\n")
    with InProcessTunnel(setup) as running:
        yield running


def _server_session(tunnel):
    assert wait_until(lambda: len(tunnel.server.resumes.sessions) == 1, 10)
    return next(iter(tunnel.server.resumes.sessions.values()))


def _raw_ws(setup):
    """A WebSocket to the server, E2E up, for a hand-made tunnel peer."""
    token = setup.token
    ws = wsclient.connect(setup.url, headers={"Authorization": "Bearer " + token},
                          ssl_context=tls.client_context(pin=setup.pin), pin=setup.pin)
    return client_secure(ws, setup.e2e_public_key, hashlib.sha256(token.encode()).digest(),
                         None, 5)


def _ask_to_resume(setup, sid, generation, proof):
    """A new WebSocket whose HELLO asks to resume ``sid``; -> the server's HelloExt."""
    ws = _raw_ws(setup)
    try:
        ws.send_message([frames.frame(frames.HELLO, 0, frames.hello_payload(
            PROTOCOL_VERSION, 65536, 1 << 20, sid) + wire.request(generation, os.urandom(16),
                                                                  proof))])
        reply = ws.recv_message()
        return wire.parse_ext(frames.hello_trailer(frames.first_hello(reply)))
    finally:
        ws.close()


def test_a_resume_with_a_wrong_proof_is_refused_and_the_tunnel_is_untouched(resumable, echo):
    session = _server_session(resumable)
    sock = socks_connect(resumable.proxy, "127.0.0.1", echo.port)
    sock.sendall(b"before")
    assert recv_exact(sock, 6) == b"before"
    answer = _ask_to_resume(resumable.setup, session.session_id, 5, os.urandom(32))
    assert answer.kind == wire.GRANT and answer.reason == "wrong resume proof"
    answer = _ask_to_resume(resumable.setup, os.urandom(16), 1, os.urandom(32))
    assert answer.kind == wire.GRANT and "no such tunnel on this server" in answer.reason
    sock.sendall(b"after")                       # the real tunnel goes on
    assert recv_exact(sock, 5) == b"after"
    assert resumable.server.resumes.refused == 2 and not session.detached
    sock.close()


def test_a_client_without_resumption_gets_a_plain_tunnel(tmp_path, echo):
    setup = Setup(tmp_path, server_extra="[tunnel]\nresume_grace = 30\n",
                  client_extra="resume_grace = 0\n")
    with InProcessTunnel(setup) as tunnel:
        sock = socks_connect(tunnel.proxy, "127.0.0.1", echo.port)
        sock.sendall(b"plain")
        assert recv_exact(sock, 5) == b"plain"
        assert tunnel.client.tunnel.session.resume is None
        assert len(tunnel.server.resumes) == 0
        assert all(session.resume is None for session in tunnel.server.sessions)
        sock.close()


def test_unacknowledged_data_stays_within_the_window(resumable):
    """A download the app does not read, then one it reads fast: what the server keeps
    unacknowledged per stream never exceeds the client's window for it."""
    target = HashTarget(os.urandom(1 << 20))
    try:
        stuck = socks_connect(resumable.proxy, "127.0.0.1", target.port)
        stuck.sendall(target.HEAD.pack(os.urandom(16), 0, 64 << 20))
        session = _server_session(resumable)
        gevent.sleep(1.0)
        (stream,) = session.streams.values()
        client_stream = resumable.client.tunnel.session.streams[stream.id]
        assert stream.sent.held <= client_stream.window.size
        assert 0 < stream.sent.peak <= client_stream.window.size
        stuck.close()
        fast = socks_connect(resumable.proxy, "127.0.0.1", target.port)
        fast.sendall(target.HEAD.pack(os.urandom(16), 0, 32 << 20))
        assert wait_until(lambda: len(session.streams) == 1, 5)
        (stream,) = session.streams.values()
        got = 0
        while got < 32 << 20:
            data = fast.recv(1 << 20)
            assert data
            got += len(data)
        fast.close()
        window_max = resumable.client.tunnel.session.window_max
        assert stream.sent.peak <= window_max, (stream.sent.peak, window_max)
        logging.getLogger(__name__).warning(
            "unacknowledged data kept for a 32 MiB download: at most %d KiB (window max %d KiB)",
            stream.sent.peak >> 10, window_max >> 10)
        # What was kept is charged to the tunnel's budget, and all of it released.
        assert wait_until(lambda: not session.streams and not session.resume.lingering, 10)
        assert wait_until(lambda: session.down.used == 0, 5), session.down.used
    finally:
        target.close()


def test_a_peer_that_grants_credit_but_never_acknowledges_meets_the_tunnel_budget(resumable):
    """Kept data is charged to the tunnel's ``max_buffer`` (8 MiB): a hand-made client
    that reads and hands credit back (WINDOW) but never sends ACK stalls there."""
    target = HashTarget(os.urandom(1 << 20))
    ws = _raw_ws(resumable.setup)
    try:
        ws.send_message([frames.frame(frames.HELLO, 0, frames.hello_payload(
            PROTOCOL_VERSION, 1 << 20, 1 << 20) + wire.offer())])
        reply = ws.recv_message()
        assert wire.parse_ext(frames.hello_trailer(frames.first_hello(reply))).kind == wire.GRANT
        head = target.HEAD.pack(os.urandom(16), 0, 256 << 20)
        ws.send_message([frames.frame(frames.OPEN, 1, frames.open_payload(
            frames.CMD_CONNECT, "127.0.0.1", target.port, head))])
        received = 0
        while True:
            with gevent.Timeout(1.0, False):
                message = ws.recv_message()
                credit = 0
                for ftype, _flags, _sid, payload in frames.iter_frames(message):
                    if ftype == frames.DATA:
                        credit += len(payload)
                if credit:
                    received += credit
                    ws.send_message([frames.frame(frames.WINDOW, 1,
                                                  frames.window_payload(credit))])
                assert received < 64 << 20, "the server kept sending: its memory grows"
                continue
            break               # a second without data: the server stopped reading
        session = next(s for s in resumable.server.sessions if 1 in s.streams and
                       s.streams[1].port == target.port)
        limit = session.down.limit
        assert limit // 2 <= received <= limit + (1 << 20), received
        assert session.streams[1].sent.held <= limit + (1 << 20)
        assert session.down.used <= limit + (1 << 20)
    finally:
        ws.close()
        target.close()
