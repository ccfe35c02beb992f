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

A session negotiated as resumable (``resume_grace`` > 0 on both sides) has a
``resume`` (:mod:`afb.transport.resume`): when its WebSocket dies,
:meth:`Session.run` holds the streams (``holding``) up to the grace for a new
WebSocket instead of resetting them.
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
from afb.codec import resume as resume_wire
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
from afb.mux.resend import Unacked
from afb.transport.frame_reader import FrameReader
from afb.transport.frame_writer import BATCH_LIMIT, FrameWriter
from afb.transport.idle import sweep_idle
from afb.transport.pacer import Pacer
from afb.transport.resume import Resumption
from afb.transport.resume import abort as resume_abort
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
                 frame_rate=DEFAULT_FRAME_RATE, user=None, tally=None, peer="",
                 resume_grace=0.0):
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
        client's address, or the server's URL), for the monitor; ``resume_grace``:
        seconds to hold the streams for a new WebSocket (0: no resumption)."""
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
        self.peer_session_id = b"\x00" * 16
        self.resume_grace = resume_grace
        self.resume = None             # a Resumption once both sides agreed in HELLO
        self.holding = False           # resumable, and without a WebSocket now
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
        self.peer_batch_limit = BATCH_LIMIT    # set from the peer's HELLO
        self.install_writer(ws)
        self.tokens = TokenLife(self, on_refresh)
        self.reader = FrameReader(self)
        self.request_token = self.tokens.request_token
        self.expire_at = self.tokens.expire_at
        self._next_id = 1
        self._greenlets = []
        self.reader.handlers[frames.DATAGRAM] = self._datagram    # UDP associations

    def __repr__(self):
        return "<Session %s %d streams>" % (self.label, len(self.streams))

    def install_writer(self, ws):
        """A writer for ``ws`` (a new one for each WebSocket of a resumed tunnel)."""
        #: The queue towards the peer grows past the budget only by frames the
        #: reader makes (PONG, RST, OPEN_FAIL, WINDOW): past this, the peer
        #: sends but does not read, and the tunnel is closed.
        self.writer = FrameWriter(ws, self.down, backlog_limit=2 * self.down.limit + BACKLOG_SLACK,
                                  on_overflow=self._overflow, on_failure=self._write_failed)
        self.writer.batch_limit = self.peer_batch_limit
        # The writer's queueing is the streams' hot path: bound once per writer.
        self.queue = self.writer.queue
        self.queue_control = self.writer.queue_control
        self.send_now = self.writer.send_now
        self.flush = self.writer.flush

    @property
    def detached(self):
        """Resumable, and without a WebSocket now (a new one may come within the grace)."""
        return self.resume is not None and self.resume.detached.is_set()

    @property
    def reader_paused(self):
        """True while the reader waits for local sockets to take the peer's data."""
        return self.reader.paused

    # --- set-up -------------------------------------------------------------

    def handshake(self, timeout=10.0, first=None, binding=b"", refused=""):
        """Exchange HELLO frames; a version mismatch closes with a clear reason.

        ``first``: the peer's HELLO message, already read (a server that looked
        for a resume request in it; a client whose resume was refused: no HELLO
        of ours is sent then).  ``binding``: this WebSocket's channel binding,
        which the resume key is bound to; ``refused``: server, why the resume
        the client asked for in ``first`` was refused (told in the GRANT).
        """
        base = frames.hello_payload(PROTOCOL_VERSION, self.window, self.max_message,
                                    self.session_id)
        hello = frames.frame(frames.HELLO, 0, base)
        with gevent.Timeout(timeout, ProtocolError("no HELLO within %.0f s" % timeout)):
            if self.client and first is None:
                offer = resume_wire.offer() if self.resume_grace > 0 else b""
                self.ws.send_message([frames.frame(frames.HELLO, 0, base + offer)])
            message = self.ws.recv_message() if first is None else first
            if message is None:
                raise ProtocolError("peer closed during the handshake (%s)" % (
                    getattr(self.ws, "peer_close_reason", "") or "no reason"))
            try:
                payload = frames.first_hello(message)
                _v, window, max_message, sid = frames.parse_hello(payload, PROTOCOL_VERSION)
            except VersionMismatch as exc:
                if not self.client:
                    self.ws.send_message([hello])
                self.ws.close(exc.close_code, str(exc))
                raise
            ext = resume_wire.parse_ext(frames.hello_trailer(payload))
            if not self.client:
                if ext is not None and ext.kind in (resume_wire.OFFER, resume_wire.REQUEST) \
                        and self.resume_grace > 0:
                    secret = os.urandom(resume_wire.SECRET_SIZE)
                    self.resume = Resumption(self, secret, self.resume_grace, binding)
                    hello = frames.frame(frames.HELLO, 0, base + resume_wire.grant(
                        self.resume_grace, secret, refused))
                self.ws.send_message([hello])
            elif ext is not None and ext.kind == resume_wire.GRANT and self.resume_grace > 0:
                self.resume = Resumption(self, ext.secret, min(self.resume_grace, ext.grace),
                                         binding)
        self.peer_session_id = sid
        self.peer_window = window
        self.peer_batch_limit = min(BATCH_LIMIT, max_message - 64 * 1024) \
            if max_message > 128 * 1024 else max_message // 2
        self.writer.batch_limit = self.peer_batch_limit
        self.last_received = time.monotonic()

    def start(self):
        """Start the writer and pinger greenlets (after ``handshake``)."""
        self._greenlets = []
        self.start_writer()
        if self.ping_interval > 0:
            self._greenlets.append(gevent.spawn(self._ping_loop))
        if self.idle_timeout > 0:
            self._greenlets.append(gevent.spawn(sweep_idle, self, self.idle_timeout))

    def start_writer(self):
        """The writer's greenlet (again for each WebSocket of a resumed tunnel)."""
        self._greenlets = [g for g in self._greenlets if not g.dead]
        self._greenlets.append(gevent.spawn(self.writer.run))

    def run(self):
        """Read and dispatch frames until the WebSocket closes -- and, resumable, while
        new ones replace it within the grace; then clean up."""
        while True:
            self.reader.run()
            if self.resume is None or not self.resume.hold():
                break
        self.teardown()

    def drop_link(self, reason):
        """The WebSocket is dead (no pong, a write failed, replaced): close it without
        a close frame; a resumable session then holds its streams (``run``)."""
        if self.resume is None:
            self.close_reason = self.close_reason or reason
            self.close(CLOSE_GOING_AWAY, reason)
            return
        if not self.detached and not self.closed:
            self.close_reason = self.close_reason or reason
            self.reader.link_lost = True
            self.reader.wake()
            resume_abort(self.ws)

    # --- streams ------------------------------------------------------------

    def open_stream(self, command, host, port, early=b"", wait=True):
        """Open a stream (client side); OPEN leaves at once, DATA may follow without waiting.

        ``wait=False``: the caller will not wait for the server's OPEN_OK
        (fast_open), which may then come with the stream's first data.
        """
        if self.closed or self.draining or self.holding:
            raise AfbError("tunnel is %s" % ("closed" if self.closed else
                                              "draining" if self.draining else "reconnecting"))
        stream_id = self._next_id
        self._next_id += 2
        stream = self.new_stream(stream_id, host, port)
        stream.command = command
        self.queue(stream_id, frames.OPEN, frames.open_payload(command, host, port, early),
                   0 if wait else frames.FLAG_NO_WAIT, wake=False)
        if early:
            stream.credit.take(len(early))
            stream.bytes_out += len(early)
            if stream.sent is not None:
                stream.sent.append(early)
        self.send_now()
        return stream

    def new_stream(self, stream_id, host, port):
        """A new stream in the table (counted for the user), not yet announced."""
        stream = Stream(self, stream_id, host, port, self.peer_window, self.window, self.window_max)
        if self.resume is not None:
            stream.sent = Unacked(self.down)
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
            if stream.sent is not None:
                self.resume.linger(stream)
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
            if self.holding:
                continue
            for stream in list(self.streams.values()):
                check = getattr(stream.sink, "check_stalled", None)
                if check is not None:
                    check()
            silent = time.monotonic() - self.last_received
            if silent > self.ping_interval + self.ping_timeout and not self.reader.paused:
                log.warning("%s: peer silent for %.0f s; %s", self.label, silent,
                            "dropping its WebSocket" if self.resume else "closing the tunnel")
                self.drop_link("peer silent for %.0f s" % silent)
                if self.resume is None:
                    return
                continue
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
        if self.resume is not None:
            self.drop_link("write failed: %s" % exc)
            return
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
        if self.resume is not None:
            self.resume.relinked.set()      # a holding session ends now
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
        if self.resume is not None:
            self.resume.end()
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
