"""One WebSocket connection on a (gevent) socket: binary messages in and out.

``WsConnection`` is what the tunnel session talks to, on both ends:

* :meth:`WsConnection.recv_message` returns one whole binary message (fragments
  reassembled, unmasked) or ``None`` once the connection is closed.  Pings are
  answered, close frames are answered once with the peer's code.  Size limits
  are checked on the frame header, before a byte of the payload is read.
* :meth:`WsConnection.send_message` sends one binary message made of several
  buffers, without joining them on plain sockets (``sendmsg``).  A lock makes
  concurrent senders safe: frames never interleave.
* :meth:`WsConnection.close` sends the close frame with the given code and
  reason (once), then shuts the socket down.

Bytes come off the socket through :class:`~afb.transport.ws_input.FrameInput`
(one reused buffer, large payloads read straight into pooled ones: every
payload is copied once after the kernel hands it over).

Work a peer can make us do without sending payload is bounded: a message may
come in at most :data:`MAX_FRAGMENTS` frames (20 million empty continuation
frames once kept a server busy for seconds), a ping flood gets at most
:data:`PONGS_PER_SECOND` pongs, and every frame counts one unit on the connection's
:class:`~afb.transport.pacer.Pacer`, which yields to the other greenlets
and throttles a flood (the tunnel session installs its own pacer).
"""

import socket

from gevent.lock import RLock
from gevent.socket import wait_write

from afb.buffers import POOL_BUFFER, byte_view
from afb.codec import websocket as wsc
from afb.errors import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    MessageTooBig,
    ProtocolError,
)
from afb.transport.pacer import MESSAGE_UNITS, Allowance, Pacer
from afb.transport.socket_writes import JOIN_LIMIT, send_whole, sendall_coalesced, sendmsg_all
from afb.transport.sockets import (
    TUNNEL_NOTSENT_LOWAT,
    close_socket,
    set_notsent_lowat,
    unsent_bytes,
)
from afb.transport.ws_input import RECV_BUFFER, SMALL_PAYLOAD, FrameInput

#: How long close() waits for a sender holding the write lock.
CLOSE_LOCK_TIMEOUT = 5.0
#: The longest frame header (64-bit length and a mask key): the room a caller
#: of :meth:`WsConnection.send_in_place` leaves in front of its payload.
MAX_HEADER = 14
#: Most frames one message may come in.  afb sends every message as one
#: frame; proxies and CDNs that re-fragment use a few per message at most.
MAX_FRAGMENTS = 1024
#: Pongs per second a ping flood gets, and how many may go at once; a peer
#: that pings now and then gets every answer.
PONGS_PER_SECOND = 20


class WsConnection:
    """A WebSocket on a connected socket, after the HTTP upgrade."""

    def __init__(self, sock, *, client, max_message=1 << 20, initial=b"", peer=None):
        self._sock = sock
        self.client = bool(client)
        self.max_message = int(max_message)
        self.peer = peer
        self.bytes_out = 0
        self.peer_close_code = None
        self.peer_close_reason = ""
        #: Optional callable(payload: bytes) run when a pong arrives (RTT probes).
        self.on_pong = None
        #: Counts the frames read (one unit each); the session installs its own.
        self.pacer = Pacer()
        self._pongs = Allowance(PONGS_PER_SECOND, PONGS_PER_SECOND)
        self._in = FrameInput(sock, initial)
        self._send_buf = None        # client: reused buffer a message is masked in
        self._wlock = RLock()
        self._close_sent = False
        self._closed = False         # no more reading or writing
        self._eof = False
        self._use_sendmsg = hasattr(sock, "sendmsg") and not hasattr(sock, "do_handshake")

    def __repr__(self):
        return "<WsConnection %s peer=%r%s>" % (
            "client" if self.client else "server", self.peer, " closed" if self._closed else "")

    @property
    def bytes_in(self):
        """Bytes read from the socket so far."""
        return self._in.bytes_in

    @property
    def closed(self):
        """True once the connection can carry no more messages."""
        return self._closed or self._close_sent or self._eof

    # --- receiving ------------------------------------------------------------

    def recv_message(self):
        """The next binary message (bytes, or a memoryview of a pooled buffer for
        large ones: keep it only as long as needed), or ``None`` once closed.

        Raises :class:`ProtocolError` (after sending a close frame with its
        code) when the peer breaks RFC 6455 or sends text, and
        :class:`MessageTooBig` (close 1009) for a frame or message over
        ``max_message``, before reading its payload.
        """
        if self._closed or self._eof:
            return None
        try:
            return self._recv_message()
        except ProtocolError as exc:
            if self._closed:
                return None
            self.close(exc.close_code, str(exc))
            raise
        except OSError:
            # Also gevent's SSL socket closed by abort() (a dropped link) while this
            # greenlet was about to read, which FrameInput turns from a ValueError
            # into an OSError (tests/test_faults_link.py: the connection cut).
            if self._closed:
                return None
            raise

    def _recv_message(self):
        fragments = None
        count = 0
        total = 0
        want_masked = not self.client
        tick = self.pacer.tick
        frames_in = self._in
        while True:
            header = frames_in.header()
            if header is None:
                self._eof = True
                return None
            tick(1)
            fin, opcode, masked, key, length, header_len = header
            if masked != want_masked:
                raise ProtocolError("unmasked frame from a client" if want_masked
                                    else "masked frame from a server")
            if opcode >= wsc.OP_CLOSE:
                if self._control_frame(opcode, key, length, header_len):
                    return None
                continue
            count += 1
            total += length
            self._check_data_frame(opcode, fragments is not None, count, total)
            frames_in.start += header_len
            payload = frames_in.payload(length, key)
            if payload is None:
                return self._lost()
            if fin:
                if fragments is None:
                    return payload
                fragments.append(payload)
                return b"".join(fragments)
            if fragments is None:
                fragments = [payload]
            else:
                fragments.append(payload)

    def _control_frame(self, opcode, key, length, header_len):
        """A control frame (possibly between fragments): answered here; True once closed."""
        self.pacer.tick(MESSAGE_UNITS - 1)       # a control frame is a message of its own
        self._in.start += header_len
        payload = self._in.small(length, key)
        if payload is None:
            self._lost()
        if opcode == wsc.OP_CLOSE:
            self._on_close(payload)
            return True
        if opcode == wsc.OP_PING:
            if self._pongs.allow():
                self._send_frame(wsc.OP_PONG, payload)
        elif self.on_pong is not None:
            self.on_pong(payload)
        return False

    def _check_data_frame(self, opcode, continuing, count, total):
        """A data frame's place in its message; the limits, before its payload is read."""
        if opcode == wsc.OP_TEXT:
            raise ProtocolError("text WebSocket messages are not accepted",
                                close_code=CLOSE_UNSUPPORTED_DATA)
        if opcode == wsc.OP_CONTINUATION:
            if not continuing:
                raise ProtocolError("continuation frame without a message to continue")
        elif continuing:
            raise ProtocolError("new message started inside a fragmented message")
        if count > MAX_FRAGMENTS:
            raise ProtocolError("WebSocket message in more than %d frames" % MAX_FRAGMENTS,
                                close_code=CLOSE_POLICY_VIOLATION)
        if total > self.max_message:
            raise MessageTooBig("WebSocket message of %d bytes or more exceeds the limit of %d"
                                % (total, self.max_message))

    def _lost(self):
        """EOF inside a frame: the transport broke."""
        self._eof = True
        raise ConnectionResetError("WebSocket connection closed in the middle of a frame")

    def _on_close(self, payload):
        code, reason = wsc.decode_close(payload)
        self.peer_close_code = code
        self.peer_close_reason = reason
        if code == wsc.CLOSE_NO_STATUS:
            self._close(None, "")
        else:
            self._close(code, reason)

    # --- sending --------------------------------------------------------------

    def send_message(self, parts):
        """Send one binary message whose payload is the concatenation of *parts*."""
        if isinstance(parts, (bytes, bytearray, memoryview)):
            parts = (parts,)
        parts = [byte_view(p) for p in parts]
        total = 0
        for p in parts:
            total += len(p)
        if self.client:
            self._send_masked(parts, total)
            return
        else:
            buffers = [wsc.encode_header(wsc.OP_BINARY, total)]
            buffers.extend(p for p in parts if len(p))
        with self._wlock:
            if self._close_sent or self._closed:
                raise BrokenPipeError("WebSocket connection is closed")
            self._write(buffers, total + len(buffers[0]))

    def _send_masked(self, parts, total):
        """Client: one copy -- header and payload joined in a reused buffer, masked in
        place, sent under the write lock (a fresh 256 KiB buffer per message costs
        page faults worth several copies)."""
        key = wsc.mask_key()
        head = wsc.encode_header(wsc.OP_BINARY, total, mask_key=key)
        size = len(head) + total
        with self._wlock:
            if self._close_sent or self._closed:
                raise BrokenPipeError("WebSocket connection is closed")
            if size > POOL_BUFFER:
                message = memoryview(bytearray(size))
            else:
                if self._send_buf is None:
                    self._send_buf = memoryview(bytearray(POOL_BUFFER))
                message = self._send_buf[:size]
            pos = len(head)
            message[:pos] = head
            for p in parts:
                end = pos + len(p)
                message[pos:end] = p
                pos = end
            wsc.mask_inplace(message[len(head):], key)
            self._write([message], size)

    def send_in_place(self, buffer, start):
        """Send ``buffer[start:]`` as one binary message without copying it.

        ``buffer`` (a writable bytes-like object) must have ``start >=
        MAX_HEADER`` bytes of room in front of the payload: the frame header
        is written there, and a client masks the payload in place (the
        buffer's contents are changed).  For a sender that builds its
        payload in a scratch buffer anyway (the E2E channel's sealer).
        """
        view = memoryview(buffer)
        if view.itemsize != 1 or view.ndim != 1:
            view = view.cast("B")
        if start < MAX_HEADER:
            raise ValueError("send_in_place needs %d bytes of room, got %d" % (MAX_HEADER, start))
        total = len(view) - start
        key = wsc.mask_key() if self.client else None
        head = wsc.encode_header(wsc.OP_BINARY, total, mask_key=key)
        first = start - len(head)
        with self._wlock:
            if self._close_sent or self._closed:
                raise BrokenPipeError("WebSocket connection is closed")
            view[first:start] = head
            if key is not None:
                wsc.mask_inplace(view[start:], key)
            self._write([view[first:]], len(view) - first)

    def set_paced(self, paced):
        """Keep little unsent data in the kernel (``TCP_NOTSENT_LOWAT``) or as much as
        it likes (the default): the frame writer's slow and fast modes."""
        if not self._closed:
            set_notsent_lowat(self._sock, TUNNEL_NOTSENT_LOWAT if paced else 0)

    def unsent(self):
        """Bytes the kernel holds for this connection and has not sent yet."""
        return unsent_bytes(self._sock)

    def wait_writable(self):
        """Wait (gevent) until the kernel holds less than half of the tunnel socket's
        TCP_NOTSENT_LOWAT unsent: when it would take a batch without filling up."""
        if unsent_bytes(self._sock) >= TUNNEL_NOTSENT_LOWAT // 2 and not self._closed:
            wait_write(self._sock.fileno())

    def send_ping(self, payload=b""):
        """Send a ping; the peer's pong goes to :attr:`on_pong`."""
        with self._wlock:
            if self._close_sent or self._closed:
                raise BrokenPipeError("WebSocket connection is closed")
            self._send_frame(wsc.OP_PING, bytes(payload))

    def _send_frame(self, opcode, payload):
        """One control frame; the caller holds no lock or the write lock."""
        if self.client:
            key = wsc.mask_key()
            data = wsc.encode_header(opcode, len(payload), mask_key=key) + wsc.mask(payload, key)
        else:
            data = wsc.encode_header(opcode, len(payload)) + payload
        with self._wlock:
            if self._closed:
                return
            self._write([data], len(data))

    def _write(self, buffers, total):
        try:
            self._write_all(buffers, total)
        except ValueError as exc:       # the SSL socket closed by abort() meanwhile
            if self._closed:
                raise BrokenPipeError("WebSocket connection is closed") from exc
            raise

    def _write_all(self, buffers, total):
        sock = self._sock
        if len(buffers) == 1:
            send_whole(sock, buffers[0])
        elif self._use_sendmsg:
            sendmsg_all(sock, buffers)
        elif total <= JOIN_LIMIT:
            sock.sendall(b"".join(buffers))
        else:
            sendall_coalesced(sock, buffers)
        self.bytes_out += total

    # --- closing --------------------------------------------------------------

    def close(self, code=CLOSE_NORMAL, reason=""):
        """Send a close frame (once) with *code* and *reason*, then shut the socket.

        Idempotent.  A *code* that may not be sent (e.g. 1005, 1006) goes out
        as an empty close frame.
        """
        if code is not None and not wsc.valid_close_code(code):
            code, reason = None, ""
        self._close(code, reason)

    def abort(self):
        """Shut the socket without a close frame: the link is taken for lost, and a
        resumable tunnel's peer must not read a deliberate close into it."""
        self._close_sent = True
        self._close(None, "")

    def _close(self, code, reason):
        if self._closed:
            return
        if not self._close_sent:
            payload = wsc.encode_close(code, reason or "")
            if self._wlock.acquire(timeout=CLOSE_LOCK_TIMEOUT):
                try:
                    if not self._close_sent and not self._closed:
                        self._close_sent = True
                        self._send_frame(wsc.OP_CLOSE, payload)
                except OSError:
                    pass
                finally:
                    self._wlock.release()
            self._close_sent = True
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        close_socket(self._sock)


__all__ = ["WsConnection", "MAX_HEADER", "RECV_BUFFER", "SMALL_PAYLOAD"]
