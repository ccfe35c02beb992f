"""Reused receive buffers for large messages (pure code, no I/O).

Allocating a fresh 256 KiB bytearray for every WebSocket message or E2E record
cost about 15% of the client's CPU in profiles.  A :class:`BufferPool` hands
out a buffer nobody references any more, and hands out views of it: a buffer
counts as free again once every view of it (a payload still waiting in a
stream's queue, say) has been dropped.
"""

import sys

#: Buffer size: a writer batch is 256 KiB, plus frame and record headers.
POOL_BUFFER = 320 * 1024
#: Buffers kept per pool (per connection; two with E2E); more are made, and
#: dropped, on demand.  They stay allocated once made, so they count in the
#: memory a tunnel may keep (2.5 MiB a pool): 16 cost 5 MiB a pool, and 4
#: made plain ws:// bulk transfers 5-7 % slower than 16 (bench/throughput).
POOL_SIZE = 8


def byte_view(part):
    """``part`` as something whose ``len()`` counts bytes (a memoryview cast to "B" if needed)."""
    if isinstance(part, (bytes, bytearray)):
        return part
    view = memoryview(part)
    if view.itemsize != 1 or view.ndim != 1:
        view = view.cast("B")
    return view


class BufferPool:
    """A few large bytearrays, reused once no view of them is alive."""

    __slots__ = ("size", "count", "_pool")

    def __init__(self, size=POOL_BUFFER, count=POOL_SIZE):
        self.size = size
        self.count = count
        self._pool = []

    def view(self, length):
        """A writable memoryview of exactly ``length`` bytes, valid while referenced."""
        return memoryview(self._buffer(length))[:length]

    def _buffer(self, length):
        if length > self.size:
            return bytearray(length)
        pool = self._pool
        for buf in pool:
            # References: the pool list, this loop variable, getrefcount's argument.
            # Any more means a view handed out earlier is still alive.
            if sys.getrefcount(buf) == 3:
                return buf
        buf = bytearray(self.size)
        if len(pool) < self.count:
            pool.append(buf)
        return buf


def detach(data):
    """``data``, copied when it is a small view of a large buffer: for data kept a while.

    A payload waiting for a slow socket is often a memoryview of a whole
    received message (up to ``max_message``, 1 MiB) or of a pooled buffer.
    Keeping the view keeps the whole buffer alive, so a peer could pin a
    megabyte with every byte it makes us hold; a copy of a view shorter than
    half its buffer makes the memory held at most twice the bytes counted
    (see :mod:`afb.mux.budget`).  Bytes and large views are returned as they are.
    """
    if type(data) is memoryview:
        base = data.obj
        if base is not None and len(data) * 2 < len(base):
            return bytes(data)
    return data
