"""One multiplexed stream of a tunnel session (gevent side).

A :class:`Stream` is what a relay sees: ``write()`` blocks until the peer has
granted credit, ``read()`` blocks until data, EOF (``b''``) or a reset, and
``consumed()`` hands credit back.  The session's reader greenlet feeds it with
``_on_*`` calls; the session's writer sends what it queues.
"""

import logging
import time
from collections import deque

from gevent.event import AsyncResult, Event

from afb.codec import frames
from afb.errors import (REP_GENERAL_FAILURE, DestinationError, StreamReset, TimedOut,
                        reply_reason)
from afb.mux.flow import ReceiveWindow, SendCredit

log = logging.getLogger(__name__)

#: Largest DATA payload one write() queues at once.
MAX_CHUNK = 256 * 1024


class Stream:
    """A bidirectional byte stream inside a :class:`~afb.transport.session.Session`."""

    def __init__(self, session, stream_id, host, port, send_window, recv_window, recv_max):
        self.session = session
        self.id = stream_id
        self.host = host
        self.port = port
        self.opened_at = time.monotonic()
        self.credit = SendCredit(send_window)
        self.window = ReceiveWindow(recv_window, recv_max)
        self.bytes_in = 0
        self.bytes_out = 0
        self._credit_event = Event()
        self._inbound = deque()
        self._inbound_bytes = 0
        self._data_event = Event()
        self.result = AsyncResult()   # OPEN_OK (True) or a DestinationError
        self.remote_fin = False
        self.local_fin = False
        self.reset_error = None
        self.finished = Event()      # set when the stream left the session table

    def __repr__(self):
        return "<Stream %d %s:%s>" % (self.id, self.host, self.port)

    @property
    def target(self):
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s:%d" % (host, self.port)

    @property
    def buffered(self):
        """Received bytes waiting for the local app (bounded by the window)."""
        return self._inbound_bytes

    # --- used by relays -----------------------------------------------------

    def wait_open(self, timeout):
        """Wait for OPEN_OK; raise the DestinationError of OPEN_FAIL, or TimedOut."""
        if not self.result.wait(timeout) and not self.result.ready():
            raise TimedOut("%s: no answer from the server in %.1f s" % (self.target, timeout))
        if self.result.successful():
            return True
        raise self.result.exception

    def write(self, data):
        """Queue ``data`` as DATA frames, blocking while the peer grants no credit."""
        view = memoryview(data)
        while view:
            if self.reset_error is not None:
                raise self.reset_error
            granted = self.credit.take(min(len(view), MAX_CHUNK))
            if not granted:
                self._credit_event.clear()
                self._credit_event.wait()
                continue
            chunk = view[:granted] if granted < len(view) else view
            view = view[granted:]
            self.bytes_out += granted
            self.session._queue(self.id, frames.DATA, chunk)

    def wait_credit(self):
        """Block until some send credit is available (or raise if reset)."""
        while not self.credit.available:
            if self.reset_error is not None:
                raise self.reset_error
            self._credit_event.clear()
            self._credit_event.wait()
        if self.reset_error is not None:
            raise self.reset_error
        return self.credit.available

    def read(self):
        """Next received chunk (memoryview), ``b''`` at EOF; raises StreamReset."""
        while True:
            if self._inbound:
                chunk = self._inbound.popleft()
                self._inbound_bytes -= len(chunk)
                return chunk
            if self.reset_error is not None:
                raise self.reset_error
            if self.remote_fin:
                return b""
            self._data_event.clear()
            self._data_event.wait()

    def consumed(self, n):
        """The local app took ``n`` bytes: hand credit back when half a window went."""
        increment = self.window.on_consumed(n, time.monotonic())
        if increment and self.reset_error is None:
            self.session._queue_control(
                frames.frame(frames.WINDOW, self.id, frames.window_payload(increment)))

    def close_write(self):
        """Half-close: tell the peer we will send no more (FIN)."""
        if not self.local_fin and self.reset_error is None:
            self.local_fin = True
            self.session._queue(self.id, frames.FIN)
            self.session._maybe_finish(self)

    def reset(self, reply=REP_GENERAL_FAILURE, message=""):
        """Abort the stream both ways and tell the peer (RST)."""
        if self.reset_error is None:
            self.session._send_reset(self, reply, message)
            self._on_reset(reply, message or "reset locally", by_peer=False)

    # --- fed by the session's reader ------------------------------------------

    def _on_open_result(self, error):
        if not self.result.ready():
            if error is None:
                self.result.set(True)
            else:
                self.result.set_exception(error)

    def _on_data(self, payload):
        self.window.on_data(len(payload))
        if self.remote_fin or self.reset_error is not None:
            return
        self._inbound.append(payload)
        self._inbound_bytes += len(payload)
        self.bytes_in += len(payload)
        self._data_event.set()

    def _on_window(self, increment):
        self.credit.grant(increment)
        self._credit_event.set()

    def _on_fin(self):
        self.remote_fin = True
        self._data_event.set()
        self.session._maybe_finish(self)

    def _on_reset(self, reply, message, by_peer=True):
        if self.reset_error is not None:
            return
        text = message or reply_reason(reply)
        self.reset_error = StreamReset("stream to %s reset%s: %s" % (
            self.target, " by peer" if by_peer else "", text), reply=reply)
        self._inbound.clear()
        self._inbound_bytes = 0
        self._data_event.set()
        self._credit_event.set()
        self._on_open_result(DestinationError(text, reply=reply))
        self.session._forget(self)
