"""What a stream sent that its peer has not acknowledged yet, sans-IO (resumption).

When a tunnel can be resumed (:mod:`afb.transport.resume`), each stream keeps
the DATA it sent until the peer's ACK says the bytes arrived; after a new
WebSocket replaced a dead one, it sends again from the offset the peer says
it received.  The chunks are the very ``bytes`` objects the relay read and
handed to the scheduler: keeping them costs a deque slot per chunk, not a
copy; and the deque (760 bytes empty) exists only while something is kept,
so an idle stream pays 80 bytes for this.

**Bounded by the window.**  A sender never has more in flight than the
credit its peer granted, and a receiver acknowledges what it holds (within
:data:`~afb.transport.resume.ACK_DELAY` of receiving it, at FIN at once),
which is at least what it handed back as credit.  So what waits here is at
most the stream's receive window at the peer (``stream_window``, growing to
``window_max`` for a busy stream): never more than one window per stream
(tests/test_resume.py measures the peak).

**Charged to the tunnel's budget.**  That bound holds for a peer that
acknowledges; one that grants credit (WINDOW) but never sends ACK would make
us keep everything.  So the bytes kept are charged to a
:class:`~afb.mux.budget.ByteBudget` (the session's ``down``, the one queued
frames are charged to, chained to the user's): relays stop reading while it
is exhausted, and ``max_buffer`` bounds a tunnel whatever its peer does.
While a chunk is also still queued it counts twice: conservative, and short.
"""

from collections import deque

from afb.errors import ProtocolError


class Unacked:
    """A stream's sent bytes from ``start`` (the peer's last ACK) to ``end``."""

    __slots__ = ("chunks", "start", "end", "fin_acked", "peak", "budget")

    def __init__(self, budget=None):
        self.budget = budget    # charged for what is kept (None: only counted)
        self.chunks = None      # a deque while something is kept
        self.start = 0          # offset of the first byte kept
        self.end = 0            # offset after the last byte sent
        self.fin_acked = False  # the peer acknowledged our FIN
        self.peak = 0           # the most bytes ever kept (tests, the figure above)

    def __repr__(self):
        return "<Unacked %d..%d>" % (self.start, self.end)

    @property
    def held(self):
        return self.end - self.start

    def append(self, data):
        if self.chunks is None:
            self.chunks = deque()
        self.chunks.append(data)
        self.end += len(data)
        if self.budget is not None:
            self.budget.charge(len(data))
        held = self.end - self.start
        if held > self.peak:
            self.peak = held

    def ack(self, offset):
        """The peer holds every byte below ``offset``: free them (an old offset is a no-op)."""
        if offset > self.end:
            raise ProtocolError("ACK of offset %d, only %d bytes were sent" % (offset, self.end))
        before = self.start
        chunks = self.chunks or ()
        while chunks and offset > self.start:
            first = chunks[0]
            size = len(first)
            if self.start + size <= offset:
                chunks.popleft()
                self.start += size
            else:
                cut = offset - self.start
                chunks[0] = memoryview(first)[cut:]
                self.start = offset
        if offset > self.start:     # nothing was kept (an empty stream)
            self.start = offset
        if not chunks:
            self.chunks = None
        if self.budget is not None and self.start > before:
            self.budget.release(self.start - before)

    def since(self, offset):
        """The chunks to send again for a peer that holds the bytes below ``offset``."""
        if offset < self.start:
            raise ProtocolError("peer asks again from offset %d, acknowledged up to %d"
                                % (offset, self.start))
        self.ack(offset)
        return list(self.chunks or ())

    @property
    def done(self):
        """Everything sent, FIN included, is acknowledged."""
        return self.fin_acked and self.start == self.end

    def clear(self):
        """The stream is gone for good: forget (and release) what was kept."""
        self.ack(self.end)
