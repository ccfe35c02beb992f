#!/usr/bin/env python3
"""The least a two-process tunnel can be in CPython: the floor for afb's shape.

    python bench/floor_tunnel.py server PORT
    python bench/floor_tunnel.py client SOCKS_PORT SERVER_PORT

Like afb, a local SOCKS5 side (``client``) carries every stream over one
connection to a ``server`` that dials the destination; unlike afb it has
nothing else: plain TCP between the two (no TLS, no WebSocket, no E2E), a
9-byte frame header (type, stream id, length), no flow control, no
authentication, no ACL, no logging, IPv4 CONNECT only. The client answers the
SOCKS5 request at once and sends OPEN (afb's fast_open); the server buffers
early data until its connect completes. One ``select.epoll`` loop per
process, plain non-blocking sockets (no gevent).

It is the ``py-tunnel-floor`` peer of bench/compare (opt-in, a baseline):
what any two-process tunnel written in CPython costs per new stream before it
does a single thing a real one must. Without flow control a slow reader lets
the other side's buffers grow: it is meant for the ``echo``, ``page`` and
``close`` tests. Listens and connects on 127.0.0.1 only.
"""

import errno
import select
import socket
import struct
import sys

IN, OUT = select.EPOLLIN, select.EPOLLOUT
HEAD = struct.Struct(">BII")            # type, stream id, payload length
OPEN, DATA, CLOSE = 1, 2, 3
REPLY_OK = b"\x05\x00\x00\x01" + bytes(6)
REPLY_UNSUPPORTED = b"\x05\x08\x00\x01" + bytes(6)
GREETING, REQUEST, RELAY = range(3)


def _listener(port):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    listener.setblocking(False)
    return listener


def _nodelay(sock):
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Loop:
    """fd -> handler; a short write is kept and finished on EPOLLOUT."""

    def __init__(self):
        self.epoll = select.epoll()
        self.handlers = {}
        self.pending = {}
        self.dead = set()
        self.on_broken = {}      # fd -> what to call instead of a plain drop

    def broken(self, sock):
        """A socket failed (EPIPE, ECONNRESET): its owner ends the stream."""
        callback = self.on_broken.pop(sock.fileno(), None)
        if callback is not None:
            callback()
        else:
            self.drop(sock)

    def add(self, sock, handler, events=IN):
        self.handlers[sock.fileno()] = (sock, handler)
        self.epoll.register(sock.fileno(), events)

    def drop(self, sock):
        fd = sock.fileno()
        if self.handlers.pop(fd, None) is not None:
            self.epoll.unregister(fd)
            self.pending.pop(fd, None)
            self.on_broken.pop(fd, None)
            self.dead.add(fd)
            sock.close()

    def _try_send(self, sock, data):
        """Bytes sent (0 if the socket's buffer is full), or None if the socket broke."""
        try:
            return sock.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            self.broken(sock)
            return None

    def send(self, sock, data):
        fd = sock.fileno()
        if fd in self.pending:
            self.pending[fd] += data
            return
        sent = self._try_send(sock, data)
        if sent is not None and sent < len(data):
            self.pending[fd] = bytearray(data[sent:])
            self.epoll.modify(fd, IN | OUT)

    def _flush(self, fd, sock):
        data = self.pending.pop(fd)
        sent = self._try_send(sock, data)
        if sent is None:
            return
        if sent < len(data):
            self.pending[fd] = data[sent:]
        else:
            self.epoll.modify(fd, IN)

    def run(self):
        while True:
            self.dead.clear()
            for fd, events in self.epoll.poll():
                if fd in self.dead or fd not in self.handlers:
                    continue
                sock, handler = self.handlers[fd]
                try:
                    if events & OUT:
                        if fd in self.pending:
                            self._flush(fd, sock)
                        else:
                            handler(sock)           # a connect finished
                        if fd not in self.handlers:
                            continue
                    if events & (IN | select.EPOLLHUP | select.EPOLLERR):
                        handler(sock)
                except OSError:          # e.g. EPIPE, ECONNRESET on a stream's socket
                    self.broken(sock)


class FrameReader:
    """Frames from the tunnel connection -> ``on_frame(type, stream id, payload)``."""

    def __init__(self, on_frame):
        self.buf = bytearray()
        self.on_frame = on_frame

    def feed(self, data):
        self.buf += data
        pos = 0
        while len(self.buf) - pos >= HEAD.size:
            ftype, sid, size = HEAD.unpack_from(self.buf, pos)
            end = pos + HEAD.size + size
            if end > len(self.buf):
                break
            self.on_frame(ftype, sid, bytes(self.buf[pos + HEAD.size:end]))
            pos = end
        del self.buf[:pos]


def _recv(sock):
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


class TunnelServer:
    """Every connection to PORT is a tunnel (a port probe is one that ends at once)."""

    def __init__(self, port):
        self.loop = Loop()
        self.loop.add(_listener(port), self._accept)

    def _accept(self, listener):
        sock, _ = listener.accept()
        ServerTunnel(self.loop, _nodelay(sock))


class ServerTunnel:
    def __init__(self, loop, sock):
        self.loop, self.sock = loop, sock
        self.reader = FrameReader(self._frame)
        self.streams = {}        # stream id -> target socket
        self.early = {}          # stream id -> data waiting for the connect
        loop.add(sock, self._readable)

    def _readable(self, sock):
        data = _recv(sock)
        if data is None:
            return
        if not data:
            for target in self.streams.values():
                self.loop.drop(target)
            self.streams.clear()
            self.loop.drop(sock)
            return
        self.reader.feed(data)

    def _frame(self, ftype, sid, payload):
        if ftype == OPEN:
            target = _nodelay(socket.socket())
            code = target.connect_ex((socket.inet_ntoa(payload[:4]),
                                      struct.unpack(">H", payload[4:6])[0]))
            if code not in (0, errno.EINPROGRESS):
                target.close()
                self.loop.send(self.sock, HEAD.pack(CLOSE, sid, 0))
                return
            self.streams[sid] = target
            try:
                target.getpeername()             # on loopback the connect is often done
                connected = True
            except OSError:
                connected = False
                self.early[sid] = bytearray()
            self.loop.add(target, lambda s, sid=sid: self._target_event(sid, s),
                          IN if connected else IN | OUT)
            self.loop.on_broken[target.fileno()] = lambda sid=sid: self._end(sid)
        elif ftype == DATA:
            target = self.streams.get(sid)
            if target is None:
                return
            if sid in self.early:
                self.early[sid] += payload
            else:
                self.loop.send(target, payload)
        elif ftype == CLOSE:
            target = self.streams.pop(sid, None)
            self.early.pop(sid, None)
            if target is not None:
                self.loop.drop(target)

    def _end(self, sid):
        """The target's side of stream ``sid`` is over: drop it, tell the client."""
        target = self.streams.pop(sid, None)
        self.early.pop(sid, None)
        if target is not None:
            self.loop.drop(target)
            self.loop.send(self.sock, HEAD.pack(CLOSE, sid, 0))

    def _target_event(self, sid, target):
        if sid in self.early:                # the connect finished (or failed)
            early = self.early.pop(sid)
            if target.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._end(sid)
                return
            self.loop.epoll.modify(target.fileno(), IN)
            if early:
                self.loop.send(target, early)
            return
        data = _recv(target)
        if data is None:
            return
        if data:
            self.loop.send(self.sock, HEAD.pack(DATA, sid, len(data)) + data)
        else:
            self._end(sid)


class TunnelClient:
    def __init__(self, socks_port, server_port):
        self.loop = Loop()
        self.tunnel = _nodelay(socket.create_connection(("127.0.0.1", server_port)))
        self.loop.add(self.tunnel, self._tunnel_readable)
        self.loop.add(_listener(socks_port), self._accept)
        self.reader = FrameReader(self._frame)
        self.apps = {}           # stream id -> app socket
        self.state = {}          # app fd -> [state, stream id]
        self.next_id = 1

    def _accept(self, listener):
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            _nodelay(sock)
            self.state[sock.fileno()] = [GREETING, 0]
            self.loop.add(sock, self._app_readable)

    def _app_readable(self, sock):
        data = _recv(sock)
        if data is None:
            return
        st = self.state[sock.fileno()]
        if not data:
            self._app_gone(sock)
        elif st[0] == RELAY:
            self.loop.send(self.tunnel, HEAD.pack(DATA, st[1], len(data)) + data)
        elif st[0] == GREETING:
            sock.send(b"\x05\x00")
            st[0] = REQUEST
        elif len(data) < 10 or data[:4] != b"\x05\x01\x00\x01":
            sock.send(REPLY_UNSUPPORTED)
            del self.state[sock.fileno()]
            self.loop.drop(sock)
        else:
            sid, self.next_id = self.next_id, self.next_id + 1
            st[0], st[1] = RELAY, sid
            self.apps[sid] = sock
            self.loop.on_broken[sock.fileno()] = lambda: self._app_gone(sock)
            sock.send(REPLY_OK)
            self.loop.send(self.tunnel, HEAD.pack(OPEN, sid, 6) + data[4:10] + (
                HEAD.pack(DATA, sid, len(data) - 10) + data[10:] if len(data) > 10 else b""))

    def _app_gone(self, sock):
        st = self.state.pop(sock.fileno(), None)
        if st is not None and st[0] == RELAY and self.apps.pop(st[1], None) is not None:
            self.loop.send(self.tunnel, HEAD.pack(CLOSE, st[1], 0))
        self.loop.drop(sock)

    def _tunnel_readable(self, sock):
        data = _recv(sock)
        if data is None:
            return
        if not data:
            sys.exit(0)
        self.reader.feed(data)

    def _frame(self, ftype, sid, payload):
        app = self.apps.get(sid)
        if app is None:
            return
        if ftype == DATA:
            self.loop.send(app, payload)
        elif ftype == CLOSE:
            del self.apps[sid]
            self.state.pop(app.fileno(), None)
            self.loop.drop(app)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        TunnelServer(int(sys.argv[2])).loop.run()
    else:
        TunnelClient(int(sys.argv[2]), int(sys.argv[3])).loop.run()
