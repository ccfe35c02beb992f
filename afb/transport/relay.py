"""Relay bytes between a TCP socket and a tunnel stream, with half-close.

Two directions, one greenlet each:

* up: socket -> stream.  Reads only as much as the peer's credit allows, so
  nothing waits in our memory that the peer has not agreed to take.  EOF on
  the socket becomes FIN.
* down: stream -> socket.  Hands credit back only after ``sendall`` returned,
  so a local app that stops reading stops the far end after one window.  FIN
  becomes ``shutdown(SHUT_WR)``.

A reset either way aborts both directions and closes the socket with an RST.
"""

import logging
import socket
import struct

import gevent
from gevent import sleep

from afb.errors import REP_GENERAL_FAILURE, StreamReset

log = logging.getLogger(__name__)

#: Largest single read from a local socket.
READ_CHUNK = 256 * 1024
#: After queueing a read this large, yield to the writer greenlet.
YIELD_AFTER = 64 * 1024
_LINGER_ABORT = struct.pack("ii", 1, 0)


def relay(sock, stream):
    """Pump both ways until both directions ended or the stream was reset; close ``sock``."""
    up = gevent.spawn(pump_up, sock, stream)
    try:
        pump_down(sock, stream)
        if stream.reset_error is None:
            up.join()
    finally:
        if not up.dead:
            up.kill(block=True)
        close_socket(sock, abort=stream.reset_error is not None)


def pump_up(sock, stream):
    """Socket -> stream until EOF (then FIN) or reset."""
    recv = sock.recv
    try:
        while True:
            credit = stream.wait_credit()
            data = recv(credit if credit < READ_CHUNK else READ_CHUNK)
            if not data:
                stream.close_write()
                return
            stream.write(data)
            if len(data) >= YIELD_AFTER:
                # Let the writer send this now instead of reading on while the
                # socket has data: the peer starts on it at once (pipelining).
                sleep(0)
    except StreamReset:
        return
    except OSError as exc:
        stream.reset(REP_GENERAL_FAILURE, "read from %s failed: %s" % (_peer(sock), _why(exc)))


def pump_down(sock, stream):
    """Stream -> socket until FIN (then shutdown) or reset."""
    sendall = sock.sendall
    try:
        while True:
            chunk = stream.read()
            if not chunk:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            sendall(chunk)
            stream.consumed(len(chunk))
    except StreamReset:
        return
    except OSError as exc:
        stream.reset(REP_GENERAL_FAILURE, "write to %s failed: %s" % (_peer(sock), _why(exc)))


def close_socket(sock, abort=False):
    """Close ``sock``; with ``abort`` the peer sees a reset, not a clean EOF."""
    try:
        if abort:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _peer(sock):
    try:
        host, port = sock.getpeername()[:2]
        return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
    except OSError:
        return "socket"


def _why(exc):
    return exc.strerror or str(exc) or type(exc).__name__
