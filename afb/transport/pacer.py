"""How much CPU one tunnel's reader may take: yield often, and throttle a flood.

A gevent greenlet runs until it blocks, and a socket read with data in the
kernel does not block.  The tunnel reader used to yield only after large
messages, so a client that sent 20 million empty WebSocket continuation
frames kept the server at 100 % CPU: every other tunnel timed out for about
10 s, a new one took 11.8 s to open.  A flood of tiny valid sealed messages
delayed new tunnels by up to 8.8 s, a ping flood gave 448 ms spikes.

The readers (:class:`~afb.transport.wsconn.WsConnection` per WebSocket frame,
:class:`~afb.transport.session.Session` per message and per tunnel frame)
count their work in *units* on a :class:`Pacer`:

* every :data:`SLICE` units the reader yields (``gevent.sleep(0)``), so the
  event loop and the other tunnels get their turn at least every few
  hundred microseconds of one tunnel's work;
* a token bucket of ``rate`` units per second (``burst`` of them at once)
  per tunnel, chained to one per user: a reader over its budget sleeps until
  the bucket has refilled.  Its data then waits in the kernel, so the
  flooding peer is slowed down by TCP, and nobody else.

What a unit costs here (2-core VM, E2E on): a tunnel frame ~1-2 us of
dispatch, a message ~5-8 us (receive, AEAD open).  Legitimate peaks measured
on this machine: a bulk download at ~500 MB/s is ~2,000 messages and
~16,000 frames per second (~24,000 units); opening 10,000 streams at once
is ~40,000 frames within a second.  The default of 100,000 units/s per
tunnel (a burst of as many) leaves those alone and caps a flood at a
fraction of one core.
"""

import time

import gevent

__all__ = ["Pacer", "SLICE", "MESSAGE_UNITS", "OPEN_UNITS"]

#: The reader yields to the event loop after this many units of work.
SLICE = 64
#: Units a whole message costs (receive, unmask or decrypt), besides its frames.
MESSAGE_UNITS = 4
#: Units an OPEN costs (a stream, the limits, then a dial or an OPEN_FAIL): a client
#: that sent OPENs as fast as it could got ~42,000 a second refused (~24 us each,
#: a whole core) within the default 100,000 units, and another user's echo p99 went
#: from 3 ms to 600 ms.  At 16 units a flood gets ~6,000 a second; opening 10,000
#: streams at once takes ~1.6 s instead of ~1 s.
OPEN_UNITS = 16


class Pacer:
    """A reader's work meter; see the module doc.  ``rate`` None: yield only."""

    __slots__ = ("rate", "burst", "tokens", "parent", "pending", "throttled", "clock",
                 "_stamp", "__weakref__")

    def __init__(self, rate=None, burst=None, parent=None, clock=time.monotonic):
        self.rate = float(rate) if rate else None
        self.burst = float(burst or rate or 0)
        self.tokens = self.burst
        self.parent = parent
        self.pending = 0
        #: Seconds spent asleep because the bucket was empty (for stats and tests).
        self.throttled = 0.0
        self.clock = clock
        self._stamp = clock()

    def tick(self, units=1):
        """Count ``units`` of work; every :data:`SLICE` of them, yield or throttle."""
        pending = self.pending + units
        if pending < SLICE:
            self.pending = pending
            return
        self.pending = 0
        delay = self.spend(pending)
        if delay > 0:
            self.throttled += delay
            gevent.sleep(delay)
        else:
            gevent.sleep(0)

    def spend(self, units):
        """Take ``units`` from the bucket (and the parent's); -> seconds to wait (0: none)."""
        delay = 0.0
        if self.rate is not None:
            now = self.clock()
            tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate) - units
            self._stamp = now
            self.tokens = tokens
            if tokens < 0:
                delay = -tokens / self.rate
        parent = self.parent
        if parent is not None:
            delay = max(delay, parent.spend(units))
        return delay


class Allowance:
    """At most ``rate`` events a second, ``burst`` at once: ``allow()`` says whether one may go.

    For answers a peer can ask for without limit (pongs): a peer that pings
    now and then gets every answer, a flood gets ``rate`` a second.
    """

    __slots__ = ("rate", "burst", "tokens", "clock", "_stamp")

    def __init__(self, rate, burst, clock=time.monotonic):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = self.burst
        self.clock = clock
        self._stamp = clock()

    def allow(self):
        now = self.clock()
        tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True
