"""Session resumption on the wire, sans-IO: the HELLO extension, RESUME, ACK, the proof.

A tunnel whose WebSocket dies can be *resumed* on a new one: its streams go
on byte-exact, their apps see nothing (:mod:`afb.transport.resume`).  This
module holds the pure parts.

**Negotiation.**  HELLO has always ignored trailing bytes ("later versions may
append fields"), so the protocol version stays 1 and the capability rides
behind the HELLO payload as an extension::

    "RSM1" | kind 8 | fields of the kind

* ``OFFER`` (client, new tunnel): nothing more -- "I can resume".
* ``GRANT`` (server's answer): ``grace_ms 32 | secret 32`` and, when the
  client had asked to resume and was refused, the reason (UTF-8).
* ``REQUEST`` (client, resuming): ``generation 32 | nonce 16 | proof 32``;
  the HELLO's session id field is the server's id of the tunnel to resume.
* ``RESUMED`` (server): ``grace_ms 32``; a RESUME frame follows.

An old peer sends no extension and ignores ours: no resumption, nothing
else changes.  A client asking an old (or ``resume_grace = 0``) server to
resume gets a plain HELLO back: a new tunnel, and its old streams reset.

**Proof.**  The server's secret never travels again after GRANT: the client
proves it knows it with ``HMAC-SHA256(key, "afb resume v1" | sid |
generation | nonce | binding)``, where ``key = HMAC(secret, binding of the
tunnel's first link)`` and ``binding`` is the channel binding of a link: the
E2E handshake's transcript hash (so with E2E the proof is bound to the keys
of both links) or else SHA-256 of the token of its upgrade.  The server also
requires the same token subject, and a ``generation`` above the last one it
accepted (a proof cannot be replayed).

**Frames.**  ``ACK`` (stream frame, only when resumption was negotiated):
``received 64`` -- the receiver holds every byte below this offset (its
local socket took it, or it waits in the session's memory), so the sender
may free them; flag :data:`FLAG_FIN`: the FIN arrived too.  WINDOW could not
carry it: its increments mix consumed bytes with window growth, so the
sender cannot turn credit into an offset; and it leaves only after half a
window, too late for a sender whose kept bytes count on its budget.  ``RESUME`` (stream 0, each side
once per new link): ``last_id 32 | count 32 | count x (id 32 | received 64 |
limit 64 | flags 8)``, split over several frames (:data:`FLAG_MORE`) when
large; ``limit`` is the offset the sender may send up to (received + the
credit left), so credit lost with the old link's WINDOW frames comes back.
"""

import hashlib
import hmac
import struct

from afb.errors import ProtocolError

TAG = b"RSM1"
OFFER, GRANT, REQUEST, RESUMED = 1, 2, 3, 4
SECRET_SIZE = 32
NONCE_SIZE = 16
PROOF_SIZE = 32

_KIND = struct.Struct("!4sB")
_GRANT = struct.Struct("!I32s")
_REQUEST = struct.Struct("!I16s32s")
_U32 = struct.Struct("!I")
_ACK = struct.Struct("!Q")
_STATE_HEAD = struct.Struct("!II")
_ENTRY = struct.Struct("!IQQB")
ENTRY_SIZE = _ENTRY.size

#: ACK flag: the FIN was received (every byte before it too).
FLAG_FIN = 0x01
#: RESUME flag: more RESUME frames follow for this link.
FLAG_MORE = 0x01
#: RESUME entry flags: we received the peer's FIN; (server) the destination is
#: connected and OPEN_OK was queued.
STATE_FIN = 0x01
STATE_ACCEPTED = 0x02


class HelloExt:
    """The resume extension of one HELLO (``kind`` and its fields)."""

    __slots__ = ("kind", "grace", "secret", "reason", "generation", "nonce", "proof")

    def __init__(self, kind, grace=0.0, secret=b"", reason="", generation=0, nonce=b"",
                 proof=b""):
        self.kind = kind
        self.grace = grace
        self.secret = secret
        self.reason = reason
        self.generation = generation
        self.nonce = nonce
        self.proof = proof

    def __repr__(self):
        return "<HelloExt kind=%d>" % self.kind


def offer():
    return _KIND.pack(TAG, OFFER)


def grant(grace, secret, reason=""):
    return _KIND.pack(TAG, GRANT) + _GRANT.pack(_ms(grace), secret) + \
        reason.encode("utf-8", "replace")[:200]


def request(generation, nonce, proof):
    return _KIND.pack(TAG, REQUEST) + _REQUEST.pack(generation, nonce, proof)


def resumed(grace):
    return _KIND.pack(TAG, RESUMED) + _U32.pack(_ms(grace))


def _ms(seconds):
    return max(0, min(int(seconds * 1000), 0xFFFFFFFF))


def parse_ext(trailer):
    """The :class:`HelloExt` in the bytes after a HELLO's fixed part, or None (none, or
    one of a later kind this version does not know: no resumption)."""
    trailer = bytes(trailer)
    if len(trailer) < _KIND.size or trailer[:4] != TAG:
        return None
    kind = trailer[4]
    body = trailer[_KIND.size:]
    try:
        if kind == OFFER:
            return HelloExt(OFFER)
        if kind == GRANT:
            grace, secret = _GRANT.unpack_from(body)
            reason = body[_GRANT.size:].decode("utf-8", "replace")
            return HelloExt(GRANT, grace / 1000.0, secret, reason)
        if kind == REQUEST:
            generation, nonce, proof = _REQUEST.unpack_from(body)
            return HelloExt(REQUEST, generation=generation, nonce=nonce, proof=proof)
        if kind == RESUMED:
            return HelloExt(RESUMED, _U32.unpack_from(body)[0] / 1000.0)
    except struct.error:
        raise ProtocolError("truncated resume extension in HELLO (kind %d)" % kind) from None
    return None


# --- the proof -----------------------------------------------------------------

def resume_key(secret, first_binding):
    """The key proofs are made with: the server's secret bound to the first link."""
    return hmac.new(secret, b"afb resume key" + first_binding, hashlib.sha256).digest()


def proof(key, session_id, generation, nonce, binding):
    """The client's proof that it holds ``key``, for this request on this link."""
    message = b"afb resume v1" + bytes(session_id) + _U32.pack(generation) + bytes(nonce) + \
        bytes(binding)
    return hmac.new(key, message, hashlib.sha256).digest()


def check_proof(key, session_id, ext, binding):
    return hmac.compare_digest(proof(key, session_id, ext.generation, ext.nonce, binding),
                               bytes(ext.proof))


# --- ACK and RESUME ----------------------------------------------------------------

def ack_payload(received):
    return _ACK.pack(received)


def parse_ack(payload):
    if len(payload) != _ACK.size:
        raise ProtocolError("ACK payload of %d bytes" % len(payload))
    return _ACK.unpack_from(payload)[0]


def state_payloads(last_id, entries, max_payload):
    """RESUME payloads for ``entries`` ``(id, received, limit, flags)``: at least one,
    each at most ``max_payload`` bytes."""
    per = max(1, (max_payload - _STATE_HEAD.size) // ENTRY_SIZE)
    entries = list(entries)
    payloads = []
    for start in range(0, max(len(entries), 1), per):
        chunk = entries[start:start + per]
        payloads.append(_STATE_HEAD.pack(last_id, len(chunk)) +
                        b"".join(_ENTRY.pack(*entry) for entry in chunk))
    return payloads


def parse_state(payload):
    """``(last_id, [(id, received, limit, flags), ...])`` of one RESUME payload."""
    if len(payload) < _STATE_HEAD.size:
        raise ProtocolError("RESUME payload of %d bytes" % len(payload))
    last_id, count = _STATE_HEAD.unpack_from(payload)
    if len(payload) != _STATE_HEAD.size + count * ENTRY_SIZE:
        raise ProtocolError("RESUME with %d entries in %d bytes" % (count, len(payload)))
    return last_id, [_ENTRY.unpack_from(payload, _STATE_HEAD.size + i * ENTRY_SIZE)
                     for i in range(count)]
