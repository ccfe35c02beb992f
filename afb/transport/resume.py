"""Tunnels that outlive their WebSocket: holding a session, and resuming it on a new one.

On filtered networks long connections are reset on purpose and mobile links
change address; without this, every open stream died with the WebSocket.
When both ends negotiated it in HELLO (:mod:`afb.codec.resume`; ``[tunnel]
resume_grace`` > 0 on both), a :class:`Resumption` belongs to the session
(``session.resume``) and:

* **while linked**, every stream keeps the DATA its peer has not acknowledged
  (:class:`~afb.mux.resend.Unacked`: at most one window per stream, charged
  to the tunnel's ``max_buffer``), and acknowledges what it received: at FIN
  at once, else within :data:`ACK_DELAY`, one ACK per stream that received
  data meanwhile.  Not with WINDOW alone: credit goes back after half a
  window, and the sender, whose kept bytes count on its budget, could wait
  for an ACK that never comes (200 streams of 4 MiB each way stalled so).  A
  stream that ended both ways *lingers* here until its last bytes and FIN are
  acknowledged (at most :data:`MAX_LINGERING` per tunnel), so that a cut
  right after the end loses nothing either.
* **when the WebSocket dies** without a close frame (reset, timeout, a dead
  link found by the pinger), :meth:`Resumption.hold` keeps the session: its
  streams, their local sockets (the server's destination sockets stay
  connected; their relays read only while credit is left, and keep what they
  read: nothing beyond the window) and the budgets.  The session is
  *holding*: DATA is kept, not queued.  A close frame from the peer, a
  protocol error or our own ``close()`` still end the tunnel at once.
* **on a new WebSocket** (the client dials again at once and sends a resume
  request; the server checks it, :mod:`afb.transport.resume_table`),
  :meth:`Resumption.attach` swaps the WebSocket and the writer, drops what was
  queued for the dead one, and sends RESUME: per stream, the offset received
  and the offset the peer may send up to.  :meth:`Resumption.on_state`
  reconciles with the peer's RESUME: DATA again from the offset the peer
  received, FIN again if it did not arrive, the credit the peer's limit
  leaves, an OPEN again if the server never saw it (its id is above the last
  one the server saw), OPEN_OK taken from the server's state; a stream the
  peer no longer has was reset there (its RST was lost) and is reset here.
* **after ``resume_grace``** without a new WebSocket, the session ends as
  before: every stream reset, the apps see a clean error.

The reader and the writer know nothing of this beyond the ACK and RESUME
frames they hand over; what this module uses of the session: ``ws``,
``writer`` (and ``install_writer``), ``streams``, ``holding``, ``queue``,
``client``, ``reader.last_peer_id``, ``peer_window``, ``state_changed``.
"""

import logging
import os
import time

import gevent
from gevent.event import Event

from afb import PROTOCOL_VERSION
from afb.codec import frames
from afb.codec import resume as wire
from afb.errors import CLOSE_NORMAL, REP_GENERAL_FAILURE, AfbError, ProtocolError

log = logging.getLogger(__name__)

#: Seconds a receiver waits before acknowledging: the ACKs of all streams that got
#: data meanwhile leave together (18 bytes each).  What a sender keeps in flight
#: per tunnel is bounded by max_buffer, so it can move at most max_buffer per
#: (ACK_DELAY + round trip): 8 MiB per 20 ms on loopback, 35 MiB/s at 200 ms.
ACK_DELAY = 0.02
#: ACK frames per control blob (a blob must fit in the smallest message).
ACKS_PER_BLOB = 256
#: Streams ended both ways whose last bytes await an ACK, per tunnel.  Each
#: holds at most one window; a peer that never acknowledges makes the oldest go.
MAX_LINGERING = 1024


class Resumption:
    """A session's resumption state (see the module doc)."""

    def __init__(self, session, secret, grace, first_binding):
        self.session = session
        self.key = wire.resume_key(secret, first_binding)
        self.grace = grace
        self.generation = 0        # server: the last accepted; client: the last sent
        self.lingering = {}        # stream id -> Stream ended both ways, not all acked
        self.relinked = Event()    # a new WebSocket is attached (or the session closes)
        self.detached = Event()    # set while holding
        self.link_ended = Event()  # the current WebSocket's reader returned
        self.synced = Event()      # the peer's RESUME was acted on (new streams may come)
        self.synced.set()
        self.detached_at = None
        self.resumes = 0           # links attached after the first
        self.last_gap = 0.0        # seconds without a WebSocket, last time
        self._peer_entries = []    # RESUME entries of the peer gathered so far
        self._awaiting = False     # a new link's RESUME from the peer is due
        self._to_ack = {}          # stream id -> Stream that received data since the last ACK
        self._ack_timer = None

    # --- while linked -------------------------------------------------------------

    def linger(self, stream):
        """``stream`` left the session's table: if it ended both ways, keep it until the
        peer acknowledged all of it; if it was reset, forget what it kept."""
        if stream.reset_error is not None or stream.sent.done:
            stream.sent.clear()
            return
        lingering = self.lingering
        if len(lingering) >= MAX_LINGERING:
            self._unlinger(next(iter(lingering)))
        lingering[stream.id] = stream

    def _unlinger(self, stream_id):
        stream = self.lingering.pop(stream_id, None)
        if stream is not None:
            stream.sent.clear()

    def end(self):
        """The session ended: what lingering streams kept is released."""
        for stream_id in list(self.lingering):
            self._unlinger(stream_id)
        if self._ack_timer is not None:
            self._ack_timer.close()
        self._to_ack = {}
        self.link_ended.set()

    def ack_soon(self, stream):
        """``stream`` received data: acknowledge it with the others in ACK_DELAY."""
        to_ack = self._to_ack
        if stream.id not in to_ack:
            to_ack[stream.id] = stream
            timer = self._ack_timer
            if timer is None:
                timer = self._ack_timer = gevent.get_hub().loop.timer(ACK_DELAY)
            if not timer.active:
                timer.start(self._send_acks)

    def _send_acks(self):
        to_ack, self._to_ack = self._to_ack, {}
        session = self.session
        if session.closed:
            return
        acks = [frames.frame(frames.ACK, stream.id, wire.ack_payload(stream.window.received))
                for stream in to_ack.values() if stream.reset_error is None]
        for start in range(0, len(acks), ACKS_PER_BLOB):
            session.queue_control(b"".join(acks[start:start + ACKS_PER_BLOB]))

    def on_ack(self, flags, stream_id, payload):
        """ACK from the peer: free what it holds."""
        offset = wire.parse_ack(payload)
        stream = self.session.streams.get(stream_id) or self.lingering.get(stream_id)
        if stream is None or stream.sent is None:
            return
        stream.sent.ack(offset)
        if flags & wire.FLAG_FIN and stream.local_fin and offset == stream.sent.end:
            stream.sent.fin_acked = True
        if stream.sent.done:
            self._unlinger(stream_id)

    # --- the WebSocket died -------------------------------------------------------------

    def hold(self):
        """After the reader's last message: keep the session for a new WebSocket.

        True once one is attached; False (the session ends) when the tunnel was
        closed on purpose, or ``grace`` passed first.
        """
        session = self.session
        ws = session.ws
        if session.closed or self.grace <= 0 or getattr(ws, "peer_close_code", None) is not None:
            return False
        session.holding = True
        self.synced.clear()
        self.detached_at = time.monotonic()
        self.relinked.clear()
        self.detached.set()
        self.link_ended.set()
        reason = session.close_reason or "connection lost"
        abort(ws)
        session.writer.close()
        log.info("%s: WebSocket lost (%s); holding %d streams up to %.0f s for a resume",
                 session.label, reason, len(session.streams), self.grace)
        session.state_changed.set()
        if not self.relinked.wait(self.grace) or session.closed:
            if not session.closed:
                session.close_reason = "WebSocket lost (%s) and not resumed within %.0f s" % (
                    reason, self.grace)
            return False
        return True

    def give_up(self, reason):
        """Client: the server could not resume us: end the session with ``reason``."""
        session = self.session
        session.close_reason = "WebSocket lost and the server could not resume the tunnel: %s" \
            % reason
        session.close()

    # --- a new WebSocket ---------------------------------------------------------------

    def request_hello(self, binding):
        """Client: the HELLO that asks the server to resume this session on a new link."""
        session = self.session
        self.generation += 1
        nonce = os.urandom(wire.NONCE_SIZE)
        sid = session.peer_session_id
        proof = wire.proof(self.key, sid, self.generation, nonce, binding)
        return frames.frame(frames.HELLO, 0, frames.hello_payload(
            PROTOCOL_VERSION, session.window, session.max_message, sid) +
            wire.request(self.generation, nonce, proof))

    def attach(self, ws):
        """Put ``ws`` in place of the dead WebSocket and send our RESUME state.

        Returns the Event set when this link ends, or None if sending failed
        (``ws`` is closed; the session keeps holding).
        """
        session = self.session
        session.writer.sched.clear()        # what was queued for the dead link: see on_state
        session.ws = ws
        ws.pacer = session.pacer
        session.install_writer(ws)
        entries = self._entries()
        last_id = session.reader.last_peer_id
        payloads = wire.state_payloads(last_id, entries, min(session.max_message // 2, 1 << 18))
        try:
            for i, payload in enumerate(payloads):
                more = wire.FLAG_MORE if i < len(payloads) - 1 else 0
                ws.send_message([frames.frame(frames.RESUME, 0, payload, more)])
        except (OSError, AfbError) as exc:
            log.info("%s: resumed WebSocket failed at once: %s", session.label, exc)
            abort(ws)
            return None
        if session.closed:          # the grace ran out while we sent
            abort(ws)
            return None
        self.link_ended = Event()
        self._peer_entries = []
        self._awaiting = True
        self.detached.clear()
        self.resumes += 1
        self.last_gap = time.monotonic() - (self.detached_at or time.monotonic())
        session.close_reason = ""
        session.last_received = time.monotonic()
        session.state_changed.clear()
        session.start_writer()
        log.info("%s: resumed on a new WebSocket after %.2f s (%d streams)", session.label,
                 self.last_gap, len(session.streams))
        self.relinked.set()
        return self.link_ended

    def _entries(self):
        """Our RESUME entries: per stream (lingering ones too), what we received."""
        client = self.session.client
        entries = []
        for streams in (self.session.streams, self.lingering):
            for stream in streams.values():
                flags = wire.STATE_FIN if stream.remote_fin else 0
                if not client and stream.sink is not None and stream.reset_error is None:
                    flags |= wire.STATE_ACCEPTED
                window = stream.window
                entries.append((stream.id, window.received, window.limit, flags))
        return entries

    def on_state(self, flags, _stream_id, payload):
        """The peer's RESUME: once complete, send again what it lacks (module doc)."""
        if not self._awaiting:
            raise ProtocolError("RESUME outside the start of a resumed WebSocket")
        last_id, entries = wire.parse_state(payload)
        self._peer_entries.extend(entries)
        if flags & wire.FLAG_MORE:
            if len(self._peer_entries) > 4 * self.session.max_streams + MAX_LINGERING:
                raise ProtocolError("RESUME lists more streams than a tunnel may have")
            return
        peer = {entry[0]: entry[1:] for entry in self._peer_entries}
        self._peer_entries = []
        self._awaiting = False
        self._reconcile(peer, last_id)

    def _reconcile(self, peer, last_id):
        session = self.session
        streams, lingering = session.streams, self.lingering
        for stream_id in sorted(set(streams) | set(lingering)):
            stream = streams.get(stream_id) or lingering.get(stream_id)
            entry = peer.get(stream_id)
            try:
                if entry is not None:
                    self._resend(stream, *entry)
                elif session.client and stream_id > last_id and stream_id in streams:
                    # The server never saw its OPEN: open it again, all its data after.
                    session.queue(stream_id, frames.OPEN, frames.open_payload(
                        stream.command, stream.host, stream.port), wake=False)
                    self._resend(stream, 0, session.peer_window, 0)
                elif stream_id in lingering:
                    self._unlinger(stream_id)       # the peer has it all: it forgot it
                else:       # the peer reset it and its RST was lost with the old link
                    stream.on_reset(REP_GENERAL_FAILURE, "stream lost with the tunnel's "
                                    "WebSocket (reset by the peer meanwhile)")
            except ProtocolError as exc:
                log.warning("%s: stream %d cannot resume: %s", session.label, stream_id, exc)
                self._unlinger(stream_id)
                if stream.reset_error is None and stream_id in streams:
                    stream.reset(REP_GENERAL_FAILURE, str(exc))
        session.holding = False
        self.synced.set()
        for stream in list(streams.values()):
            if stream.sink is not None:
                stream.sink.credit_available()
        session.writer.wake()

    def _resend(self, stream, received, limit, flags):
        """DATA from ``received`` on, the FIN if it was lost, and the credit ``limit`` leaves."""
        session = self.session
        sent = stream.sent
        for chunk in sent.since(received):
            session.queue(stream.id, frames.DATA, chunk, wake=False)
        stream.credit.reset_to(limit - sent.end)
        if stream.local_fin:
            if flags & wire.STATE_FIN:
                sent.fin_acked = True
            else:
                session.queue(stream.id, frames.FIN, wake=False)
        if sent.done:
            self._unlinger(stream.id)
        if session.client and flags & wire.STATE_ACCEPTED:
            stream.on_open_result(None)


def ask_to_resume(ws, held, binding, timeout):
    """Client: ask the server to resume ``held`` on the new ``ws``.  None once it did;
    else the server's answer (the HELLO of a new tunnel), ``held`` ended with its reason."""
    try:
        with gevent.Timeout(timeout, ProtocolError(
                "no answer to the resume request within %.0f s" % timeout)):
            ws.send_message([held.resume.request_hello(binding)])
            first = ws.recv_message()
        if first is None:
            raise ProtocolError("server closed during the handshake (%s)" % (
                getattr(ws, "peer_close_reason", "") or "no reason"))
    except BaseException:
        ws.close()
        raise
    try:
        ext = wire.parse_ext(frames.hello_trailer(frames.first_hello(first)))
    except AfbError:
        ext = None          # not a HELLO: the handshake of a new session says so
    if ext is not None and ext.kind == wire.RESUMED:
        if held.closed or held.resume.attach(ws) is None:
            ws.close(CLOSE_NORMAL, "tunnel ended meanwhile")
            raise ProtocolError("the held tunnel ended while it was being resumed")
        return None
    reason = ext.reason if ext is not None and ext.reason else \
        "the server does not resume tunnels (resume_grace = 0, or an older version)"
    log.warning("%s: cannot resume: %s; its streams are reset", held.label, reason)
    held.resume.give_up(reason)
    return first


def abort(ws):
    """Close ``ws`` without a close frame (the peer must not take it for a deliberate
    close) and without waiting on a link that may be dead."""
    method = getattr(ws, "abort", None)
    try:
        if method is not None:
            method()
        else:
            ws.close()
    except (OSError, AfbError):
        pass
