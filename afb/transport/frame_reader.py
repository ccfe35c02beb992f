"""How frames arrive in a tunnel session: the reader and what each frame does.

A :class:`FrameReader` belongs to one :class:`~afb.transport.session.Session`
(``session.reader``; the sending half is :mod:`afb.transport.frame_writer`).
:meth:`FrameReader.run` reads one WebSocket message at a time in the
session's greenlet and hands each frame to its handler: a table by frame
type, built for the session's role (only a server takes OPEN and REFRESH,
only a client OPEN_OK, OPEN_FAIL and TOKEN; any other type is answered as
unknown), with DATA, the frame of the hot path, looked up first.  It never
blocks on a write (answers are queued for the writer), and it bounds what a
peer can make it do:

* every message and frame counts on the session's pacer
  (:mod:`afb.transport.pacer`), which yields and throttles a flood (an
  OPEN counts :data:`~afb.transport.pacer.OPEN_UNITS`);
* a message holds at most :data:`MAX_FRAMES_PER_MESSAGE` frames, PINGs get
  :data:`PONGS_PER_SECOND` answers at most;
* while the local sockets hold the session's ``up`` budget of the peer's
  data, it stops reading (:meth:`FrameReader.wait_for_local_sockets`);
* refusals it logs are rate-limited per tunnel.

What it uses of the session: the WebSocket ``ws``, ``streams`` and their
events (``Stream.on_data`` …), ``pacer``, ``up``, ``queue`` and
``queue_control``, ``new_stream``, ``refuse``, ``tokens``, ``close`` and
``teardown``, and the fields it keeps up to date: ``last_received``,
``rtt``, ``draining``, ``close_reason`` (``state_changed`` is set on GOAWAY).
ACK and RESUME go to ``session.resume`` (:mod:`afb.transport.resume`), and are
unknown frames for a tunnel that did not negotiate resumption.  :meth:`run`
returns when the WebSocket ends; the session then holds or tears down.
"""

import logging
import time

import gevent
from gevent.event import Event

from afb.codec import frames
from afb.codec.websocket import describe_close
from afb.errors import REP_GENERAL_FAILURE, AfbError, ProtocolError
from afb.monitor.counters import count
from afb.ratelog import LogLimiter
from afb.transport.pacer import MESSAGE_UNITS, OPEN_UNITS, Allowance

log = logging.getLogger(__name__)

#: After dispatching a message this large, the reader yields to the event loop
#: (see :meth:`FrameReader.run`: a zero timer, not ``gevent.sleep(0)``).
YIELD_AFTER = 64 * 1024
#: Most tunnel frames in one message.  The writer puts at most ~14,600 in a
#: batch (256 KiB of 18-byte WINDOW frames): a message with more is forged.
MAX_FRAMES_PER_MESSAGE = 16384
#: PONGs per second a flood of tunnel PINGs gets (and how many at once).
PONGS_PER_SECOND = 10
#: Seconds after our GOAWAY during which the peer's OPENs are still served: they
#: crossed it on the wire (a client sends none once it has read GOAWAY).
GOAWAY_GRACE = 5.0
#: Refused streams, unknown frames and the like: a few log lines per tunnel a minute.
_limited_log = LogLimiter(log, interval=60.0, burst=10)


class FrameReader:
    """The receiving half of a session (see the module doc)."""

    def __init__(self, session):
        self.session = session
        self.streams = session.streams        # the same dict, for the hot path
        self.paused = False                   # not reading: local sockets hold too much
        self.last_peer_id = 0                 # server: the newest stream the client opened
        self.link_lost = False                # the session dropped this WebSocket
        self.extra_units = 0                  # pacer units of this message's costly frames
        self._resume = None                   # the Event a paused reader waits on
        self._pongs = Allowance(PONGS_PER_SECOND, PONGS_PER_SECOND)
        self.handlers = {
            frames.WINDOW: self._window, frames.FIN: self._fin, frames.RST: self._reset,
            frames.PING: self._ping, frames.PONG: self._pong, frames.GOAWAY: self._goaway,
            frames.ACK: self._ack, frames.RESUME: self._resume_state,
        }
        if session.client:
            self.handlers.update({frames.OPEN: self._open_at_a_client,
                                  frames.OPEN_OK: self._open_ok,
                                  frames.OPEN_FAIL: self._open_failed, frames.TOKEN: self._token})
        else:
            self.handlers.update({frames.OPEN: self._open, frames.REFRESH: self._refresh})

    # --- the loop ------------------------------------------------------------------------

    def run(self):
        """Read and dispatch frames until the WebSocket closes (``session.run`` goes on).

        After a large message the reader waits for a zero timer, which fires
        only after the event loop has polled the sockets, so the relays hand
        the data to their apps and an interactive stream's bytes are read
        before the next message.  ``gevent.sleep(0)`` did not do that: it is a
        callback, and gevent runs the callbacks queued meanwhile in the same
        pass (it looks at the clock every 50 callbacks and stops after its 5 ms
        switch interval).  While the TLS socket always held the next message
        (the client behind a full-speed loopback download), the client at times
        went 12-20 ms without polling its sockets: an echo written by the app
        beside the download waited that long before afb read it (per-hop
        timestamps of the echo, three paired runs:
        that hop's p99 4.5-11.6 -> 0.9-3.9 ms; with a soak beside it, loaded echo
        p99 over idle +14.5 -> +8.6 ms, median of 5 interleaved runs;
        bench/qos, quiet, 7 rounds: download 1.00x, CPU per GiB 1.00x of the
        code before).
        """
        session = self.session
        ws = session.ws
        self.link_lost = False
        tick = session.pacer.tick
        up = session.up
        streams = self.streams
        handlers = self.handlers
        data = frames.DATA
        hub = gevent.get_hub()
        poll = hub.loop.timer(0.0)
        try:
            while True:
                message = ws.recv_message()
                if message is None:
                    session.close_reason = session.close_reason or "closed by peer (%s)" % (
                        describe_close(getattr(ws, "peer_close_code", None),
                                       getattr(ws, "peer_close_reason", "")))
                    break
                session.last_received = time.monotonic()
                count = 0
                for ftype, flags, stream_id, payload in frames.iter_frames(message):
                    count += 1
                    if count > MAX_FRAMES_PER_MESSAGE:
                        raise ProtocolError("more than %d frames in one message"
                                            % MAX_FRAMES_PER_MESSAGE)
                    if ftype == data:
                        stream = streams.get(stream_id)
                        if stream is not None:
                            self._data(stream, payload)
                        continue
                    handler = handlers.get(ftype)
                    if handler is None:
                        self._unknown(ftype, stream_id)
                    else:
                        handler(flags, stream_id, payload)
                tick(count + MESSAGE_UNITS + self.extra_units)
                self.extra_units = 0
                if up.exhausted:
                    self.wait_for_local_sockets()
                elif len(message) >= YIELD_AFTER:
                    hub.wait(poll)        # let the loop poll the sockets (see above)
        except AfbError as exc:
            session.close_reason = str(exc)
            log.warning("%s: %s; closing the tunnel", session.label, exc)
            session.close(exc.close_code, str(exc))
        except (OSError, EOFError) as exc:
            session.close_reason = session.close_reason or "connection lost: %s" % (
                exc or type(exc).__name__)
        finally:
            poll.close()

    def dispatch(self, ftype, flags, stream_id, payload):
        """Act on one frame, as :meth:`run` does (for callers with a single frame)."""
        if ftype == frames.DATA:
            stream = self.streams.get(stream_id)
            if stream is not None:
                self._data(stream, payload)
            return
        handler = self.handlers.get(ftype)
        if handler is None:
            self._unknown(ftype, stream_id)
        else:
            handler(flags, stream_id, payload)

    # --- stream frames ----------------------------------------------------------------

    def _data(self, stream, payload):
        try:
            stream.on_data(payload)
        except ProtocolError as exc:
            log.warning("%s: stream %d: %s", self.session.label, stream.id, exc)
            stream.reset(REP_GENERAL_FAILURE, str(exc))

    def _window(self, _flags, stream_id, payload):
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_window(frames.parse_window(payload))

    def _fin(self, _flags, stream_id, _payload):
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_fin()

    def _reset(self, _flags, stream_id, payload):
        """RST: the peer reset the stream (counted), with its code."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            count("resets")
            stream.on_reset(*frames.parse_reason(payload))

    def _open_failed(self, _flags, stream_id, payload):
        """OPEN_FAIL on a client: the stream ends with the destination's code."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_reset(*frames.parse_reason(payload))

    def _open_ok(self, _flags, stream_id, _payload):
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_open_result(None)

    def _open_at_a_client(self, _flags, stream_id, _payload):
        raise ProtocolError("OPEN for stream %d sent to a client" % stream_id)

    def _open(self, flags, stream_id, payload):
        """Server: a client opens a stream; refused here, or handed to ``on_open``."""
        session = self.session
        self.extra_units += OPEN_UNITS - 1
        if stream_id % 2 == 0 or stream_id <= self.last_peer_id:
            session.queue_control(frames.frame(frames.RST, stream_id, frames.rst_payload(
                REP_GENERAL_FAILURE, "stream id %d is not new and odd" % stream_id)))
            _limited_log.warning(session.label, "refused OPEN with a bad stream id",
                                 "%s: refused OPEN with reused or even stream id %d",
                                 session.label, stream_id)
            return
        self.last_peer_id = stream_id
        try:
            command, host, port, early = frames.parse_open(payload)
        except AfbError as exc:
            session.queue(stream_id, frames.OPEN_FAIL,
                          frames.open_fail_payload(exc.reply, str(exc)))
            _limited_log.warning(session.label, "bad OPEN", "%s: bad OPEN on stream %d: %s",
                                 session.label, stream_id, exc)
            return
        stream = session.new_stream(stream_id, host, port)
        stream.reply_later = bool(flags & frames.FLAG_NO_WAIT)
        refusal = self._refusal(stream)
        if refusal is not None:
            session.refuse(stream, refusal)
            _limited_log.warning(session.label, "refused stream", "%s: refused stream to %s: %s",
                                 session.label, stream.target, refusal)
            return
        if early:
            stream.on_data(early)
        session.on_open(session, stream, command)   # must not block: it spawns what may

    def _refusal(self, stream):
        """Why the new ``stream`` may not open (an AfbError), or None."""
        session = self.session
        late = session.draining and time.monotonic() - session.goaway_sent > GOAWAY_GRACE
        if late:
            return AfbError("server is shutting down")
        if len(self.streams) > session.max_streams:
            count("limit_hits")
            return AfbError("too many streams (limit %d)" % session.max_streams)
        if session.admit is not None:
            try:
                session.admit(session, stream)
            except AfbError as exc:
                count("limit_hits")
                return exc
        return None

    def _unknown(self, ftype, stream_id):
        session = self.session
        name = frames.frame_name(ftype)
        if stream_id == 0:
            _limited_log.warning(session.label, "unknown session frame",
                                 "%s: ignored unknown session frame type %s", session.label, name)
            return
        _limited_log.warning(session.label, "unknown frame", "%s: unknown frame type %s on "
                             "stream %d; resetting it", session.label, name, stream_id)
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.reset(REP_GENERAL_FAILURE, "unknown frame type %s" % name)
        else:
            session.queue_control(frames.frame(frames.RST, stream_id, frames.rst_payload(
                REP_GENERAL_FAILURE, "unknown frame type %s" % name)))

    def _ack(self, flags, stream_id, payload):
        resume = self.session.resume
        if resume is None or stream_id == 0:
            self._unknown(frames.ACK, stream_id)
        else:
            resume.on_ack(flags, stream_id, payload)

    def _resume_state(self, flags, stream_id, payload):
        resume = self.session.resume
        if resume is None or stream_id != 0:
            self._unknown(frames.RESUME, stream_id)
        else:
            resume.on_state(flags, stream_id, payload)

    # --- session frames ---------------------------------------------------------------

    def _ping(self, _flags, _stream_id, payload):
        if self._pongs.allow():          # a flood gets PONGS_PER_SECOND answers
            self.session.queue_control(frames.frame(frames.PONG, 0, payload))

    def _pong(self, _flags, _stream_id, payload):
        self.session.rtt = max(0, time.monotonic_ns() - frames.parse_ping(payload)) / 1e9

    def _refresh(self, _flags, _stream_id, _payload):
        self.session.tokens.on_refresh_frame()

    def _token(self, _flags, _stream_id, payload):
        self.session.tokens.on_token_frame(payload)

    def _goaway(self, _flags, _stream_id, payload):
        session = self.session
        _last, code, message = frames.parse_goaway(payload)
        log.info("%s: peer is going away (%s); no new streams on this tunnel",
                 session.label, message or code)
        session.draining = True
        session.state_changed.set()

    # --- back-pressure on the peer ------------------------------------------------------

    def wait_for_local_sockets(self):
        """Stop reading the peer while our local sockets hold too much of its data.

        The data waits in the kernel instead, and TCP slows the peer down; the
        relays wake us once they have written half the budget away.  Not
        hearing the peer meanwhile is our doing: the pinger does not count it.
        """
        session = self.session
        self.paused = True
        started = time.monotonic()
        try:
            while session.up.exhausted and not session.closed and not self.link_lost:
                event = self._resume = Event()
                session.up.wait(event.set)
                event.wait()
                session.up.forget(event.set)
        finally:
            self._resume = None
            self.paused = False
            session.last_received = time.monotonic()
        log.debug("%s: reading paused %.3f s for local sockets to take %d bytes", session.label,
                  time.monotonic() - started, session.up.used)

    def wake(self):
        """The session is closing: a paused reader returns."""
        if self._resume is not None:
            self._resume.set()
