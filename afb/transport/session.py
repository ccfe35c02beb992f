"""A tunnel session: many streams multiplexed over one WebSocket (gevent).

A :class:`Session` holds the streams of one tunnel and the parts that move
their frames, each an object of its own with what it uses of the session
named in its module's docstring:

* ``reader`` (:mod:`afb.transport.frame_reader`): reads the WebSocket in the
  caller's greenlet (:meth:`Session.run`) and hands each frame to its stream
  or to the session;
* ``writer`` (:mod:`afb.transport.frame_writer`): one greenlet draining the
  fair scheduler, one WebSocket message per batch;
* ``tokens`` (:mod:`afb.transport.token_life`): token refresh (client) and
  expiry (server);
* the pinger (RTT, dead-peer detection) and the idle sweeper, greenlets.

What a :class:`~afb.transport.stream.Stream` and its relay may call on the
session is the small interface :class:`~afb.transport.stream.StreamOwner`
describes: ``queue``, ``queue_control``, ``send_reset``, ``stream_done``,
``forget``, ``clock`` and the two budgets (:mod:`afb.mux.budget`): ``down``
(queued for the peer) and ``up`` (the peer's data not yet taken by local
sockets).  Streams are opened by the client (odd ids); the server learns of
them through ``on_open``.
"""

import itertools
import logging
import os
import time

import gevent
from gevent.event import Event
from gevent.pool import Group

from afb import PROTOCOL_VERSION
from afb.codec import frames
from afb.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    REP_GENERAL_FAILURE,
    AfbError,
    ProtocolError,
    VersionMismatch,
)
from afb.monitor.counters import Tally, count, count_udp
from afb.mux.budget import ByteBudget
from afb.transport.frame_reader import FrameReader
from afb.transport.frame_writer import BATCH_LIMIT, FrameWriter
from afb.transport.idle import sweep_idle
from afb.transport.pacer import Pacer
from afb.transport.stream import Stream
from afb.transport.token_life import TokenLife

log = logging.getLogger(__name__)

#: Default most bytes held for one tunnel in each direction (``max_buffer``).
DEFAULT_BUFFER = 8 * 1024 * 1024
#: Default work units per second of one tunnel's reader (``max_frame_rate``).
DEFAULT_FRAME_RATE = 100_000
#: What the reader's own answers may add to a full queue (see backlog_limit).
BACKLOG_SLACK = 1 << 20
#: Tunnels are numbered from 1 in the order they were made (the monitor's names).
_numbers = itertools.count(1)


class Session:
    """Multiplexes :class:`Stream` objects over one ``WsConnection``."""

    def __init__(self, ws, *, client, window=256 * 1024, window_max=None,
                 max_message=1 << 20, max_streams=16384, ping_interval=20.0,
                 ping_timeout=15.0, on_open=None, on_refresh=None, admit=None,
                 idle_timeout=0.0, label="", buffer_limit=DEFAULT_BUFFER,
                 frame_rate=DEFAULT_FRAME_RATE, user=None, tally=None, peer=""):
        """``on_open(session, stream, command)``: server, a client opened a stream
        (must not block); ``on_refresh(session) -> token``: server, a fresh token;
        ``admit(session, stream)``: server, raises AfbError to refuse a stream;
        ``buffer_limit``: most bytes held for this tunnel in each direction
        (:mod:`afb.mux.budget`); ``frame_rate``: work units per second its
        reader may spend (:mod:`afb.transport.pacer`); ``user``: the server's
        record of the tunnel's user, whose budgets and pacer are the parents
        of this tunnel's (None: no parent); ``tally``: the
        :class:`~afb.monitor.counters.Tally` this tunnel's own adds to (its
        user's, or the process's); ``peer``: who is at the other end (the
        client's address, or the server's URL), for the monitor."""
        self.ws = ws
        self.client = client
        self.window = window
        self.window_max = window_max or max(window, 4 * 1024 * 1024)
        self.max_message = max_message
        self.max_streams = max_streams
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.on_open = on_open
        self.admit = admit
        self.idle_timeout = idle_timeout
        self.label = label
        self.clock = time.monotonic
        self.claims = {}               # server: claims of the token in force
        self.session_id = os.urandom(16)
        self.number = next(_numbers)   # the monitor's name for it: stream "number/id"
        self.peer = peer
        self.tally = Tally(parent=tally)   # what its ended streams carried
        self.peer_window = window
        self.streams = {}
        self.rtt = None
        self.started_at = time.monotonic()
        self.last_received = self.started_at
        self.draining = False      # GOAWAY sent or received: no new streams
        self.goaway_sent = 0.0     # when we sent GOAWAY (OPENs crossing it are served)
        self.closed = False
        self.close_reason = ""
        self.drained = Event()
        self.drained.set()
        self.done = Event()
        self.state_changed = Event()   # set on GOAWAY received and on close
        self.tasks = Group()       # per-stream greenlets (server: DNS + dial)
        self.user = user
        self.down = ByteBudget(buffer_limit, parent=user and user.down, name="to peer")
        self.up = ByteBudget(buffer_limit, parent=user and user.up, name="from peer")
        self.pacer = Pacer(frame_rate, parent=user and user.pacer)
        ws.pacer = self.pacer
        #: The queue towards the peer grows past the budget only by frames the
        #: reader makes (PONG, RST, OPEN_FAIL, WINDOW): past this, the peer
        #: sends but does not read, and the tunnel is closed.
        self.writer = FrameWriter(ws, self.down, backlog_limit=2 * self.down.limit + BACKLOG_SLACK,
                                  on_overflow=self._overflow, on_failure=self._write_failed)
        self.tokens = TokenLife(self, on_refresh)
        self.reader = FrameReader(self)
        # The writer's queueing is the streams' hot path: bound once.
        self.queue = self.writer.queue
        self.queue_control = self.writer.queue_control
        self.send_now = self.writer.send_now
        self.flush = self.writer.flush
        self.request_token = self.tokens.request_token
        self.expire_at = self.tokens.expire_at
        self._next_id = 1
        self._greenlets = []
        self.reader.handlers[frames.DATAGRAM] = self._datagram    # UDP associations

    def __repr__(self):
        return "<Session %s %d streams>" % (self.label, len(self.streams))

    @property
    def reader_paused(self):
        """True while the reader waits for local sockets to take the peer's data."""
        return self.reader.paused

    # --- set-up -------------------------------------------------------------

    def handshake(self, timeout=10.0):
        """Exchange HELLO frames; a version mismatch closes with a clear reason."""
        hello = frames.frame(frames.HELLO, 0, frames.hello_payload(
            PROTOCOL_VERSION, self.window, self.max_message, self.session_id))
        with gevent.Timeout(timeout, ProtocolError("no HELLO within %.0f s" % timeout)):
            if self.client:
                self.ws.send_message([hello])
            message = self.ws.recv_message()
            if message is None:
                raise ProtocolError("peer closed during the handshake (%s)" % (
                    getattr(self.ws, "peer_close_reason", "") or "no reason"))
            try:
                _v, window, max_message, _sid = frames.parse_hello_message(message,
                                                                           PROTOCOL_VERSION)
            except VersionMismatch as exc:
                if not self.client:
                    self.ws.send_message([hello])
                self.ws.close(exc.close_code, str(exc))
                raise
            if not self.client:
                self.ws.send_message([hello])
        self.peer_window = window
        self.writer.batch_limit = min(BATCH_LIMIT, max_message - 64 * 1024) \
            if max_message > 128 * 1024 else max_message // 2
        self.last_received = time.monotonic()

    def start(self):
        """Start the writer and pinger greenlets (after ``handshake``)."""
        self._greenlets = [gevent.spawn(self.writer.run)]
        if self.ping_interval > 0:
            self._greenlets.append(gevent.spawn(self._ping_loop))
        if self.idle_timeout > 0:
            self._greenlets.append(gevent.spawn(sweep_idle, self, self.idle_timeout))

    def run(self):
        """Read and dispatch frames until the WebSocket closes; then clean up."""
        self.reader.run()

    # --- streams ------------------------------------------------------------

    def open_stream(self, command, host, port, early=b"", wait=True):
        """Open a stream (client side); OPEN leaves at once, DATA may follow without waiting.

        ``wait=False``: the caller will not wait for the server's OPEN_OK
        (fast_open), which may then come with the stream's first data.
        """
        if self.closed or self.draining:
            raise AfbError("tunnel is %s" % ("closed" if self.closed else "draining"))
        stream_id = self._next_id
        self._next_id += 2
        stream = self.new_stream(stream_id, host, port)
        self.queue(stream_id, frames.OPEN, frames.open_payload(command, host, port, early),
                   0 if wait else frames.FLAG_NO_WAIT, wake=False)
        if early:
            stream.credit.take(len(early))
            stream.bytes_out += len(early)
        self.send_now()
        return stream

    def new_stream(self, stream_id, host, port):
        """A new stream in the table (counted for the user), not yet announced."""
        stream = Stream(self, stream_id, host, port, self.peer_window, self.window, self.window_max)
        self.streams[stream_id] = stream
        if self.user is not None:
            self.user.streams += 1
            self.tally.stream_opened(self.user.streams)
        else:
            self.tally.stream_opened(len(self.streams))
        self.drained.clear()
        return stream

    def accept(self, stream):
        """Server: the destination is connected; tell the client (OPEN_OK).

        At once if the client waits for it; else it rides with the stream's
        next frame (one message fewer per stream, each way one wake-up less).
        """
        self.queue(stream.id, frames.OPEN_OK, wake=not stream.reply_later)

    def refuse(self, stream, error):
        """Server: the destination failed; OPEN_FAIL with the SOCKS5 reply code."""
        if stream.reset_error is None:
            self.queue(stream.id, frames.OPEN_FAIL, frames.open_fail_payload(error.reply,
                                                                            str(error)))
            stream.on_reset(error.reply, str(error), by_peer=False)

    def _datagram(self, _flags, stream_id, payload):
        """DATAGRAM: to the UDP association of its stream (afb/transport/udp_*.py)."""
        stream = self.streams.get(stream_id)
        on_datagram = getattr(stream and stream.sink, "on_datagram", None)
        if on_datagram is None:
            count_udp("dropped_no_association")
        else:
            on_datagram(payload)

    # --- what streams call (StreamOwner) -------------------------------------

    def send_reset(self, stream, reply, message):
        """Drop what ``stream`` had queued; send its RST."""
        self.writer.send_reset(stream.id, reply, message)

    def stream_done(self, stream):
        """The stream may have ended both ways: forget it if so."""
        if stream.local_fin and stream.remote_fin:
            self.forget(stream)

    def forget(self, stream):
        """The stream is gone (ended or reset): out of the table."""
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
            self.tally.stream_ended(stream)
            if self.user is not None:
                self.user.streams -= 1
            if not self.streams:
                self.drained.set()

    # --- pinger ------------------------------------------------------------------

    def _ping_loop(self):
        # One PING at once: the tunnel's RTT is known (monitor, dashboard) from its
        # first second, not only after the first ping_interval.
        self.queue_control(frames.frame(frames.PING, 0, frames.ping_payload(time.monotonic_ns())))
        while not self.closed:
            gevent.sleep(self.ping_interval)
            if self.closed:
                return
            silent = time.monotonic() - self.last_received
            if silent > self.ping_interval + self.ping_timeout and not self.reader.paused:
                log.warning("%s: peer silent for %.0f s; closing the tunnel", self.label, silent)
                self.close_reason = "peer silent for %.0f s" % silent
                self.close(CLOSE_GOING_AWAY, "ping timeout")
                return
            self.queue_control(frames.frame(frames.PING, 0,
                                            frames.ping_payload(time.monotonic_ns())))

    # --- ending ---------------------------------------------------------------------

    def _overflow(self):
        """The peer sends requests whose answers it does not read: close the tunnel."""
        if self.closed or self.close_reason:
            return
        self.close_reason = "peer does not read (%d bytes queued for it)" % self.down.used
        count("limit_hits")
        log.warning("%s: %s; closing the tunnel", self.label, self.close_reason)
        gevent.spawn(self.close, CLOSE_POLICY_VIOLATION, "peer does not read")

    def _write_failed(self, exc):
        log.info("%s: write failed: %s", self.label, exc)
        self.close_reason = self.close_reason or "write failed: %s" % exc
        self.close()

    def goaway(self, message="going away"):
        """Tell the peer to open no new streams here; existing ones go on."""
        if not self.draining and not self.closed:
            self.draining = True
            self.goaway_sent = time.monotonic()
            self.queue_control(frames.frame(frames.GOAWAY, 0, frames.goaway_payload(
                self.reader.last_peer_id, 0, message)))

    def close(self, code=CLOSE_NORMAL, reason=""):
        """Close the WebSocket; ``run()`` then resets every stream."""
        if self.closed:
            return
        self.closed = True
        self.reader.wake()
        try:
            self.ws.close(code, reason)
        except (OSError, AfbError):
            pass
        self.writer.close()

    def teardown(self):
        """After the reader's last message: every stream reset, every greenlet ended."""
        self.close()
        reason = self.close_reason or "tunnel closed"
        for stream in list(self.streams.values()):
            stream.on_reset(REP_GENERAL_FAILURE, reason)
        self.streams.clear()
        self.drained.set()
        self.writer.wake()
        self.state_changed.set()
        self.tokens.stop()
        if not self.done.is_set():
            self.tally.tunnel_ended(time.monotonic() - self.started_at)
        for greenlet in self._greenlets:
            if greenlet is not gevent.getcurrent():
                greenlet.kill(block=False)
        self.done.set()
