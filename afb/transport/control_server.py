"""The control socket: a Unix socket speaking docs/control-protocol.rst, in the daemon.

Each connection has a reader greenlet (lines -> requests -> answers) and a
writer greenlet that drains the connection's own queue of encoded lines.
Answers are queued, never written by the code that makes them, so a reader
that stops reading cannot stall the daemon: once :data:`MAX_QUEUED` bytes
wait for it, it is dropped (one log line) and its socket closed.  Every
second one ticker builds the subscribers' snapshot once per kind asked (with
streams or without, and the limit) and queues the same bytes to each of
them: fifty subscribers cost one snapshot, not fifty (bench/monitor).
Log records reach subscribers as they are logged, through the daemon's
:class:`~afb.monitor.log_ring.LogRing`.
"""

import errno
import grp
import logging
import os
import socket
from collections import deque

import gevent
from gevent.event import Event
from gevent.server import StreamServer

from afb.errors import AfbError
from afb.monitor import control_protocol as proto
from afb.monitor.stream_rows import SORT_FIELDS, select_streams

log = logging.getLogger(__name__)

__all__ = ["ControlServer", "MAX_QUEUED"]

#: Bytes that may wait for one reader before it is dropped.
MAX_QUEUED = 4 * 1024 * 1024
#: Seconds between two snapshots to subscribers.
TICK = 1.0


class _Connection:
    """One reader of the control socket (see the module doc)."""

    def __init__(self, server, sock):
        self.server = server
        self.sock = sock
        self.queue = deque()
        self.queued = 0
        self.wake = Event()
        self.closed = False
        self.subscription = None        # (streams, limit) while subscribed
        self.writer = gevent.spawn(self._write_loop)

    def send(self, data):
        """Queue one encoded line; drop the reader if too much waits for it already."""
        if self.closed:
            return
        if self.queued + len(data) > MAX_QUEUED:
            self.server.dropped(self, "it does not read (%d bytes waiting)" % self.queued)
            return
        self.queue.append(data)
        self.queued += len(data)
        self.wake.set()

    def _write_loop(self):
        try:
            while not self.closed:
                self.wake.wait()
                self.wake.clear()
                while self.queue and not self.closed:
                    data = self.queue.popleft()
                    self.queued -= len(data)
                    self.sock.sendall(data)
        except OSError:
            self.close()

    def on_log(self, record):
        self.send(proto.encode({"v": proto.VERSION, "type": "log", "records": [record]}))

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.subscription = None
        self.server.logs.listeners.discard(self.on_log)
        self.wake.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class ControlServer:
    """Serves one daemon's :class:`~afb.monitor.stats.Monitor` on the Unix socket ``path``."""

    def __init__(self, path, monitor, mode=0o660, group="afb"):
        self.path = path
        self.monitor = monitor
        self.logs = monitor.logs
        self.mode = mode
        self.group = group
        self.connections = set()
        self._server = None
        self._ticker = None

    # --- life cycle ---------------------------------------------------------------

    def start(self):
        """Bind the socket (its folder made if missing); AfbError (one line) if it cannot be."""
        listener = bind_unix(self.path, self.mode, self.group)
        self._server = StreamServer(listener, self._serve)
        self._server.start()
        self._ticker = gevent.spawn(self._tick_loop)
        log.info("control socket on %s", self.path)

    def stop(self):
        if self._ticker is not None:
            self._ticker.kill(block=False)
        if self._server is not None:
            self._server.stop(timeout=0)
        for connection in list(self.connections):
            connection.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def dropped(self, connection, why):
        if not connection.closed:
            connection.close()
            log.warning("control socket: a reader dropped: %s", why)

    # --- one connection --------------------------------------------------------------

    def _serve(self, sock, _address):
        connection = _Connection(self, sock)
        self.connections.add(connection)
        splitter = proto.LineSplitter()
        try:
            while not connection.closed:
                data = sock.recv(65536)
                if not data:
                    break
                for line in splitter.feed(data):
                    if connection.closed:
                        break
                    self._answer(connection, line)
        except OSError:
            pass
        finally:
            self.connections.discard(connection)
            self.monitor.forget_reader(connection)
            # What was answered still goes out before the socket closes.
            if not connection.closed and connection.queue:
                connection.writer.join(timeout=1.0)
            connection.close()

    def _answer(self, connection, line):
        if line is proto.TOO_LONG:
            connection.send(proto.encode(proto.error_message(proto.ControlError(
                "too_long", "a request line is at most %d bytes" % proto.MAX_LINE))))
            return
        if not line.strip():
            return
        try:
            request = proto.parse_request(line)
            answer = self._act(connection, request)
        except proto.ControlError as exc:
            connection.send(proto.encode(proto.error_message(exc)))
            return
        if answer is not None:
            connection.send(self._encode(answer, request.id))

    def _encode(self, message, request_id=None):
        try:
            return proto.encode(message, request_id)
        except ValueError as exc:       # a number JSON cannot carry
            log.warning("control socket: cannot encode an answer: %s", exc)
            return proto.encode(proto.error_message(proto.ControlError(
                "internal", "the answer could not be encoded")), request_id)

    def _act(self, connection, request):
        """The answer (a dict) to ``request``, or None when it was sent another way."""
        args, monitor = request.args, self.monitor
        if request.cmd == "snapshot":
            return monitor.snapshot(reader=connection)
        if request.cmd == "streams":
            if args["sort"] not in SORT_FIELDS:
                raise proto.ControlError("bad_request", "streams: sort by one of %s"
                                         % ", ".join(SORT_FIELDS))
            rows = monitor.snapshot(reader=connection, streams=True)["streams"]
            total, rows = select_streams(rows, args["filter"], args["sort"], args["desc"],
                                         args["limit"])
            return {"v": proto.VERSION, "type": "streams", "total": total, "streams": rows}
        if request.cmd == "subscribe":
            self._subscribe(connection, request)
            return None
        if request.cmd == "unsubscribe":
            connection.subscription = None
            self.logs.listeners.discard(connection.on_log)
            return _ok()
        if request.cmd == "logs":
            return {"v": proto.VERSION, "type": "logs",
                    "records": self.logs.recent(args["limit"], args["level"])}
        return self._command(request)

    def _command(self, request):
        args, monitor = request.args, self.monitor
        if request.cmd == "close_stream":
            if not monitor.close_stream(args["stream"]):
                raise proto.ControlError("not_found", "no open stream %r" % args["stream"])
            log.info("control socket: stream %s closed by the operator", args["stream"])
            return _ok()
        if request.cmd == "disconnect_user":
            if monitor.role != "server":
                raise proto.ControlError("bad_request", "disconnect_user is a server command")
            closed = monitor.disconnect_user(args["user"])
            if not closed:
                raise proto.ControlError("not_found", "user %r has no tunnel" % args["user"])
            log.info("control socket: user %s disconnected by the operator (%d tunnels)",
                     args["user"], closed)
            return dict(_ok(), tunnels=closed)
        if monitor.reload is None:
            raise proto.ControlError("bad_request", "this daemon has nothing to reload")
        gevent.spawn(monitor.reload)
        return _ok()

    def _subscribe(self, connection, request):
        args = request.args
        first = connection.subscription is None
        connection.subscription = (args["streams"], args["limit"])
        if first and args["logs"]:
            records = self.logs.recent(args["logs"])
            if records:
                connection.send(proto.encode({"v": proto.VERSION, "type": "log",
                                              "records": records}))
        self.logs.listeners.add(connection.on_log)
        snapshot = self.monitor.snapshot(reader="subscribers", streams=args["streams"],
                                         limit=args["limit"])
        connection.send(self._encode(snapshot, request.id))

    # --- subscribers -----------------------------------------------------------------------

    def _tick_loop(self):
        while True:
            gevent.sleep(TICK)
            try:
                self.tick()
            except Exception:  # noqa: BLE001  (the ticker must outlive one bad snapshot)
                log.exception("control socket: a snapshot failed")

    def tick(self):
        """One snapshot per kind asked, the same bytes queued to each subscriber."""
        subscribers = [c for c in self.connections if c.subscription is not None]
        if not subscribers:
            return
        kinds = {c.subscription for c in subscribers}
        most = max((limit for streams, limit in kinds if streams), default=None)
        snapshot = self.monitor.snapshot(reader="subscribers", streams=most is not None,
                                         limit=most)
        encoded = {}
        for streams, limit in kinds:
            if streams:
                message = dict(snapshot, streams=snapshot["streams"][:limit])
            else:
                message = {k: v for k, v in snapshot.items() if k != "streams"}
            encoded[(streams, limit)] = self._encode(message)
        for connection in subscribers:
            if connection.subscription is not None:
                connection.send(encoded[connection.subscription])


def _ok():
    return {"v": proto.VERSION, "type": "ok"}


def bind_unix(path, mode=0o660, group="afb"):
    """A listening Unix socket at ``path`` (mode ``mode``, group ``group`` if it exists).

    A socket file left by a daemon that died is replaced; one a live daemon
    answers on is not (AfbError: another daemon runs with the same socket).
    """
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise AfbError("cannot make the control socket's folder %s: %s" % (
            folder, exc.strerror or exc)) from None
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)         # stale: nobody answers there
        else:
            raise AfbError("control socket %s is in use by another afb daemon; stop it or "
                           "set control_socket to another path" % path)
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        os.chmod(path, mode)
        try:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        except (KeyError, PermissionError):
            pass
        listener.listen(64)
    except OSError as exc:
        listener.close()
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise AfbError("cannot make the control socket %s: %s; set control_socket to a "
                           "path this user may write" % (path, exc.strerror)) from None
        raise AfbError("cannot make the control socket %s: %s" % (path, exc.strerror or exc)) \
            from None
    listener.setblocking(False)
    return listener
