"""The UDP association's parts under a real Session whose WebSocket only records.

The session hook (DATAGRAM -> the stream's sink), the tunnel budget and size
bounds of :func:`~afb.transport.udp_common.send_to_tunnel`, and the server's
:class:`~afb.transport.udp_association.UdpAssociation` with loopback peers:
what comes back, from whom, and what the ACL and the queue bound refuse.
"""

import logging
import socket

import gevent
import pytest

from afb.codec import frames
from afb.monitor.counters import UDP
from afb.policy.acl import DestinationAcl
from afb.transport.resolver import Resolver
from afb.transport.session import Session
from afb.transport.udp_association import UdpAssociation
from afb.transport.udp_common import UdpSettings, send_to_tunnel
from tests.support import RecordingWs, wait_until
from tests.udp_support import UdpEcho


@pytest.fixture
def session():
    ws = RecordingWs()
    session = Session(ws, client=False, ping_interval=0, buffer_limit=256 * 1024)
    session.start()
    gevent.sleep(0)
    yield session
    session.close()


@pytest.fixture
def echo_udp():
    server = UdpEcho()
    yield server
    server.stop()


def _association(session, allow_private=True, max_queue=64):
    stream = session.new_stream(1, "0.0.0.0", 0)
    association = UdpAssociation(session, stream, Resolver(), lambda: DestinationAcl(
        allow_private=allow_private), UdpSettings(max_queue=max_queue))
    association.start()
    return association


def _datagrams(session):
    return [(sid, frames.parse_datagram(p)) for t, sid, p in session.ws.frames()
            if t == frames.DATAGRAM]


def test_datagram_for_no_association_is_counted(session):
    before = UDP["dropped_no_association"]
    session.reader.dispatch(frames.DATAGRAM, 0, 99, frames.datagram_payload("1.2.3.4", 5, b"x"))
    assert UDP["dropped_no_association"] == before + 1


def test_the_budget_bounds_datagrams_towards_the_peer(session):
    stream = session.new_stream(1, "0.0.0.0", 0)
    before = UDP["dropped_queue_full"], UDP["dropped_too_big"]
    session.down.charge(session.down.limit)          # the tunnel's budget spent
    assert not send_to_tunnel(stream, "127.0.0.1", 53, b"q", "datagrams_down")
    session.down.release(session.down.limit)
    assert not send_to_tunnel(stream, "127.0.0.1", 53, b"x" * (session.writer.batch_limit + 1),
                              "datagrams_down")
    assert (UDP["dropped_queue_full"], UDP["dropped_too_big"]) == (before[0] + 1, before[1] + 1)
    assert send_to_tunnel(stream, "127.0.0.1", 53, b"q", "datagrams_down")
    stream.close_write()
    assert not send_to_tunnel(stream, "127.0.0.1", 53, b"q", "datagrams_down")


def test_server_association_echo_and_source_address(session, echo_udp):
    association = _association(session)
    session.reader.dispatch(frames.DATAGRAM, 0, 1,
                            frames.datagram_payload("127.0.0.1", echo_udp.port, b"hello"))
    assert wait_until(lambda: _datagrams(session), 5)
    [(sid, (host, port, data))] = _datagrams(session)
    assert (sid, host, port, bytes(data)) == (1, "127.0.0.1", echo_udp.port, b"hello")
    assert association.stream.bytes_in == 5 and association.stream.bytes_out == 5
    association.close("test")
    assert association.stream.local_fin


def test_only_destinations_it_sent_to_may_answer(session, echo_udp):
    association = _association(session)
    session.reader.dispatch(frames.DATAGRAM, 0, 1,
                            frames.datagram_payload("127.0.0.1", echo_udp.port, b"a"))
    assert wait_until(lambda: _datagrams(session), 5)
    sock = association.sockets[socket.AF_INET].sock
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    before = UDP["dropped_source"]
    stranger.sendto(b"injected", ("127.0.0.1", sock.getsockname()[1]))
    assert wait_until(lambda: UDP["dropped_source"] == before + 1, 5)
    assert len(_datagrams(session)) == 1
    stranger.close()


def test_acl_refusal_is_counted_and_nothing_is_sent(session, echo_udp, caplog):
    session.label = "tunnel acl-test"        # its own key in the rate-limited log
    association = _association(session, allow_private=False)
    before = UDP["dropped_acl"]
    with caplog.at_level(logging.INFO, logger="afb.transport.udp_association"):
        for host in ("127.0.0.1", "localhost", "::1"):
            session.reader.dispatch(frames.DATAGRAM, 0, 1,
                                    frames.datagram_payload(host, echo_udp.port, b"a"))
        assert wait_until(lambda: UDP["dropped_acl"] == before + 3, 5)
    assert echo_udp.count == 0 and not association.sockets
    assert any("refused" in r.getMessage() for r in caplog.records)


def test_names_waiting_for_dns_are_bounded(session):
    association = _association(session, max_queue=4)
    slow = gevent.event.Event()
    association.resolver = type("Slow", (), {"resolve": lambda self, h, p: slow.wait(5) and []})()
    before = UDP["dropped_queue_full"]
    for index in range(10):
        session.reader.dispatch(frames.DATAGRAM, 0, 1,
                                frames.datagram_payload("name%d.test" % (index % 2), 53, b"q"))
    assert association.pending_count == 4
    assert UDP["dropped_queue_full"] == before + 6
    association.close("test")
    slow.set()


def test_malformed_datagram_is_dropped(session):
    _association(session)
    before = UDP["dropped_malformed"]
    session.reader.dispatch(frames.DATAGRAM, 0, 1, b"\x09garbage")
    session.reader.dispatch(frames.DATAGRAM, 0, 1, b"\x01\x7f")
    assert UDP["dropped_malformed"] == before + 2


def test_config_check_catches_bad_udp_values(tmp_path):
    from afb.config import check_config, load_config

    path = tmp_path / "client.conf"
    path.write_text("[client]\nserver = wss://127.0.0.1:8443/t\ntoken = a.b.c\n"
                    "[udp]\nenabled = perhaps\nidle_timeout = -1\nmax_queue = 0\n")
    path.chmod(0o600)
    errors = check_config(str(path), "client")
    assert any("[udp] enabled" in e for e in errors), errors
    assert any("[udp] idle_timeout" in e and "too small" in e for e in errors), errors
    assert any("[udp] max_queue" in e and "too small" in e for e in errors), errors
    path.write_text("[client]\nserver = wss://127.0.0.1:8443/t\ntoken = a.b.c\n")
    assert load_config(str(path), "client")["udp"] == {
        "enabled": True, "idle_timeout": 120.0, "max_queue": 64}
