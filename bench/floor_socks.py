#!/usr/bin/env python3
"""The least a SOCKS5 server can be in CPython: the floor for any one-hop Python proxy.

    python bench/floor_socks.py PORT

One ``select.epoll`` loop, plain non-blocking sockets, no gevent, no greenlets,
no threads. It does only what the ``echo`` test of bench/compare needs and
nothing a real server must do: no authentication, no ACL, no logging, no
timeouts, IPv4 CONNECT only (anything else is answered 0x08 and closed).
Writes that fall short are kept and finished on EPOLLOUT (the source is not
read meanwhile), so bulk tests through it are byte-exact too.

It is the ``py-floor`` peer of bench/compare (opt-in, a baseline, never
"best"): whatever afb does per new stream, a tunnel written in CPython
cannot be cheaper than this one hop. Listens on 127.0.0.1 only.
"""

import errno
import select
import socket
import struct
import sys

IN, OUT = select.EPOLLIN, select.EPOLLOUT
GREETING, REQUEST, CONNECTING, RELAY = range(4)
REPLY_OK = b"\x05\x00\x00\x01" + bytes(6)
REPLY_UNSUPPORTED = b"\x05\x08\x00\x01" + bytes(6)


class Conn:
    __slots__ = ("sock", "fd", "state", "peer", "pending")

    def __init__(self, sock, state, peer=None):
        self.sock, self.fd, self.state, self.peer = sock, sock.fileno(), state, peer
        self.pending = b""


class FloorSocks:
    def __init__(self, port):
        self.epoll = select.epoll()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.epoll.register(self.listener.fileno(), IN)
        self.conns = {}
        self.dead = set()   # fds closed while handling this poll's events

    def add(self, sock, state, peer=None, events=IN):
        conn = Conn(sock, state, peer)
        self.conns[conn.fd] = conn
        self.epoll.register(conn.fd, events)
        return conn

    def close(self, conn):
        if self.conns.pop(conn.fd, None) is None:
            return
        self.epoll.unregister(conn.fd)
        conn.sock.close()
        self.dead.add(conn.fd)
        if conn.peer is not None:
            self.close(conn.peer)

    def send(self, conn, data):
        """Send to ``conn``; a short write parks the rest and pauses its peer's reads."""
        try:
            sent = conn.sock.send(data) if not conn.pending else 0
        except BlockingIOError:
            sent = 0
        except OSError:          # EPIPE, ECONNRESET: the stream is over
            self.close(conn)
            return
        if sent < len(data):
            conn.pending += data[sent:]
            self.epoll.modify(conn.fd, IN | OUT)
            if conn.peer is not None:
                self.epoll.modify(conn.peer.fd, 0)

    def writable(self, conn):
        if conn.state == CONNECTING:
            if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                conn.peer.sock.send(b"\x05\x05\x00\x01" + bytes(6))
                self.close(conn)
                return
            conn.state = RELAY
            self.send(conn.peer, REPLY_OK)
        if conn.pending:
            data, conn.pending = conn.pending, b""
            sent = conn.sock.send(data)
            conn.pending = data[sent:]
        if not conn.pending:
            self.epoll.modify(conn.fd, IN)
            if conn.peer is not None and conn.peer.fd in self.conns:
                self.epoll.modify(conn.peer.fd, IN)

    def request(self, conn, data):
        if len(data) < 10 or data[:4] != b"\x05\x01\x00\x01":
            conn.sock.send(REPLY_UNSUPPORTED)
            self.close(conn)
            return
        upstream = socket.socket()
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = upstream.connect_ex((socket.inet_ntoa(data[4:8]),
                                    struct.unpack(">H", data[8:10])[0]))
        up = self.add(upstream, CONNECTING, peer=conn, events=OUT)
        conn.peer, conn.state = up, RELAY
        if code not in (0, errno.EINPROGRESS):
            conn.sock.send(b"\x05\x05\x00\x01" + bytes(6))
            self.close(conn)
        elif code == 0:
            self.writable(up)

    def readable(self, conn):
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close(conn)
        elif conn.state == RELAY:
            self.send(conn.peer, data)
        elif conn.state == GREETING:
            conn.sock.send(b"\x05\x00")
            conn.state = REQUEST
        elif conn.state == REQUEST:
            self.request(conn, data)

    def accept(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.add(sock, GREETING)

    def run(self):
        listener = self.listener.fileno()
        while True:
            self.dead.clear()
            for fd, events in self.epoll.poll():
                if fd in self.dead:
                    continue    # closed meanwhile; the number may be a new socket's
                if fd == listener:
                    self.accept()
                    continue
                conn = self.conns.get(fd)
                try:
                    if conn is not None and events & (OUT | select.EPOLLERR):
                        self.writable(conn)
                    conn = self.conns.get(fd)
                    if conn is not None and events & (IN | select.EPOLLHUP):
                        self.readable(conn)
                except OSError:          # e.g. EPIPE, ECONNRESET: this stream is over
                    if conn is not None:
                        self.close(conn)


if __name__ == "__main__":
    FloorSocks(int(sys.argv[1])).run()
