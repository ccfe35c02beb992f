"""The event-loop accept path of the local proxy: Acceptor + ProxyHandshake."""

import errno
import logging
import socket
import struct
import time

import gevent
from gevent.event import AsyncResult

from afb.apps.socks_handshake import ProxyHandshake
from afb.transport.acceptor import PAUSE_AFTER_ERROR, Acceptor
from afb.transport.sockets import PlainSocket
from tests.support import recv_all, wait_until


def _listening(on_accept):
    acceptor = Acceptor(("127.0.0.1", 0), on_accept, backlog=64)
    acceptor.start()
    return acceptor


def test_acceptor_hands_over_plain_non_blocking_sockets_and_survives_a_bad_handler(caplog):
    got = []

    def on_accept(sock, address):
        got.append((sock, address))
        if len(got) == 2:
            raise RuntimeError("handler bug")

    acceptor = _listening(on_accept)
    clients = [socket.create_connection(acceptor.address) for _ in range(5)]
    assert wait_until(lambda: len(got) == 5, 5), got
    for sock, address in got:
        assert type(sock) is PlainSocket and sock.getblocking() is False
        assert address[0] == "127.0.0.1"
    assert "handler bug" in caplog.text
    assert got[1][0].fileno() == -1            # the failed handler's socket was closed
    for sock, _ in got:
        sock.close()
    for client in clients:
        client.close()
    acceptor.close()
    acceptor.close()                            # idempotent


def _handshake(on_socks=None, on_http=None, timeout=5.0, authenticate=None):
    """An Acceptor whose connections run a ProxyHandshake."""
    def on_accept(sock, address):
        ProxyHandshake(sock, "%s:%d" % address, authenticate=authenticate, timeout=timeout,
                       on_socks=on_socks or (lambda *a: None),
                       on_http=on_http or (lambda *a: None)).start()
    return _listening(on_accept)


def test_socks5_request_trickled_one_byte_at_a_time():
    result = AsyncResult()
    acceptor = _handshake(on_socks=lambda sock, peer, req, left: result.set((sock, req, left)))
    client = socket.create_connection(acceptor.address)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wire = b"\x05\x01\x00" + b"\x05\x01\x00\x03\x0bexample.org" + struct.pack(">H", 443) + b"GET"
    answer = b""
    for i in range(len(wire)):
        client.send(wire[i:i + 1])
        gevent.sleep(0.002)                         # the trickle under test: one read per byte
        if i == 2:
            answer = client.recv(2)
    assert answer == b"\x05\x00"
    sock, request, leftover = result.get(timeout=5)
    assert (request.host, request.port) == ("example.org", 443)
    assert leftover in (b"", b"G", b"GE", b"GET")   # bytes after the request, if read with it
    sock.close()
    client.close()
    acceptor.close()


def test_http_is_handed_over_with_the_bytes_read(caplog):
    result = AsyncResult()
    acceptor = _handshake(on_http=lambda sock, peer, first: result.set((sock, first)))
    client = socket.create_connection(acceptor.address)
    client.sendall(b"CONNECT example.org:443 HTTP/1.1\r\n\r\n")
    sock, first = result.get(timeout=5)
    assert first.startswith(b"CONNECT ")
    sock.close()
    client.close()
    acceptor.close()


def test_refusals_close_the_socket_with_one_log_line(caplog):
    caplog.set_level(logging.INFO, logger="afb.apps.socks_handshake")
    acceptor = _handshake(timeout=0.3)
    cases = [
        (b"\x16\x03\x01", b""),                          # TLS to a proxy port
        (b"\x05\x01\x02", b"\x05\xff"),                  # only user/password offered
        (b"", b""),                                      # silence: the handshake timeout
    ]
    for payload, expected in cases:
        caplog.clear()
        client = socket.create_connection(acceptor.address)
        client.settimeout(5)
        if payload:
            client.sendall(payload)
        assert recv_all(client) == expected
        lines = wait_until(lambda: [r.getMessage() for r in caplog.records
                                    if r.name == "afb.apps.socks_handshake"], 5)
        assert len(lines) == 1, lines
        client.close()
    assert "no complete proxy request within 0.3 s" in lines[0]
    acceptor.close()


class _OutOfDescriptors:
    """A listening socket whose first accept fails with EMFILE."""

    def __init__(self, sock):
        self._sock = sock
        self.failed = 0
        self.failed_at = None

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def _accept(self):
        if not self.failed:
            self.failed += 1
            self.failed_at = time.monotonic()
            raise OSError(errno.EMFILE, "Too many open files")
        return self._sock._accept()


def test_running_out_of_descriptors_pauses_accepting_then_resumes(caplog):
    got = []
    acceptor = _listening(lambda sock, address: got.append((sock, time.monotonic())))
    acceptor.sock = failing = _OutOfDescriptors(acceptor.sock)
    client = socket.create_connection(acceptor.address)
    assert wait_until(lambda: "pausing" in caplog.text, 5), caplog.text
    assert got == [] and "accept failed" in caplog.text
    assert wait_until(lambda: got, PAUSE_AFTER_ERROR + 5)
    assert len(got) == 1
    # the waiting connection is taken after the pause (less the loop's cached clock), not before
    assert got[0][1] - failing.failed_at >= PAUSE_AFTER_ERROR * 0.9
    got[0][0].close()
    client.close()
    acceptor.close()
