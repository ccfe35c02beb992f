"""Newline-delimited JSON framing for the control socket, sans-IO.

The control socket (docs/control-protocol.rst) carries one JSON object per
line both ways.  This module turns the bytes that arrive, in whatever pieces
the kernel hands them over, into objects, and objects into lines; it does no
I/O, so the tests can feed it a line split across reads, one byte at a time,
or garbage, and see what comes out.

What the daemon sends is trusted no more than any input: a line that is not
JSON, not an object, or longer than :data:`MAX_LINE` becomes a
:class:`BadLine` value among the messages (the dashboard shows it as one line
and goes on), never an exception.  An over-long line is skipped up to its
newline without being kept in memory, as the daemons do with ``too_long``.
"""

import json

#: A snapshot of 5,000 streams (the subscription's default limit) is about
#: 1.5 MB; 100,000 streams (the ``streams`` command's most) about 30 MB.
MAX_LINE = 64 * 1024 * 1024
#: The protocol version this dashboard speaks.
VERSION = 1


class BadLine:
    """A line from the daemon that could not be used, with why (for the screen)."""

    __slots__ = ("reason",)

    def __init__(self, reason):
        self.reason = reason

    def __repr__(self):
        return "BadLine(%r)" % self.reason

    def __eq__(self, other):
        return isinstance(other, BadLine) and other.reason == self.reason


class LineDecoder:
    """Bytes in, JSON objects (dicts) or :class:`BadLine` values out."""

    def __init__(self, max_line=MAX_LINE):
        self.max_line = max_line
        self._parts = []
        self._size = 0
        self._skipping = False

    def feed(self, data):
        """The messages completed by ``data`` (a list, often empty)."""
        out = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._keep(data[start:], out)
                return out
            if self._skipping:
                self._skipping = False
            else:
                self._keep(data[start:end], out)
                if not self._skipping:
                    line = b"".join(self._parts)
                    if line.strip():
                        out.append(decode(line))
                self._skipping = False
            self._parts, self._size = [], 0
            start = end + 1

    def _keep(self, piece, out):
        if self._skipping or not piece:
            return
        self._size += len(piece)
        if self._size > self.max_line:
            out.append(BadLine("a line from the daemon is longer than %d bytes; skipped"
                               % self.max_line))
            self._parts, self._size, self._skipping = [], 0, True
        else:
            self._parts.append(piece)


def decode(line):
    """One line (bytes, no newline) as a dict, or a :class:`BadLine` saying why not."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, ValueError) as exc:
        return BadLine("the daemon sent a line that is not JSON (%s): %s"
                       % (exc.__class__.__name__, _preview(line)))
    if not isinstance(message, dict):
        return BadLine("the daemon sent JSON that is not an object: %s" % _preview(line))
    return message


def encode(message):
    """One request as a line: compact JSON, ``"v"`` added, newline-terminated."""
    if "v" not in message:
        message = dict(message, v=VERSION)
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _preview(line, size=60):
    text = line[:size].decode("utf-8", "replace")
    return repr(text + ("..." if len(line) > size else ""))
