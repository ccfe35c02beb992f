"""How frames leave a tunnel session: the fair scheduler and the writer greenlet.

A :class:`FrameWriter` belongs to one :class:`~afb.transport.session.Session`
and knows nothing else of it than what its constructor is given: the
WebSocket, the budget frames are charged to, and what to call when the
peer stops reading or a write fails.  Streams and the session's reader
queue frames (:meth:`FrameWriter.queue`, :meth:`FrameWriter.queue_control`);
one writer greenlet (:meth:`FrameWriter.run`) drains the
:class:`~afb.mux.scheduler.FairScheduler` into WebSocket messages, one batch
per message.  While it has nothing to send the writer is *parked* on a
``Waiter``, and whoever queues a frame wakes it:

* from the event loop (socket callbacks: most frames) by a direct switch,
  so the frame leaves in the same loop iteration;
* from another greenlet by a scheduled switch;
* :meth:`FrameWriter.send_now` (``open_stream``): the calling greenlet sends
  the batch itself, so an OPEN leaves before ``open_stream`` returns.

**Two modes: fast, and paced on a slow link.**  What the scheduler has
handed over is out of its hands: an echo queued behind a 256 KiB batch on
a 20 Mbit/s link waits 100 ms for it, and behind what the kernel holds
unsent, longer still.  Keeping that small costs on a fast link, though:
with ``TCP_NOTSENT_LOWAT`` (16 KiB) on the socket a 256 KiB batch leaves
in many short writes, each after an event-loop wait for writability, and
small batches mean more of everything per byte (the first version kept
the mark on every tunnel: loopback, bench/qos, download 0.92x and CPU per
GiB 1.07x of the code before it; the mark alone took a TLS sender of 256 KiB
messages on loopback from 0.96 to 1.13 s of CPU per GiB).  So the writer
measures the bytes it sends over spans of at least :data:`RATE_SPAN` (wall
clock), and:

* **fast** (the start, and after a span over :data:`FAST_RATE`): full
  batches (``batch_limit``), no low-water mark, no waiting: the code path
  of a writer without pacing;
* **paced** (after a span under :data:`SLOW_RATE` that was the link's
  doing: the writer spent most of it sending, or the kernel still held
  :data:`BACKLOG_SLOW` unsent at its end): the socket gets
  ``TCP_NOTSENT_LOWAT`` (:mod:`afb.transport.sockets`), a batch is what
  drains in about :data:`BATCH_TIME` at the rate the socket took bytes
  while the writer was sending (at least :data:`MIN_BATCH`), and the
  writer waits until the kernel is low on unsent bytes *before* it takes
  a batch: the kernel appends a write to its last unsent packet (up to
  64 KiB) without looking at the low-water mark, so writing whenever a
  send returns kept 64 KiB unsent (measured on a 20 Mbit/s veth: echo p50
  +44 ms beside a download; waiting: +21 ms).  The scheduler decides late,
  and its order is what goes on the wire.

Both tests of "the link's doing" are needed: on that veth a lone download
never made a send block (its stream window, not the socket, stopped the
writer: 256 KiB sent every ~105 ms), yet 240 KiB sat unsent in the kernel,
~100 ms ahead of any echo.  A slow span with neither (an idle tunnel, a
slow sender) changes nothing: a paced writer stays paced until it sees the
link fast.  On loopback afb never paces (no mode change in a full-speed
download); on the 20 Mbit/s veth it paces within ~100 ms of a download's
start, and an echo beside the download gets p99 +13 ms over idle at 95 %
of the link rate (+117 ms without pacing; bench/latency_under_load).

The reader never sends itself: two full send buffers would stop both ends.
Everything queued is charged to the session's ``down`` budget (the relays
stop reading while it is exhausted); what the reader itself queues (PONG,
RST, WINDOW, OPEN_FAIL) past ``backlog_limit`` means the peer sends but
does not read: ``on_overflow`` is called (the session closes the tunnel)
and such answers are dropped.
"""

import logging
import time

import gevent
from gevent.hub import Waiter, get_hub, getcurrent

from afb.codec import frames
from afb.errors import AfbError
from afb.mux.scheduler import FairScheduler

log = logging.getLogger(__name__)

#: Largest batch the writer puts in one WebSocket message (see ``batch_limit``).
BATCH_LIMIT = 256 * 1024
#: Smallest batch while paced (half the tunnel socket's TCP_NOTSENT_LOWAT).
MIN_BATCH = 8 * 1024
#: How long a paced batch may take to drain at the measured send rate (seconds).
BATCH_TIME = 0.002
#: The writer paces below this send rate (bytes/s; 256 Mbit/s: a full default
#: send buffer, 4 MiB, is then 130 ms of queue ahead of an interactive frame)...
SLOW_RATE = 32e6
#: ... and stops pacing above this one (twice, so that it does not flap).
FAST_RATE = 64e6
#: The send rate is judged over spans of this many seconds (wall clock) ...
RATE_SPAN = 0.05
#: A span slower than SLOW_RATE is the link's doing (not the sender's) when the
#: writer spent at least this share of it sending ...
BUSY_SHARE = 0.5
#: ... or when the kernel still holds this many unsent bytes at its end (a
#: stream's window can be what stops the writer: the socket then never blocks,
#: but a window's worth waits unsent in the kernel).
BACKLOG_SLOW = 32 * 1024


class FrameWriter:
    """The sending half of a session (see the module doc)."""

    def __init__(self, ws, budget, *, backlog_limit, on_overflow, on_failure):
        """``on_overflow()``: the peer does not read; ``on_failure(exc)``: a write failed
        (both are the session's, to close the tunnel; neither may block)."""
        self.ws = ws
        self.sched = FairScheduler(budget=budget)
        self.budget = budget
        self.backlog_limit = backlog_limit
        self.on_overflow = on_overflow
        self.on_failure = on_failure
        self.batch_limit = BATCH_LIMIT    # set from the peer's HELLO
        self.paced = False                # slow link: see the module doc
        self.batch_now = BATCH_LIMIT      # a paced batch's size: follows the link
        self.mode_changes = 0
        self._span_start = 0.0            # the current rate span: start, bytes, busy seconds
        self._span_bytes = 0
        self._span_busy = 0.0
        self.closed = False
        self._hub = get_hub()
        self._parked = None               # the writer's Waiter while it waits for frames

    def __bool__(self):
        """Whether frames are waiting."""
        return bool(self.sched)

    # --- queueing -------------------------------------------------------------------

    def queue(self, stream_id, ftype, payload=b"", flags=0, wake=True):
        """Queue a stream's frame behind that stream's earlier ones.

        ``wake=False`` leaves it for the next frame that wakes the writer (an
        OPEN_OK the client does not wait for rides with the stream's data).
        """
        self.sched.push(stream_id, ftype, payload, flags)
        if wake and self._parked is not None:
            self.wake()
        if self.budget.used > self.backlog_limit:
            self.on_overflow()

    def queue_control(self, encoded):
        """Queue an encoded frame ahead of all stream data (dropped once the peer
        has stopped reading: see the module doc)."""
        if self.budget.used > self.backlog_limit:
            self.on_overflow()
            return
        self.sched.push_control(encoded)
        if self._parked is not None:
            self.wake()

    def send_reset(self, stream_id, reply, message):
        """Drop what the stream still had queued and queue its RST."""
        self.sched.drop(stream_id)
        self.queue_control(frames.frame(frames.RST, stream_id, frames.rst_payload(reply, message)))

    # --- sending ----------------------------------------------------------------------

    def send_now(self):
        """Send what is queued, now, if the writer is idle (else it is on it).

        For ``open_stream``: the OPEN leaves now, while the app is still
        reading its SOCKS5 reply, instead of an event-loop iteration later.
        A greenlet sends the batch itself; the event loop switches to the
        writer.  Not for the reader: it must never block on a write (two
        full send buffers would stop both ends).
        """
        if getcurrent() is self._hub:
            self.wake()
            return
        waiter, self._parked = self._parked, None
        if waiter is None:
            return
        try:
            if self.sched and not self.closed:
                parts, _size = self.sched.next_batch(self.batch_limit)
                self.ws.send_message(parts)
        except (OSError, AfbError) as exc:
            self._failed(exc)
        finally:
            if self.sched or self.closed:
                self._hub.loop.run_callback(waiter.switch, None)
            else:
                self._parked = waiter

    def wake(self):
        """Resume the parked writer: at once when called from the event loop.

        Most frames are queued by socket callbacks, which run in the hub: a
        direct switch sends them in this loop iteration.  gevent's own
        wake-ups (``Event.set``) wait for the next iteration, which costs
        ~25-35 us per message here, on every hop of every round trip.  From
        another greenlet the switch is scheduled instead.
        """
        waiter, self._parked = self._parked, None
        if waiter is None:
            return
        if getcurrent() is self._hub:
            waiter.switch(None)
        else:
            self._hub.loop.run_callback(waiter.switch, None)

    def run(self):
        """The writer greenlet: drain the scheduler until closed and empty."""
        sched = self.sched
        send = self.ws.send_message
        clock = time.perf_counter
        wait_writable = getattr(self.ws, "wait_writable", None)
        can_pace = wait_writable is not None and hasattr(self.ws, "unsent")  # else always fast
        self._span_start = clock()
        try:
            while True:
                if not sched:
                    if self.closed:
                        return
                    waiter = self._parked = Waiter()
                    waiter.get()
                    continue
                started = clock()
                if self.paced:
                    wait_writable()          # choose the batch at the last moment
                    if not sched:
                        continue
                    parts, size = sched.next_batch(min(self.batch_now, self.batch_limit))
                else:
                    parts, size = sched.next_batch(self.batch_limit)
                send(parts)
                now = clock()
                self._span_bytes += size
                self._span_busy += now - started
                if can_pace and now - self._span_start >= RATE_SPAN:
                    self._judge(now)
        except (OSError, AfbError) as exc:
            self._failed(exc)
        finally:
            self._parked = None

    def _judge(self, now):
        """End of a rate span: pace or not, and the paced batch size (see the module doc)."""
        span = now - self._span_start
        busy, sent = self._span_busy, self._span_bytes
        self._span_start, self._span_bytes, self._span_busy = now, 0, 0.0
        rate = sent / span
        if self.paced:
            change = rate > FAST_RATE
        else:
            change = rate < SLOW_RATE and (busy >= BUSY_SHARE * span
                                           or self.ws.unsent() >= BACKLOG_SLOW)
        if change:
            self.paced = not self.paced
            self.mode_changes += 1
            self.ws.set_paced(self.paced)
            log.debug("%s: %.1f MB/s sent in %.0f ms, %s", self.ws, rate / 1e6, span * 1000,
                      "paced" if self.paced else "fast")
        if self.paced and busy > 0.0:
            batch = int(sent / busy * BATCH_TIME)
            self.batch_now = MIN_BATCH if batch < MIN_BATCH else min(batch, BATCH_LIMIT)

    def close(self):
        """No more sending: the writer ends once woken."""
        self.closed = True
        self.wake()

    def flush(self, timeout=2.0):
        """Wait until everything queued has been handed to the socket."""
        if self.sched and self._parked is not None:
            self.wake()               # frames queued without a wake-up (a lazy OPEN_OK)
        deadline = time.monotonic() + timeout
        while self.sched and not self.closed and time.monotonic() < deadline:
            gevent.sleep(0.005)

    def _failed(self, exc):
        if not self.closed:
            self.on_failure(exc)

