"""The server's resumable tunnels, by session id, and what a resume request must prove.

A client whose WebSocket died dials again and opens the new one with a HELLO
asking to resume (:mod:`afb.codec.resume`).  :meth:`ResumeTable.resume` finds
the session, checks the request -- the same token subject, a ``generation``
above the last one accepted, the HMAC proof bound to the new link -- drops
the session's old WebSocket if the server still thought it alive (a client
that changed address is back before the ping timeout found the old one
dead), answers RESUMED and attaches the new WebSocket.  The greenlet of the
new upgrade then lives as long as its link (the WebSocket server closes the
connection when it returns); the session's own greenlet reads it.

**Several nodes.**  A resumed tunnel needs its destination sockets, which
live in the process that dialled them and cannot move: a request that lands
on another node (behind HAProxy, another process) is refused -- cleanly: the
refusal rides in the HELLO of a new tunnel on the same WebSocket (no extra
round trip), the client resets the old streams with the reason and carries
on with the new tunnel.  ``balance source`` (or a stick table on the client
address) in HAProxy keeps a client on its node, which makes resumption work
behind it as long as the address stays; nothing needs the shared store.
"""

import hashlib
import logging

import gevent

from afb import PROTOCOL_VERSION
from afb.codec import frames
from afb.codec import resume as wire
from afb.errors import CLOSE_GOING_AWAY, AfbError

log = logging.getLogger(__name__)

#: Seconds to wait for a session's old WebSocket to be let go before attaching.
DETACH_TIMEOUT = 5.0


class ResumeTable:
    """Resumable sessions of this server; see the module doc."""

    def __init__(self):
        self.sessions = {}      # session id -> Session
        self.accepted = 0       # resumes accepted ...
        self.refused = 0        # ... and refused, since the start

    def __len__(self):
        return len(self.sessions)

    def add(self, session):
        if session.resume is not None:
            self.sessions[session.session_id] = session

    def holds(self, user):
        """Whether a tunnel of ``user`` waits for a resume (its tunnel limit lets that in)."""
        return any(session.detached and session.claims.get("sub") == user
                   for session in self.sessions.values())

    def remove(self, session):
        if self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]

    @staticmethod
    def request_in(message):
        """The resume request (``(session id, HelloExt)``) a first message carries, or None."""
        try:
            payload = frames.first_hello(message)
            sid = frames.parse_hello(payload, PROTOCOL_VERSION)[3]
            ext = wire.parse_ext(frames.hello_trailer(payload))
        except AfbError:
            return None         # the handshake proper says what is wrong with it
        if ext is None or ext.kind != wire.REQUEST:
            return None
        return sid, ext

    def resume(self, ws, request, claims, binding, label, on_accept=None):
        """Resume the session ``request`` names on ``ws``: "" once its link ended, or why
        not (the caller then opens a new tunnel on ``ws`` and tells the client).
        ``on_accept()``: called once the request is accepted."""
        sid, ext = request
        session = self.sessions.get(sid)
        reason = self._refusal(session, sid, ext, claims, binding)
        if not reason and not session.detached:
            session.drop_link("replaced by a resumed WebSocket")
            if not session.resume.detached.wait(DETACH_TIMEOUT) or session.closed:
                reason = "the tunnel's old WebSocket could not be let go"
        if reason:
            self.refused += 1
            log.info("%s: resume refused: %s", label, reason,
                     extra={"event": "resume_refused", "user": claims.get("sub")})
            return reason
        session.resume.generation = ext.generation
        if on_accept is not None:
            on_accept()
        hello = frames.frame(frames.HELLO, 0, frames.hello_payload(
            PROTOCOL_VERSION, session.window, session.max_message, session.session_id) +
            wire.resumed(session.resume.grace))
        try:
            ws.send_message([hello])
        except (OSError, AfbError) as exc:
            return "the new WebSocket failed at once: %s" % exc
        ended = session.resume.attach(ws)
        if ended is None:
            return ""
        self.accepted += 1
        ended.wait()
        return ""

    def _refusal(self, session, sid, ext, claims, binding):
        if session is None or session.closed:
            return "no such tunnel on this server (it ended, its resume_grace passed, " \
                "or another server holds it)"
        if session.claims.get("sub") != claims.get("sub"):
            return "the tunnel belongs to another user"
        if ext.generation <= session.resume.generation:
            return "replayed resume request"
        if not wire.check_proof(session.resume.key, sid, ext, binding):
            return "wrong resume proof"
        return ""


def link_binding(ws, token):
    """The channel binding of a tunnel's WebSocket, which resume proofs are bound to:
    the E2E transcript hash, else SHA-256 of the upgrade's token."""
    return getattr(ws, "transcript_hash", None) or hashlib.sha256((token or "").encode()).digest()


def first_message(ws, timeout, label):
    """The client's first message (its HELLO, maybe a resume request), or None (one log
    line; the WebSocket is closed)."""
    try:
        with gevent.Timeout(timeout, AfbError("no HELLO within %.0f s" % timeout)):
            message = ws.recv_message()
    except (AfbError, OSError) as exc:
        log.warning("%s: handshake failed: %s", label, exc)
        ws.close(getattr(exc, "close_code", CLOSE_GOING_AWAY), str(exc))
        return None
    if message is None:     # e.g. a client whose pinned E2E key is not ours: its reason says so
        log.warning("%s: handshake failed: peer closed during the handshake (%s)", label,
                    getattr(ws, "peer_close_reason", "") or "no reason")
    return message
