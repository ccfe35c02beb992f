"""How frames leave a tunnel session: the fair scheduler and the writer greenlet.

Mixed into :class:`~afb.transport.session.Session`.  Streams and the reader
queue frames (``_queue``, ``_queue_control``); one writer greenlet drains
the :class:`~afb.mux.scheduler.FairScheduler` into WebSocket messages, one
batch per message.  While it has nothing to send the writer is *parked* on a
``Waiter``, and whoever queues a frame wakes it:

* from the event loop (socket callbacks: most frames) by a direct switch,
  so the frame leaves in the same loop iteration;
* from another greenlet by a scheduled switch;
* ``send_now`` (``open_stream``): the calling greenlet sends the batch
  itself, so an OPEN leaves before ``open_stream`` returns.

The reader never sends itself: two full send buffers would stop both ends.
Everything queued is charged to the session's ``down`` budget (the relays
stop reading while it is exhausted); what the reader itself queues (PONG,
RST, WINDOW, OPEN_FAIL) past ``backlog_limit`` means the peer sends but
does not read, and closes the tunnel.
"""

import logging
import time

import gevent
from gevent.hub import Waiter, get_hub, getcurrent

from afb.codec import frames
from afb.errors import AfbError
from afb.mux.scheduler import FairScheduler

log = logging.getLogger(__name__)


class FrameWriter:
    """The sending half of a session (see the module doc)."""

    def _setup_writer(self):
        self._sched = FairScheduler(budget=self.down)
        self._hub = get_hub()
        self._parked = None        # the writer's Waiter while it waits for frames

    def _queue(self, stream_id, ftype, payload=b""):
        self._sched.push(stream_id, ftype, payload)
        if self._parked is not None:
            self._wake_writer()
        if self.down.used > self.backlog_limit:
            self._overflow()

    def send_now(self):
        """Send what is queued, now, if the writer is idle (else it is on it).

        For ``open_stream``: the OPEN leaves now, while the app is still
        reading its SOCKS5 reply, instead of an event-loop iteration later.
        A greenlet sends the batch itself; the event loop switches to the
        writer.  Not for the reader: it must never block on a write (two
        full send buffers would stop both ends).
        """
        if getcurrent() is self._hub:
            self._wake_writer()
            return
        waiter, self._parked = self._parked, None
        if waiter is None:
            return
        try:
            if self._sched and not self.closed:
                parts, _size = self._sched.next_batch(self.batch_limit)
                self.ws.send_message(parts)
        except (OSError, AfbError) as exc:
            self._write_failed(exc)
        finally:
            if self._sched or self.closed:
                self._hub.loop.run_callback(waiter.switch, None)
            else:
                self._parked = waiter

    def _queue_control(self, encoded):
        if self.down.used > self.backlog_limit:
            self._overflow()          # the peer does not read: its answers are dropped
            return
        self._sched.push_control(encoded)
        if self._parked is not None:
            self._wake_writer()

    def _wake_writer(self):
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

    def _send_reset(self, stream, reply, message):
        self._sched.drop(stream.id)
        self._queue_control(frames.frame(frames.RST, stream.id, frames.rst_payload(reply, message)))

    def _write_loop(self):
        sched = self._sched
        send = self.ws.send_message
        try:
            while True:
                if not sched:
                    if self.closed:
                        return
                    waiter = self._parked = Waiter()
                    waiter.get()
                    continue
                parts, _size = sched.next_batch(self.batch_limit)
                send(parts)
        except (OSError, AfbError) as exc:
            self._write_failed(exc)
        finally:
            self._parked = None

    def _write_failed(self, exc):
        if not self.closed:
            log.info("%s: write failed: %s", self.label, exc)
            self.close_reason = self.close_reason or "write failed: %s" % exc
            self.close()

    def flush(self, timeout=2.0):
        """Wait until everything queued has been handed to the socket."""
        if self._sched and self._parked is not None:
            self._wake_writer()        # frames queued without a wake-up (a lazy OPEN_OK)
        deadline = time.monotonic() + timeout
        while self._sched and not self.closed and time.monotonic() < deadline:
            gevent.sleep(0.005)
