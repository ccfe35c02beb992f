"""A WebSocket's receive side: frame headers and payloads out of one reused buffer.

:class:`FrameInput` reads through one buffer with ``recv_into``; a payload
larger than a small threshold (and not already in the buffer) is read
straight into a pooled buffer of its own (:class:`~afb.buffers.BufferPool`),
so every payload is copied once after the kernel hands it over: by the
unmasking, or by ``bytes()`` on the client side, which receives unmasked
frames.  :class:`~afb.transport.wsconn.WsConnection` decides what the frames
mean; this only takes bytes off the socket.
"""

from afb.buffers import BufferPool
from afb.codec import websocket as wsc
from afb.transport.socket_writes import SMALL_PAYLOAD

__all__ = ["FrameInput", "RECV_BUFFER", "SMALL_PAYLOAD"]

#: Size of the reused receive buffer.
RECV_BUFFER = 64 * 1024


class FrameInput:
    """The bytes of one socket, a frame header or payload at a time."""

    __slots__ = ("sock", "buf", "view", "start", "end", "pool", "bytes_in")

    def __init__(self, sock, initial=b""):
        """``initial``: bytes read already (after the upgrade's answer)."""
        self.sock = sock
        self.buf = bytearray(max(RECV_BUFFER, len(initial)))
        self.view = memoryview(self.buf)
        self.start = 0              # the next unread byte in buf
        self.end = len(initial)     # the end of the bytes in buf
        if initial:
            self.buf[:self.end] = initial
        self.pool = BufferPool()
        self.bytes_in = 0

    def header(self):
        """The next frame header tuple (see :func:`afb.codec.websocket.parse_header`),
        None on a clean EOF before it; ConnectionResetError on EOF inside it."""
        while True:
            header = wsc.parse_header(self.view[:self.end], self.start)
            if header is not None:
                return header
            avail = self.end - self.start
            if not self._fill(avail + 1):
                if avail:
                    raise ConnectionResetError("WebSocket connection closed in the middle of "
                                               "a frame header")
                return None

    def payload(self, length, key):
        """A data frame's payload (unmasked with ``key``), or None on EOF inside it."""
        if length <= SMALL_PAYLOAD or length <= self.end - self.start:
            return self.small(length, key)
        return self._large(length, key)

    def small(self, length, key):
        """``length`` bytes through the reused buffer, as bytes; None on EOF."""
        if not self._fill(length):
            return None
        start = self.start
        self.start = start + length
        chunk = self.view[start:start + length]
        if key is not None:
            return wsc.mask(chunk, key)
        return bytes(chunk)

    def _large(self, length, key):
        # Only called when the buffer holds less than `length` bytes.  Returns
        # a memoryview of exactly `length` bytes, valid while it is referenced.
        out = self.pool.view(length)
        have = self.end - self.start
        if have:
            out[:have] = self.view[self.start:self.end]
        self.start = self.end = 0
        recv_into = self.sock.recv_into
        pos = have
        try:
            while pos < length:
                n = recv_into(out[pos:])
                if not n:
                    return None
                pos += n
                self.bytes_in += n
        except ValueError:
            raise _closed_under_us() from None
        if key is not None:
            wsc.mask_inplace(out, key)
        return out

    def _fill(self, need):
        """Make ``need`` bytes available at ``start``; False on EOF."""
        avail = self.end - self.start
        if avail >= need:
            return True
        if avail == 0:
            self.start = self.end = 0
        elif len(self.buf) - self.start < need:
            # Move the partial data to the front (it is small: a header or a
            # small payload), so that `need` bytes fit.
            self.buf[:avail] = bytes(self.view[self.start:self.end])
            self.start, self.end = 0, avail
        recv_into = self.sock.recv_into
        view = self.view
        try:
            while self.end - self.start < need:
                n = recv_into(view[self.end:])
                if not n:
                    return False
                self.end += n
                self.bytes_in += n
        except ValueError:
            raise _closed_under_us() from None
        return True


def _closed_under_us():
    """The socket was closed under the reader (a failed write aborted the link), which
    gevent's SSL socket says with a ValueError: a lost link (an OSError), so that the
    session ends or is held for a resume.  Uncaught, it killed the session's greenlet
    and left its streams hanging (bench/soak: a tunnel reset during a write)."""
    return ConnectionAbortedError("the connection was closed during a read")
