"""The E2E AEAD channel on a WebSocket: one sealed record per message (gevent).

:class:`SecureChannel` has the interface of
:class:`~afb.transport.wsconn.WsConnection` that the tunnel session uses
(``recv_message``, ``send_message(parts)``, ``close``, ``closed``, the peer's
close code and reason, byte counters), so the session runs unchanged on top of
it.  :func:`client_secure` and :func:`server_secure` run the handshake of
:mod:`afb.codec.aead` on a fresh WebSocket, right after the upgrade and before
the tunnel HELLO.

A record that fails to open closes the WebSocket with
:data:`~afb.codec.aead.CLOSE_E2E_FAILED` and raises
:class:`~afb.codec.aead.RecordError`.
"""

import functools

import gevent
from gevent.lock import RLock

from afb.codec import aead
from afb.errors import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_VERSION_MISMATCH,
    AfbError,
    AuthError,
    VersionMismatch,
)
from afb.transport.wsconn import MAX_HEADER


class _WsAttribute:
    """An attribute of a SecureChannel that is its WebSocket's (``channel.ws.<name>``)."""

    def __init__(self, settable=False):
        self.settable = settable
        self.name = None

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, channel, owner=None):
        if channel is None:
            return self
        return getattr(channel.ws, self.name)

    def __set__(self, channel, value):
        if not self.settable:
            raise AttributeError("%s is read-only" % self.name)
        setattr(channel.ws, self.name, value)


class SecureChannel:
    """A WebSocket whose messages are E2E records; see the module doc."""

    def __init__(self, ws, sealer, opener):
        self.ws = ws
        self.sealer = sealer
        self.opener = opener
        self.cipher = sealer.cipher
        # Records must leave in counter order, and the sealer's output buffer
        # is reused: seal and send under one lock.
        self._wlock = RLock()
        self._in_place = getattr(ws, "send_in_place", None)

    def __repr__(self):
        return "<SecureChannel %s over %r>" % (aead.cipher_name(self.cipher), self.ws)

    # --- the WsConnection interface ---------------------------------------------

    def recv_message(self):
        """The next plaintext message, or ``None`` once the WebSocket is closed.

        Like ``WsConnection.recv_message``: bytes, or for a large message a
        memoryview of a pooled buffer (keep it only as long as needed).
        """
        record = self.ws.recv_message()
        if record is None:
            return None
        try:
            return self.opener.open_view(record)
        except aead.RecordError as exc:
            self.ws.close(exc.close_code, str(exc))
            raise

    def send_message(self, parts):
        """Seal *parts* (one plaintext) into one record and send it as one message.

        On a WsConnection the record is sealed with room for the frame header in
        front and sent from the sealer's buffer as it is (no copy; a client's
        mask is applied in place).
        """
        with self._wlock:
            if self.ws.closed:
                raise BrokenPipeError("WebSocket connection is closed")
            if self._in_place is not None:
                self._in_place(self.sealer.seal_view(parts, MAX_HEADER), MAX_HEADER)
            else:
                self.ws.send_message([self.sealer.seal_view(parts)])

    def set_paced(self, paced):
        """See :meth:`WsConnection.set_paced`."""
        self.ws.set_paced(paced)

    def unsent(self):
        """See :meth:`WsConnection.unsent`."""
        return self.ws.unsent()

    def wait_writable(self):
        """See :meth:`WsConnection.wait_writable`."""
        self.ws.wait_writable()

    def send_ping(self, payload=b""):
        """A WebSocket ping (outside the records: it carries nothing of the tunnel's)."""
        self.ws.send_ping(payload)

    def close(self, code=CLOSE_NORMAL, reason=""):
        self.ws.close(code, reason)

    def abort(self):
        self.ws.abort()

    closed = _WsAttribute()
    client = _WsAttribute()
    peer_close_code = _WsAttribute()
    peer_close_reason = _WsAttribute()
    bytes_in = _WsAttribute()
    bytes_out = _WsAttribute()
    on_pong = _WsAttribute(settable=True)
    pacer = _WsAttribute(settable=True)

    @property
    def peer(self):
        return getattr(self.ws, "peer", None)

    @property
    def max_message(self):
        """The largest plaintext that fits in one message of the WebSocket."""
        return self.ws.max_message - aead.OVERHEAD


# --- handshakes -------------------------------------------------------------------

def _recv_hello(ws, peer):
    message = ws.recv_message()
    if message is None:
        code = getattr(ws, "peer_close_code", None)
        reason = getattr(ws, "peer_close_reason", "") or ""
        text = "E2E handshake failed: the %s closed the connection (%s%s)" % (
            peer, code if code is not None else "no close code", (" " + reason) if reason else "")
        if code == CLOSE_VERSION_MISMATCH:
            raise VersionMismatch(text)
        if code == CLOSE_POLICY_VIOLATION:      # a limit of the server's, not an E2E problem
            raise AuthError("the %s refused the tunnel: %s" % (peer, reason or "policy"))
        if peer == "server" and code == aead.CLOSE_E2E_FAILED:
            raise aead.HandshakeError(text)
        raise aead.HandshakeError(text + "; is E2E enabled on the %s?" % peer)
    return message


@functools.lru_cache(maxsize=1)
def fastest_cipher():
    """AES-256-GCM where the CPU has AES instructions, else ChaCha20-Poly1305.

    (A Raspberry Pi 4 or a small router has no AES instructions: there
    ChaCha20-Poly1305 is several times faster.)  Read once from /proc/cpuinfo.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    has_aes = "aes" in value.split()
                    return aead.CIPHER_AES_256_GCM if has_aes else aead.CIPHER_CHACHA20_POLY1305
    except OSError:
        pass
    return aead.CIPHER_CHACHA20_POLY1305


def _fastest_first(allowed):
    """The server's allowed ciphers, the fastest on this CPU first (when not given)."""
    if allowed is not None:
        return allowed
    first = fastest_cipher()
    return (first,) + tuple(c for c in aead.CIPHER_NAMES if c != first)


def client_secure(ws, server_pub_b64, binding, cipher=None, timeout=10.0):
    """Run the client's E2E handshake on *ws*; return a :class:`SecureChannel`.

    On failure the WebSocket is closed and an :class:`AfbError` raised
    (:class:`~afb.codec.aead.HandshakeError`, also on timeout, with the
    server's close reason when it refused us; ``VersionMismatch``), or the
    ``OSError`` of a broken connection.
    """
    handshake = aead.ClientHandshake(server_pub_b64, binding,
                                     fastest_cipher() if cipher is None else cipher)
    try:
        with gevent.Timeout(timeout, aead.HandshakeError(
                "E2E handshake failed: no answer from the server within %.0f s" % timeout)):
            ws.send_message([handshake.start()])
            sealer, opener = handshake.finish(_recv_hello(ws, "server"))
    except AfbError as exc:
        ws.close(exc.close_code, str(exc))
        raise
    except OSError:
        ws.close()
        raise
    return _bound(SecureChannel(ws, sealer, opener), handshake)


def server_secure(ws, static_priv, binding, allowed=None, timeout=10.0, *, hello=None):
    """Run the server's E2E handshake on *ws*; return a :class:`SecureChannel`.

    ``hello``: the ClientHello when the caller has already read it (see
    :func:`server_accept`).  On failure the WebSocket is closed with the
    error's code and reason (the client shows them) and the error is raised.
    """
    handshake = aead.ServerHandshake(static_priv, binding, _fastest_first(allowed))
    try:
        with gevent.Timeout(timeout, aead.HandshakeError(
                "E2E handshake failed: no ClientHello within %.0f s" % timeout)):
            if hello is None:
                hello = _recv_hello(ws, "client")
            reply, sealer, opener = handshake.respond(hello)
            ws.send_message([reply])
    except AfbError as exc:
        ws.close(exc.close_code, str(exc))
        raise
    except OSError:
        ws.close()
        raise
    return _bound(SecureChannel(ws, sealer, opener), handshake)


def _bound(channel, handshake):
    """The channel, with its handshake's transcript hash: what a resume proof is bound
    to (:mod:`afb.codec.resume`), so a proof made for one E2E link fits no other."""
    channel.transcript_hash = handshake.transcript_hash
    return channel


# --- E2E required, optional or off (the server's [e2e] mode) -------------------------

E2E_MODES = ("required", "optional", "off")


def is_e2e_hello(message):
    """True if *message* (a first WebSocket message) starts like an E2E hello.

    A tunnel HELLO frame starts with its type and flags (zero bytes), never
    with ``b"AFBE"``.
    """
    if message is None:
        return False
    return bytes(memoryview(message).cast("B")[:len(aead.MAGIC)]) == aead.MAGIC


class ReplayConnection:
    """A WebSocket whose first message was read already: ``recv_message`` gives it again.

    Everything else (attributes, properties, ``on_pong``) goes to the wrapped
    connection.
    """

    def __init__(self, ws, first):
        self.__dict__["ws"] = ws
        self.__dict__["_first"] = first

    def __repr__(self):
        return "<ReplayConnection over %r>" % (self.ws,)

    def recv_message(self):
        first = self.__dict__["_first"]
        if first is not None:
            self.__dict__["_first"] = None
            return first
        return self.ws.recv_message()

    def __getattr__(self, name):
        return getattr(self.__dict__["ws"], name)

    def __setattr__(self, name, value):
        setattr(self.__dict__["ws"], name, value)


def server_accept(ws, static_priv, binding, allowed=None, timeout=10.0, mode="required"):
    """The server's side of a fresh WebSocket, by the ``[e2e] mode``.

    ``required``: :func:`server_secure` (a plain client is refused with a
    close reason that tells what to set); ``optional``: the first message
    decides -- an E2E hello gets the handshake, anything else (a plain tunnel
    HELLO) a :class:`ReplayConnection` that hands it to the session; ``off``:
    *ws* unchanged.  Errors as for :func:`server_secure`.
    """
    if mode == "off":
        return ws
    if mode == "required":
        return server_secure(ws, static_priv, binding, allowed, timeout)
    if mode != "optional":
        raise ValueError("E2E mode must be one of %s, not %r" % (E2E_MODES, mode))
    try:
        with gevent.Timeout(timeout, aead.HandshakeError(
                "no first message within %.0f s after the upgrade" % timeout)):
            first = ws.recv_message()
    except AfbError as exc:
        ws.close(exc.close_code, str(exc))
        raise
    except OSError:
        ws.close()
        raise
    if first is None:
        raise aead.HandshakeError("the client closed the connection before its first message")
    if not is_e2e_hello(first):
        return ReplayConnection(ws, first)
    return server_secure(ws, static_priv, binding, allowed, timeout, hello=first)


__all__ = ["E2E_MODES", "ReplayConnection", "SecureChannel", "client_secure",
           "is_e2e_hello", "server_accept", "server_secure"]
