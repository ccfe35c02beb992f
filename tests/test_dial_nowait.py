"""Dialer.dial_nowait: connects to IP literals from the event loop, no greenlet."""

import socket

import pytest
from gevent.event import AsyncResult

from afb.errors import ConnectionRefused, NotAllowed, TimedOut
from afb.policy.acl import DestinationAcl
from afb.transport.dialer import Dialer
from afb.transport.resolver import Resolver


def _dialer(timeout=5.0, **acl):
    return Dialer(Resolver(), DestinationAcl(**acl), connect_timeout=timeout)


def _outcome(dialer, host, port):
    result = AsyncResult()
    started = dialer.dial_nowait(host, port, lambda sock, error: result.set((sock, error)))
    return started, result


def test_connects_to_an_allowed_address_and_reports_from_the_loop():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    started, result = _outcome(_dialer(allow_private=True), "127.0.0.1", port)
    assert started
    sock, error = result.get(timeout=5)
    assert error is None
    peer, _ = listener.accept()
    sock.sendall(b"hi")
    assert peer.recv(2) == b"hi"
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    for s in (sock, peer, listener):
        s.close()


def test_refused_port_maps_to_socks_0x05():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    started, result = _outcome(_dialer(allow_private=True), "127.0.0.1", port)
    sock, error = result.get(timeout=5)
    assert started and sock is None
    assert isinstance(error, ConnectionRefused) and error.reply == 0x05


def test_acl_refusal_is_raised_at_once_without_a_connect():
    dialer = _dialer()
    with pytest.raises(NotAllowed):
        dialer.dial_nowait("127.0.0.1", 22, lambda *a: None)
    assert dialer.dial_stats["attempts"] == 0


def test_names_are_left_to_the_blocking_dial():
    dialer = _dialer(allow_private=True)
    assert dialer.dial_nowait("localhost", 80, lambda *a: None) is False
    assert dialer.dial_stats["dials"] == 0


def test_a_connect_that_never_completes_times_out():
    # A listener whose accept queue is full drops further SYNs (Linux), so the
    # connect stays in progress until our timer fires.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    started, result = _outcome(_dialer(timeout=0.3, allow_private=True), "127.0.0.1", port)
    sock, error = result.get(timeout=5)
    for s in fillers + [listener]:
        s.close()
    if error is None:
        sock.close()
        pytest.skip("this kernel completed the connect despite the full backlog")
    assert isinstance(error, TimedOut) and error.reply == 0x06
