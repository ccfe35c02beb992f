"""One multiplexed stream of a tunnel session.

A :class:`Stream` keeps the stream's flow-control state and turns what the
local side does into frames: ``send()`` (DATA, within the peer's credit),
``consumed()`` (WINDOW, once half a window went), ``close_write()`` (FIN) and
``reset()`` (RST).  What the peer sends is handed to the stream's *sink*, the
:class:`~afb.transport.relay.SocketRelay` that owns the local socket, through
``deliver``, ``credit_available``, ``remote_eof`` and ``abort``.  Until a sink
is attached (the server is still dialling, the client still answering SOCKS),
received data waits here, bounded by the window and charged to the session's
``up`` budget (:mod:`afb.mux.budget`).  On the server a stream may be
dialling: ``pending`` then cancels that dial if the stream is reset first
(the client gave up, or the tunnel closed), so no descriptor outlives it.

When the tunnel can be resumed (:mod:`afb.transport.resume`), ``sent`` keeps
the DATA not yet acknowledged (:class:`~afb.mux.resend.Unacked`), what it
receives is acknowledged within :data:`~afb.transport.resume.ACK_DELAY`, a FIN
at once; while the tunnel has no WebSocket (``session.holding``)
DATA is kept and not queued: it leaves once the peer said where to resume.

No greenlet belongs to a stream: the session's reader feeds it (the
``on_*`` methods), the relay's socket watchers drive it.  What a stream
calls on its session is :class:`StreamOwner`.
"""

import logging
from collections import deque
from typing import Protocol

from gevent.event import AsyncResult

from afb.buffers import detach
from afb.codec import frames, resume
from afb.errors import REP_GENERAL_FAILURE, DestinationError, StreamReset, TimedOut, reply_reason
from afb.monitor.counters import count
from afb.mux.budget import ByteBudget
from afb.mux.flow import ReceiveWindow, SendCredit

log = logging.getLogger(__name__)


class StreamOwner(Protocol):
    """What a :class:`Stream` (and its relay) needs of its session; the whole of it.

    :class:`~afb.transport.session.Session` is the one implementation; the
    unit tests run streams under a real session too.
    """

    #: Frames queued for the peer (the relay stops reading while it is exhausted)
    #: and the peer's data not yet taken by local sockets (charged by stream and relay).
    down: ByteBudget
    up: ByteBudget
    #: Resumable tunnels (afb/transport/resume.py): the Resumption (None: not
    #: negotiated) and whether DATA must wait for a new WebSocket's RESUME.
    resume: object
    holding: bool

    def clock(self) -> float:
        """Monotonic seconds (window growth, stream ages)."""

    def queue(self, stream_id: int, ftype: int, payload=b"", flags: int = 0,
              wake: bool = True) -> None:
        """Queue a frame of the stream, behind its earlier ones."""

    def queue_control(self, encoded: bytes) -> None:
        """Queue an encoded frame (WINDOW) ahead of all stream data."""

    def send_reset(self, stream: "Stream", reply: int, message: str) -> None:
        """Drop what the stream still had queued and send its RST."""

    def stream_done(self, stream: "Stream") -> None:
        """The stream sent or received a FIN: forget it once both are done."""

    def forget(self, stream: "Stream") -> None:
        """The stream is gone (reset): out of the session's table."""


class Stream:
    """A bidirectional byte stream inside a :class:`~afb.transport.session.Session`."""

    __slots__ = ("session", "id", "host", "port", "credit", "window", "bytes_in", "bytes_out",
                 "remote_fin", "local_fin", "reset_error", "sink", "_early", "_result",
                 "reply_later", "pending", "opened_at", "origin", "sent", "command",
                 "__weakref__")

    def __init__(self, session, stream_id, host, port, send_window, recv_window, recv_max):
        self.session = session
        self.id = stream_id
        self.host = host
        self.port = port
        self.credit = SendCredit(send_window)
        self.window = ReceiveWindow(recv_window, recv_max)
        self.bytes_in = 0
        self.bytes_out = 0
        self.remote_fin = False
        self.local_fin = False
        self.reset_error = None
        self.sink = None
        self._early = None      # data received before a sink was attached
        self._result = None     # AsyncResult of OPEN_OK / OPEN_FAIL, made on demand
        self.reply_later = False   # server: the client does not wait for OPEN_OK
        self.pending = None        # server: cancels the dial still in progress
        self.opened_at = session.clock()
        self.origin = None         # client: (the app's address, its proxy user or None)
        self.sent = None           # resumable tunnel: the Unacked DATA (set by the session)
        self.command = frames.CMD_CONNECT   # of its OPEN (sent again if a cut lost it)

    def __repr__(self):
        return "<Stream %d %s>" % (self.id, self.target)

    @property
    def target(self):
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s:%d" % (host, self.port)

    @property
    def buffered(self):
        """Received bytes not yet taken by the local app (bounded by the window)."""
        early = sum(len(chunk) for chunk in self._early) if self._early else 0
        return early + (self.sink.out_bytes if self.sink is not None else 0)

    # --- used by the local side ---------------------------------------------------

    def attach(self, sink):
        """Hand the stream to ``sink``; data, EOF or a reset that came early is replayed."""
        self.sink = sink
        self.pending = None
        early, self._early = self._early, None
        if early:
            self.session.up.release(sum(len(chunk) for chunk in early))
        if self.reset_error is not None:
            sink.abort(self.reset_error)
            return
        for chunk in early or ():
            sink.deliver(chunk)
        if self.remote_fin:
            sink.remote_eof()

    @property
    def result(self):
        if self._result is None:
            self._result = AsyncResult()
        return self._result

    def wait_open(self, timeout):
        """Wait for OPEN_OK; raise the DestinationError of OPEN_FAIL, or TimedOut."""
        result = self.result
        if self.reset_error is not None and not result.ready():
            raise DestinationError(str(self.reset_error), reply=self.reset_error.reply)
        if not result.wait(timeout) and not result.ready():
            raise TimedOut("%s: no answer from the server in %.1f s" % (self.target, timeout))
        if result.successful():
            return True
        raise result.exception

    def send(self, data):
        """Queue ``data`` as DATA; the caller read no more than ``credit.available``."""
        granted = self.credit.take(len(data))
        if granted != len(data):
            raise AssertionError("stream %d: %d bytes sent with %d credit" % (
                self.id, len(data), granted))
        self.bytes_out += granted
        sent = self.sent
        if sent is not None:
            sent.append(data)
            if self.session.holding:    # no WebSocket now: sent once the tunnel is resumed
                return
        self.session.queue(self.id, frames.DATA, data)

    def consumed(self, n):
        """The local app took ``n`` bytes: hand credit back when half a window went."""
        increment = self.window.on_consumed(n, self.session.clock())
        if increment and self.reset_error is None:
            self.session.queue_control(
                frames.frame(frames.WINDOW, self.id, frames.window_payload(increment)))

    def close_write(self):
        """Half-close: tell the peer we will send no more (FIN)."""
        if not self.local_fin and self.reset_error is None:
            self.local_fin = True
            self.session.queue(self.id, frames.FIN)
            self.session.stream_done(self)

    def reset(self, reply=REP_GENERAL_FAILURE, message=""):
        """Abort the stream both ways and tell the peer (RST)."""
        if self.reset_error is None:
            count("resets")
            self.session.send_reset(self, reply, message)
            self.on_reset(reply, message or "reset locally", by_peer=False)

    # --- fed by the session's reader (and, for resets, the session) ------------

    def on_open_result(self, error):
        result = self.result
        if not result.ready():
            if error is None:
                result.set(True)
            else:
                result.set_exception(error)

    def on_data(self, payload):
        self.window.on_data(len(payload))
        if self.sent is not None:
            self.session.resume.ack_soon(self)
        if self.remote_fin or self.reset_error is not None:
            return
        self.bytes_in += len(payload)
        if self.sink is not None:
            self.sink.deliver(payload)
            return
        payload = detach(payload)
        self.session.up.charge(len(payload))
        if self._early is None:
            self._early = deque((payload,))
        else:
            self._early.append(payload)

    def on_window(self, increment):
        self.credit.grant(increment)
        if self.sink is not None:
            self.sink.credit_available()

    def on_fin(self):
        self.remote_fin = True
        if self.sent is not None:
            self.session.queue_control(frames.frame(
                frames.ACK, self.id, resume.ack_payload(self.window.received), resume.FLAG_FIN))
        if self.sink is not None:
            self.sink.remote_eof()
        self.session.stream_done(self)

    def on_reset(self, reply, message, by_peer=True):
        if self.reset_error is not None:
            return
        text = message or reply_reason(reply)
        self.reset_error = StreamReset("stream to %s reset%s: %s" % (
            self.target, " by peer" if by_peer else "", text), reply=reply)
        if self._early:
            self.session.up.release(sum(len(chunk) for chunk in self._early))
        self._early = None
        pending, self.pending = self.pending, None
        if pending is not None:
            pending()
        if self._result is not None:
            self.on_open_result(DestinationError(text, reply=reply))
        if self.sink is not None:
            self.sink.abort(self.reset_error)
        self.session.forget(self)
