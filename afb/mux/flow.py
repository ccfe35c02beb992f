"""Per-stream credit flow control, sans-IO.

The receiver of a stream grants the sender a window of bytes.  The sender may
have at most that many bytes in flight; the receiver hands credit back with a
WINDOW frame once the local app has consumed half a window (as HTTP/2 does),
never per frame.  A stream whose app stops reading therefore costs the other
end at most one window of memory and never stalls the other streams.

Windows start small (memory per idle stream stays small, cf. gost issue #775)
and double, up to a maximum, only while the stream really moves data: when
half a window was consumed within ``grow_interval`` seconds of the previous
update.  A slow reader never earns a larger window.
"""

from afb.codec.frames import MAX_WINDOW
from afb.errors import ProtocolError

#: Half a window consumed this fast means the window limits the stream.
DEFAULT_GROW_INTERVAL = 0.05


class ReceiveWindow:
    """What we allow the peer to send us on one stream."""

    __slots__ = ("size", "maximum", "outstanding", "pending", "received", "grow_interval",
                 "_last_update")

    def __init__(self, initial, maximum=None, grow_interval=DEFAULT_GROW_INTERVAL):
        self.size = initial
        self.maximum = max(maximum or initial, initial)
        self.outstanding = initial   # bytes the peer may still send
        self.pending = 0             # consumed, not yet handed back
        self.received = 0            # bytes received so far: the stream's offset (resumption)
        self.grow_interval = grow_interval
        self._last_update = None

    @property
    def buffered_limit(self):
        """The most bytes that can ever wait in our buffer for this stream."""
        return self.size

    def on_data(self, n):
        """Account for ``n`` received bytes; a peer overrunning its credit is a protocol error."""
        if n > self.outstanding:
            raise ProtocolError(
                "flow control violation: %d bytes sent with %d credit" % (n, self.outstanding))
        self.outstanding -= n
        self.received += n

    @property
    def limit(self):
        """The offset the peer may send up to (what a resumed link tells it)."""
        return self.received + self.outstanding

    def on_consumed(self, n, now):
        """The app took ``n`` bytes; return the WINDOW increment to send (0: none yet)."""
        self.pending += n
        if self.pending < self.size // 2:
            return 0
        grow = 0
        last = self._last_update
        if last is not None and now - last < self.grow_interval and self.size < self.maximum:
            grow = min(self.size, self.maximum - self.size)
            self.size += grow
        self._last_update = now
        increment = self.pending + grow
        self.pending = 0
        self.outstanding += increment
        return increment


class SendCredit:
    """What the peer allows us to send on one stream."""

    __slots__ = ("available",)

    def __init__(self, initial):
        self.available = initial

    def take(self, wanted):
        """Reserve up to ``wanted`` bytes of credit; return how many were granted."""
        granted = wanted if wanted < self.available else self.available
        self.available -= granted
        return granted

    def reset_to(self, available):
        """Resumption: the credit the peer's RESUME says is left (its limit minus what we sent)."""
        self.available = max(0, min(available, MAX_WINDOW))

    def grant(self, increment):
        """Add the peer's WINDOW increment; more credit than any window is an error.

        A receiver never has more outstanding than its window, and no window
        exceeds :data:`~afb.codec.frames.MAX_WINDOW`.
        """
        if self.available + increment > MAX_WINDOW:
            raise ProtocolError("WINDOW raises the send credit to %d bytes, more than the "
                                "largest window (%d)" % (self.available + increment, MAX_WINDOW))
        self.available += increment
