"""How frames arrive in a tunnel session: the reader and what it does with each frame.

Mixed into :class:`~afb.transport.session.Session` (the sending half is
:mod:`afb.transport.frame_writer`).  ``run()`` reads one WebSocket message at
a time in the caller's greenlet and dispatches its frames to the streams;
the server learns of new streams through ``on_open``.  It never blocks on a
write (answers are queued for the writer), and it bounds what a peer can
make it do:

* every message and frame counts on the session's pacer
  (:mod:`afb.transport.pacer`), which yields and throttles a flood;
* a message holds at most :data:`MAX_FRAMES_PER_MESSAGE` frames, PINGs get
  :data:`PONGS_PER_SECOND` answers at most;
* while the local sockets hold the session's ``up`` budget of the peer's
  data, it stops reading (:meth:`FrameReader._wait_for_local_sockets`);
* refusals it logs are rate-limited per tunnel.
"""

import logging
import time

import gevent
from gevent.event import Event

from afb.codec import frames
from afb.codec.websocket import describe_close
from afb.errors import REP_GENERAL_FAILURE, AfbError, ProtocolError
from afb.ratelog import LogLimiter
from afb.transport.pacer import MESSAGE_UNITS

log = logging.getLogger(__name__)

#: After dispatching a message this large, the reader yields to the streams.
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

    def run(self):
        """Read and dispatch frames until the WebSocket closes; then clean up."""
        tick = self.pacer.tick
        up = self.up
        try:
            while True:
                message = self.ws.recv_message()
                if message is None:
                    self.close_reason = self.close_reason or "closed by peer (%s)" % describe_close(
                        getattr(self.ws, "peer_close_code", None),
                        getattr(self.ws, "peer_close_reason", ""))
                    break
                self.last_received = time.monotonic()
                count = 0
                for ftype, flags, stream_id, payload in frames.iter_frames(message):
                    count += 1
                    if count > MAX_FRAMES_PER_MESSAGE:
                        raise ProtocolError("more than %d frames in one message"
                                            % MAX_FRAMES_PER_MESSAGE)
                    self._dispatch(ftype, flags, stream_id, payload)
                tick(count + MESSAGE_UNITS)
                if up.exhausted:
                    self._wait_for_local_sockets()
                elif len(message) >= YIELD_AFTER:
                    # Let the streams hand this to their apps before reading on.
                    gevent.sleep(0)
        except AfbError as exc:
            self.close_reason = str(exc)
            log.warning("%s: %s; closing the tunnel", self.label, exc)
            self.close(exc.close_code, str(exc))
        except (OSError, EOFError) as exc:
            self.close_reason = self.close_reason or "connection lost: %s" % (exc or type(exc).__name__)
        finally:
            self._teardown()

    def _dispatch(self, ftype, flags, stream_id, payload):
        if ftype == frames.DATA:
            stream = self.streams.get(stream_id)
            if stream is not None:
                try:
                    stream._on_data(payload)
                except ProtocolError as exc:
                    log.warning("%s: stream %d: %s", self.label, stream_id, exc)
                    stream.reset(REP_GENERAL_FAILURE, str(exc))
            return
        if ftype == frames.WINDOW:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream._on_window(frames.parse_window(payload))
        elif ftype == frames.OPEN:
            self._on_open_frame(stream_id, payload, flags)
        elif ftype == frames.FIN:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream._on_fin()
        elif ftype == frames.RST:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream._on_reset(*frames.parse_reason(payload))
        elif ftype == frames.OPEN_OK and self.client:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream._on_open_result(None)
        elif ftype == frames.OPEN_FAIL and self.client:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream._on_reset(*frames.parse_reason(payload))
        elif ftype == frames.PING:
            if self._pongs.allow():      # a flood gets PONGS_PER_SECOND answers
                self._queue_control(frames.frame(frames.PONG, 0, payload))
        elif ftype == frames.PONG:
            self.rtt = max(0, time.monotonic_ns() - frames.parse_ping(payload)) / 1e9
        elif ftype == frames.REFRESH and not self.client:
            self._on_refresh_frame()
        elif ftype == frames.TOKEN and self.client:
            request = self._token_request
            if request is not None and not request.ready():
                request.set(frames.parse_token(payload))
        elif ftype == frames.GOAWAY:
            last, code, message = frames.parse_goaway(payload)
            log.info("%s: peer is going away (%s); no new streams on this tunnel",
                     self.label, message or code)
            self.draining = True
            self.state_changed.set()
        else:
            self._on_unknown(ftype, stream_id)

    def _on_open_frame(self, stream_id, payload, flags=0):
        if self.client or self.on_open is None:
            raise ProtocolError("OPEN for stream %d sent to a client" % stream_id)
        if stream_id % 2 == 0 or stream_id <= self._last_peer_id:
            self._queue_control(frames.frame(frames.RST, stream_id, frames.rst_payload(
                REP_GENERAL_FAILURE, "stream id %d is not new and odd" % stream_id)))
            _limited_log.warning(self.label, "refused OPEN with a bad stream id",
                                 "%s: refused OPEN with reused or even stream id %d",
                                 self.label, stream_id)
            return
        self._last_peer_id = stream_id
        try:
            command, host, port, early = frames.parse_open(payload)
        except AfbError as exc:
            self._queue(stream_id, frames.OPEN_FAIL, frames.open_fail_payload(exc.reply, str(exc)))
            _limited_log.warning(self.label, "bad OPEN", "%s: bad OPEN on stream %d: %s",
                                 self.label, stream_id, exc)
            return
        stream = self._new_stream(stream_id, host, port)
        stream.reply_later = bool(flags & frames.FLAG_NO_WAIT)
        late = self.draining and time.monotonic() - self.goaway_sent > GOAWAY_GRACE
        if len(self.streams) > self.max_streams or late:
            reason = "server is shutting down" if late else \
                "too many streams (limit %d)" % self.max_streams
            self.refuse(stream, AfbError(reason))
            _limited_log.warning(self.label, "refused stream", "%s: refused stream to %s: %s",
                                 self.label, stream.target, reason)
            return
        if self.admit is not None:
            try:
                self.admit(self, stream)
            except AfbError as exc:
                self.refuse(stream, exc)
                _limited_log.warning(self.label, "refused stream", "%s: refused stream to %s: %s",
                                     self.label, stream.target, exc)
                return
        if early:
            stream._on_data(early)
        self.on_open(self, stream, command)   # must not block: it spawns what may

    def _on_unknown(self, ftype, stream_id):
        name = frames.frame_name(ftype)
        if stream_id == 0:
            _limited_log.warning(self.label, "unknown session frame",
                                 "%s: ignored unknown session frame type %s", self.label, name)
            return
        _limited_log.warning(self.label, "unknown frame", "%s: unknown frame type %s on stream "
                             "%d; resetting it", self.label, name, stream_id)
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.reset(REP_GENERAL_FAILURE, "unknown frame type %s" % name)
        else:
            self._queue_control(frames.frame(frames.RST, stream_id, frames.rst_payload(
                REP_GENERAL_FAILURE, "unknown frame type %s" % name)))

    def _wait_for_local_sockets(self):
        """Stop reading the peer while our local sockets hold too much of its data.

        The data waits in the kernel instead, and TCP slows the peer down; the
        relays wake us once they have written half the budget away.  Not
        hearing the peer meanwhile is our doing: the pinger does not count it.
        """
        self.reader_paused = True
        started = time.monotonic()
        try:
            while self.up.exhausted and not self.closed:
                event = self._resume_reader = Event()
                self.up.wait(event.set)
                event.wait()
                self.up.forget(event.set)
        finally:
            self._resume_reader = None
            self.reader_paused = False
            self.last_received = time.monotonic()
        log.debug("%s: reading paused %.3f s for local sockets to take %d bytes", self.label,
                  time.monotonic() - started, self.up.used)

