"""Relay bytes between a TCP socket and a tunnel stream, driven by socket readiness.

No greenlet per stream: two libev watchers on the socket's descriptor do the
work, in the event loop, with non-blocking reads and writes.

* up (socket -> stream): the read watcher runs only while the peer grants
  credit, and a read never takes more than that credit, so nothing waits in
  our memory that the peer has not agreed to take.  EOF becomes FIN.
* down (stream -> socket): data from the peer is written at once, by the
  session's reader; what the socket does not take waits for the write
  watcher.  Credit goes back only for bytes the socket took, so a local app
  that stops reading stops the far end after one window.  FIN becomes
  ``shutdown(SHUT_WR)`` once everything is written.

A reset either way stops both directions and closes the socket with an RST.
Compared with two greenlets per stream this saves their stacks (memory per
stream) and a greenlet switch per chunk (CPU).

Memory the peer can make us hold is bounded per tunnel and per user
(:mod:`afb.mux.budget`): reading pauses while the session's ``down`` budget
(frames queued for the WebSocket) is exhausted, and resumes when the writer
has drained it; bytes waiting in ``out`` are charged to its ``up`` budget,
which the session's reader respects.

Bandwidth limits (:mod:`afb.transport.shaper`: a server's user, a client's
LAN device) are back-pressure of the same kind: ``shapers = (read,
credit)``; reading the socket pauses while the ``read`` shaper has no
tokens and resumes on its timer; the credit for bytes the socket took is
handed back to the peer only as fast as the ``credit`` shaper allows.
Without a limit this costs a ``None`` test (and an attribute read) per read
and write.
"""

import errno
import logging
import os
import socket
from collections import deque

import gevent

from afb.buffers import detach
from afb.errors import REP_GENERAL_FAILURE
from afb.mux.rate import MIN_GRANT
from afb.transport.sockets import close_socket, peer_name

log = logging.getLogger(__name__)

#: Largest single read from a local socket.
READ_CHUNK = 256 * 1024
#: TCP_NOTSENT_LOWAT of a relayed socket: the kernel takes no more unsent
#: bytes once this many wait in its queue.  Without it a destination that
#: reads nothing made the server's kernel hold ~3.8 MiB per stream (the send
#: buffer autotunes up to tcp_wmem's maximum), outside any afb budget; with
#: 32 KiB it held 46 KiB (measured: 200 stuck loopback sockets, the
#: ``TCP: mem`` line of /proc/net/sockstat).  What the kernel refuses waits
#: in ``out``, charged to the tunnel's budget.  Sent-but-unacknowledged data
#: is not limited by it, so a far destination still gets a full window.
NOTSENT_LOWAT = 32 * 1024
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
_READ, _WRITE = 1, 2
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class SocketRelay:
    """Moves one stream's bytes to and from one connected socket."""

    __slots__ = ("sock", "stream", "fd", "out", "out_bytes", "local_eof", "write_closed",
                 "closed", "down", "up", "_reader", "_writer", "_reading", "_on_close",
                 "shape_read", "shape_credit", "held")

    def __init__(self, sock, stream, on_close=None, shapers=(None, None)):
        self.sock = sock
        self.stream = stream
        self.fd = sock.fileno()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
        except OSError:             # not TCP (a test's socketpair), or an old kernel
            pass
        self.out = deque()          # peer's data the socket has not taken yet
        self.out_bytes = 0
        self.local_eof = False      # the socket said EOF; FIN sent
        self.write_closed = False   # we shut down our write side after the peer's FIN
        self.closed = False
        self.down = stream.session.down   # frames queued for the peer: gates reading
        self.up = stream.session.up       # bytes in `out`: charged here
        # Rate limits: reading the socket, handing credit back (None: none).
        self.shape_read, self.shape_credit = shapers
        self.held = 0               # credit the up shaper holds back (not data)
        self._on_close = on_close
        loop = gevent.get_hub().loop
        self._reader = loop.io(self.fd, _READ)
        self._writer = None         # made when a write first falls short (most never do)
        self._reading = False

    def start(self):
        """Begin relaying (the stream replays whatever arrived before)."""
        self.stream.attach(self)
        if not self.closed:
            self.credit_available()

    # --- up: socket -> stream -------------------------------------------------------

    def credit_available(self):
        if not self._reading and not self.local_eof and not self.closed \
                and self.stream.credit.available > 0:
            if self.down.exhausted:
                self.down.wait(self.credit_available)
                return
            shaper = self.shape_read
            if shaper is not None and shaper.limited and not shaper.ready(MIN_GRANT):
                shaper.wait(self.credit_available)
                return
            self._reading = True
            self._reader.start(self._on_readable)

    def _pause_reading(self):
        if self._reading:
            self._reading = False
            self._reader.stop()

    def _on_readable(self):
        stream = self.stream
        credit = stream.credit.available
        if credit <= 0:
            self._pause_reading()
            return
        if self.down.exhausted:
            # The peer is not taking what we queued: stop reading until the
            # writer drains the tunnel's (or the user's) budget.
            self._pause_reading()
            self.down.wait(self.credit_available)
            return
        size = credit if credit < READ_CHUNK else READ_CHUNK
        shaper = self.shape_read
        if shaper is not None and shaper.limited:
            size = shaper.ready(size)
            if not size:    # over the user's rate: wait for tokens
                self._pause_reading()
                shaper.wait(self.credit_available)
                return
        try:
            data = os.read(self.fd, size)
        except OSError as exc:
            if exc.errno in _AGAIN:
                return
            self._fail("read from %s failed: %s" % (peer_name(self.sock), exc.strerror))
            return
        if shaper is not None and shaper.limited:
            shaper.spend(len(data))
        if not data:
            self._pause_reading()
            self.local_eof = True
            stream.close_write()
            self._maybe_done()
            return
        stream.send(data)
        if stream.credit.available <= 0:
            self._pause_reading()

    # --- down: stream -> socket -------------------------------------------------------

    def deliver(self, data):
        """Peer's data for the socket: written now, or queued for the write watcher."""
        if self.closed:
            return
        if self.out:
            data = detach(data)
            self.out.append(data)
            self.out_bytes += len(data)
            self.up.charge(len(data))
            return
        try:
            written = os.write(self.fd, data)
        except OSError as exc:
            if exc.errno not in _AGAIN:
                self._fail("write to %s failed: %s" % (peer_name(self.sock), exc.strerror))
                return
            written = 0
        if written:
            self._consumed(written)
        if written < len(data):
            rest = detach(memoryview(data)[written:])
            self.out.append(rest)
            self.out_bytes += len(rest)
            self.up.charge(len(rest))
            if self._writer is None:
                self._writer = gevent.get_hub().loop.io(self.fd, _WRITE)
            self._writer.start(self._on_writable)

    def _on_writable(self):
        out = self.out
        total = 0
        try:
            while out:
                chunk = out[0]
                written = os.write(self.fd, chunk)
                total += written
                if written < len(chunk):
                    out[0] = memoryview(chunk)[written:]
                    break
                out.popleft()
        except OSError as exc:
            if exc.errno not in _AGAIN:
                self.out_bytes -= total
                self.up.release(total)
                self._fail("write to %s failed: %s" % (peer_name(self.sock), exc.strerror))
                return
        self.out_bytes -= total
        if total:
            self.up.release(total)
            self._consumed(total)
        if not out:
            self._writer.stop()
            if self.stream.remote_fin:
                self.remote_eof()

    def _consumed(self, n):
        """The socket took ``n`` bytes: credit back to the peer, at the user's rate."""
        shaper = self.shape_credit
        if shaper is None or not shaper.limited:
            self.stream.consumed(n)
            return
        self.held += n
        self._release_credit()

    def _release_credit(self):
        held = self.held
        if self.closed or not held:
            return
        shaper = self.shape_credit
        granted = shaper.ready(held) if shaper.limited else held
        if granted:
            if shaper.limited:
                shaper.spend(granted)
            self.held = held = held - granted
            self.stream.consumed(granted)
        if held:
            shaper.wait(self._release_credit)

    def remote_eof(self):
        """The peer sent FIN: shut our write side once everything is written."""
        if self.out or self.write_closed or self.closed:
            return
        self.write_closed = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._maybe_done()

    def check_stalled(self):
        """Called now and then (the session's pinger): a socket we do not read (no
        credit: its destination does not read) is not watched, so an app that resets
        it would go unnoticed until the far end reads or the idle timeout; a pending
        error (SO_ERROR, one syscall) ends it now.  A plain close (FIN) stays: it may be
        a half-close whose answer the app still waits for."""
        if self.closed or self._reading or self.local_eof:
            return
        try:
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as exc:
            error = exc.errno
        if error:
            self._fail("%s while its stream was stalled" % os.strerror(error))

    # --- ending --------------------------------------------------------------------------

    def abort(self, error=None):
        """The stream was reset: stop and close the socket with an RST."""
        self._close(abort=True)

    def _fail(self, message):
        self.stream.reset(REP_GENERAL_FAILURE, message)   # calls abort()
        self._close(abort=True)

    def _maybe_done(self):
        if self.local_eof and self.write_closed:
            self._close(abort=False)

    def _close(self, abort):
        if self.closed:
            return
        self.closed = True
        self._reading = False
        self._reader.stop()
        self._reader.close()
        if self._writer is not None:
            self._writer.stop()
            self._writer.close()
        self.out.clear()
        if self.out_bytes:
            self.up.release(self.out_bytes)
        self.out_bytes = 0
        self.down.forget(self.credit_available)
        if self.shape_read is not None:
            self.shape_read.forget(self.credit_available)
        if self.shape_credit is not None:
            self.shape_credit.forget(self._release_credit)
        close_socket(self.sock, abort=abort)
        if self._on_close is not None:
            self._on_close(self)


