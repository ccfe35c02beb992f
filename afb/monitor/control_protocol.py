"""The control socket's protocol, sans-IO: lines in, requests out; messages to lines.

Newline-delimited JSON, version 1 (docs/control-protocol.rst).  A
:class:`LineSplitter` turns received bytes into lines and skips the rest of a
line longer than :data:`MAX_LINE` (reporting it once), so a reader can never
make the daemon hold more than that per connection; :func:`parse_request`
checks one line and raises :class:`ControlError` carrying the protocol's error
code; :func:`encode` makes one line of any message.
"""

import json

from afb.errors import AfbError

__all__ = ["MAX_LINE", "VERSION", "COMMANDS", "ControlError", "LineSplitter", "Request",
           "parse_request", "encode", "error_message", "TOO_LONG"]

VERSION = 1
#: The longest request line, newline excluded.
MAX_LINE = 64 * 1024
#: A marker :meth:`LineSplitter.feed` yields for a line that was too long.
TOO_LONG = object()

#: command -> {field: (type(s), default)}; fields not listed are refused.
COMMANDS = {
    "snapshot": {},
    "streams": {"filter": (str, None), "sort": (str, "opened"), "desc": (bool, False),
                "limit": (int, 1000)},
    "subscribe": {"streams": (bool, False), "limit": (int, 5000), "logs": (int, 100)},
    "unsubscribe": {},
    "logs": {"limit": (int, 100), "level": (str, None)},
    "close_stream": {"stream": (str, None)},
    "disconnect_user": {"user": (str, None)},
    "reload": {},
}
#: Fields a command cannot go without.
REQUIRED = {"close_stream": ("stream",), "disconnect_user": ("user",)}
#: Largest ``limit`` any command takes.
MAX_LIMIT = 100_000


class ControlError(AfbError):
    """A request the daemon cannot act on; ``code`` is the protocol's error code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class Request:
    """A checked request: ``cmd``, its fields with defaults filled in, and ``id``."""

    __slots__ = ("cmd", "args", "id")

    def __init__(self, cmd, args, request_id=None):
        self.cmd = cmd
        self.args = args
        self.id = request_id

    def __repr__(self):
        return "<Request %s %r>" % (self.cmd, self.args)


class LineSplitter:
    """Bytes in, complete lines out (without the newline), at most :data:`MAX_LINE` each."""

    def __init__(self, max_line=MAX_LINE):
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False      # inside a line that was too long: drop to its end

    def feed(self, data):
        """-> the lines ``data`` completed; :data:`TOO_LONG` in place of an over-long one."""
        out = []
        self._buf += data
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.max_line:
                    if not self._skipping:
                        out.append(TOO_LONG)
                    self._skipping = True
                    self._buf.clear()
                return out
            line = bytes(self._buf[:end])
            del self._buf[:end + 1]
            if self._skipping:
                self._skipping = False
                continue
            if len(line) > self.max_line:
                out.append(TOO_LONG)
            else:
                out.append(line)


def parse_request(line):
    """One request line -> :class:`Request`; ControlError (with its code) if it is not one."""
    try:
        obj = json.loads(line, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError("bad_json", "not JSON: %s" % exc) from None
    except RecursionError:      # [[[[... a thousand deep: json recurses once per level
        raise ControlError("bad_json", "not JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ControlError("bad_request", "a request is a JSON object, got %s"
                           % type(obj).__name__)
    request_id = obj.get("id")
    version = obj.get("v", VERSION)
    if version != VERSION:
        raise _with_id(ControlError("unsupported_version", "version %r is not supported; this "
                                    "daemon speaks v %d" % (version, VERSION)), request_id)
    cmd = obj.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:       # [1] is not hashable
        raise _with_id(ControlError("unknown_command", "unknown command %r; known: %s" % (
            cmd, ", ".join(sorted(COMMANDS)))), request_id)
    fields = COMMANDS[cmd]
    args = {}
    for name, value in obj.items():
        if name in ("v", "cmd", "id"):
            continue
        if name not in fields:
            raise _with_id(ControlError("bad_request", "%s takes no field %r" % (cmd, name)),
                           request_id)
        kind = fields[name][0]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _with_id(ControlError("bad_request", "%s: %r must be %s" % (
                cmd, name, {str: "a string", int: "an integer", bool: "true or false"}[kind])),
                request_id)
        if kind is int and not 0 <= value <= MAX_LIMIT:
            raise _with_id(ControlError("bad_request", "%s: %r must be 0..%d" % (
                cmd, name, MAX_LIMIT)), request_id)
        args[name] = value
    for name in REQUIRED.get(cmd, ()):
        if name not in args:
            raise _with_id(ControlError("bad_request", "%s needs %r" % (cmd, name)), request_id)
    for name, (_kind, default) in fields.items():
        args.setdefault(name, default)
    return Request(cmd, args, request_id)


def _no_constant(name):
    """NaN and Infinity are not JSON; an id of NaN could not be sent back (encode refuses it)."""
    raise ValueError("%s is not a JSON value" % name)


def _finite_float(text):
    value = float(text)
    if value in (float("inf"), float("-inf")):          # 1e999
        raise ValueError("number %s is out of range" % text[:20])
    return value


def _with_id(error, request_id):
    error.request_id = request_id
    return error


def error_message(error, request_id=None):
    """The error message (a dict) for a ControlError."""
    message = {"v": VERSION, "type": "error", "error": error.code, "message": str(error)}
    request_id = getattr(error, "request_id", request_id)
    if request_id is not None:
        message["id"] = request_id
    return message


def encode(message, request_id=None):
    """One line of JSON (bytes, newline included) for ``message``."""
    if request_id is not None:
        message = dict(message, id=request_id)
    return json.dumps(message, separators=(",", ":"), allow_nan=False,
                      default=str).encode() + b"\n"
