"""socket_writes: many buffers to a socket, in order, with few system calls."""

import socket

import gevent
import gevent.socket

from afb.transport.socket_writes import (
    IOV_MAX,
    JOIN_LIMIT,
    SMALL_PAYLOAD,
    send_whole,
    sendall_coalesced,
    sendmsg_all,
)


def _pair():
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return gevent.socket.socket(fileno=a.detach()), gevent.socket.socket(fileno=b.detach())


def _drain(sock, total):
    got = bytearray()
    while len(got) < total:
        data = sock.recv(65536)
        if not data:
            break
        got += data
        gevent.sleep(0.001)          # a slow reader: the writer sees short writes
    return bytes(got)


def test_sendmsg_all_keeps_the_order_through_short_writes_and_past_iov_max():
    ours, theirs = _pair()
    buffers = [bytes([n % 251]) * (1 + n % 700) for n in range(3 * IOV_MAX)]
    expected = b"".join(buffers)
    reader = gevent.spawn(_drain, theirs, len(expected))
    sendmsg_all(ours, list(buffers))
    assert reader.get(timeout=10) == expected


def test_send_whole_finishes_what_one_send_did_not_take():
    ours, theirs = _pair()
    data = bytes(range(256)) * 4096           # 1 MiB: far more than the socket takes at once
    reader = gevent.spawn(_drain, theirs, len(data))
    send_whole(ours, data)
    assert reader.get(timeout=10) == data


class RecordingSocket:
    def __init__(self):
        self.calls = []

    def sendall(self, data):
        self.calls.append(bytes(data))


def test_sendall_coalesced_joins_small_pieces_and_sends_large_ones_as_they_are():
    sock = RecordingSocket()
    small = [b"h" * 10, b"p" * 100] * 10
    large = b"L" * SMALL_PAYLOAD
    sendall_coalesced(sock, small + [large] + small)
    assert b"".join(sock.calls) == b"".join(small + [large] + small)
    assert len(sock.calls) <= 3               # not one write per piece
    many = [b"s" * 1000] * 200                # 200 KB of small pieces
    sock.calls.clear()
    sendall_coalesced(sock, many)
    assert all(len(call) <= JOIN_LIMIT + 1000 for call in sock.calls)
    assert b"".join(sock.calls) == b"".join(many)
