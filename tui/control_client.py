"""The dashboard's connection to a daemon's control socket (asyncio, no gevent).

One :class:`ControlClient` keeps one Unix-socket connection alive for as long
as the dashboard runs: it finds the socket (:mod:`tui.discovery`), subscribes
to the once-a-second snapshots and the log records, hands every message to a
callback, and when the daemon is not there or goes away it says so through a
second callback and dials again with a backoff (a quarter second, doubling up
to a few seconds), finding the socket again each time unless the user named
it.  Requests (``close_stream``, ``logs``...) carry an ``id``; their answer
resolves the awaiting :meth:`ControlClient.request`.

It runs as a task on Textual's own asyncio loop: the daemons are gevent, the
dashboard is asyncio, and the two only share the line format
(:mod:`tui.lines`).  Nothing here raises into the UI for an expected failure:
a missing socket, a refused or dropped connection and a bad line from the
daemon all become one line of text for the screen.
"""

import asyncio
import errno
import itertools
import logging

from tui import discovery
from tui.lines import VERSION, BadLine, LineDecoder, encode

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
#: Streams asked for in each snapshot: the protocol's default limit.
STREAM_LIMIT = 5000
LOG_BACKLOG = 200


class ControlError(Exception):
    """A request that got no useful answer; ``str()`` is the line to show."""


def absent(path):
    """The sentence for a daemon that is not there (the user's next step included)."""
    return ("no afb daemon at %s: is it running? start it or pass --connect"
            % (path or discovery.DEFAULT_SOCKET))


def cannot_connect(path, exc):
    """One line for an OSError of connect() on ``path``."""
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
        return absent(path)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ("cannot open %s: permission denied (the control socket is for root and the "
                "afb group)" % path)
    return "cannot connect to %s: %s" % (path, (exc.strerror or str(exc)).lower())


class ControlClient:
    """Connect, subscribe, pass messages on, reconnect; and send requests."""

    def __init__(self, on_message, on_status, connect=None, environ=None,
                 backoff=(0.25, 4.0), stream_limit=STREAM_LIMIT):
        self.on_message = on_message        # called with a dict or a BadLine
        self.on_status = on_status          # called with (connected: bool, text)
        self.connect = connect
        self.environ = environ
        self.backoff = backoff
        self.stream_limit = stream_limit
        self.path = None
        self.connected = False
        self._writer = None
        self._pending = {}
        self._ids = itertools.count(1)
        self._wake = None

    async def run(self):
        """Forever: find, connect, read until the daemon goes; wait; again."""
        delay = self.backoff[0]
        self._wake = asyncio.Event()
        while True:
            path, _named = await asyncio.to_thread(discovery.find_socket, self.connect,
                                                   self.environ)
            self.path = path or self.path
            if path is None:
                self.on_status(False, absent(discovery.DEFAULT_SOCKET))
            else:
                try:
                    reader, writer = await asyncio.open_unix_connection(path, limit=READ_SIZE)
                except OSError as exc:
                    self.on_status(False, cannot_connect(path, exc))
                else:
                    delay = self.backoff[0]
                    why = await self._session(path, reader, writer)
                    self.on_status(False, "the afb daemon at %s went away (%s); reconnecting"
                                   % (path, why))
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            delay = min(delay * 2, self.backoff[1])

    def retry_now(self):
        """Skip the rest of the backoff (the user asked)."""
        if self._wake is not None:
            self._wake.set()

    async def _session(self, path, reader, writer):
        """One connection's life; returns why it ended, for the status line."""
        self._writer = writer
        decoder = LineDecoder()
        try:
            writer.write(encode({"cmd": "subscribe", "streams": True,
                                 "limit": self.stream_limit, "logs": LOG_BACKLOG}))
            await writer.drain()
            self.connected = True
            self.on_status(True, "connected to %s" % path)
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    return "connection closed"
                for message in decoder.feed(data):
                    self._dispatch(message)
        except OSError as exc:
            return (exc.strerror or str(exc)).lower()
        finally:
            self.connected = False
            self._writer = None
            writer.close()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ControlError("the daemon went away before answering"))
            self._pending.clear()

    def _dispatch(self, message):
        if isinstance(message, BadLine):
            self.on_message(message)
            return
        if message.get("v", VERSION) != VERSION:
            self.on_message(BadLine("the daemon speaks control protocol version %r; this "
                                    "afb tui speaks version %d" % (message.get("v"), VERSION)))
            return
        future = self._pending.pop(message.get("id"), None) if "id" in message else None
        if future is not None:
            if not future.done():
                future.set_result(message)
            return
        self.on_message(message)

    async def request(self, message, timeout=5.0):
        """Send one request; its answer (a dict), or ControlError with the line to show.

        An ``error`` answer raises too, with the daemon's own message.
        """
        writer = self._writer
        if writer is None:
            raise ControlError("not connected to an afb daemon")
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            writer.write(encode(dict(message, id=request_id)))
            await writer.drain()
            reply = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise ControlError("the daemon did not answer %r within %g s"
                               % (message.get("cmd"), timeout)) from None
        except OSError as exc:
            raise ControlError("cannot send to the daemon: %s" % exc) from None
        finally:
            self._pending.pop(request_id, None)
        if reply.get("type") == "error":
            raise ControlError("%s: %s" % (reply.get("error", "error"),
                                           reply.get("message", "the daemon refused")))
        return reply
