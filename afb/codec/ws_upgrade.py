"""The client's side of the WebSocket upgrade (RFC 6455, 4.1), sans-IO.

:func:`upgrade_request` builds the GET with a fresh ``Sec-WebSocket-Key``;
:class:`UpgradeResponse` takes the server's bytes as they come and, once the
blank line has arrived, gives the status, the headers and whatever followed
them (the first WebSocket frames may ride in the same TCP segment);
:func:`check_accept` says whether a 101 really is an upgrade of our request.

afb used websocket-client for these few lines, and with it ``email``,
``http.cookies`` and a dozen of its own modules in every client (0.8 MiB of
resident memory, measured on this VM; the client's memory is what a router
pays).  The request afb sends is fixed by afb: method, path, ``Host``, the
upgrade headers and the caller's (token in ``Authorization`` or
``Cookie``), nothing that needs a general HTTP client.
"""

import base64
import hashlib
import os

from afb.errors import ProtocolError

__all__ = ["GUID", "MAX_RESPONSE_HEAD", "UpgradeResponse", "accept_value", "check_accept",
           "upgrade_request"]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Longest response head accepted (nginx's own answers are a few hundred bytes).
MAX_RESPONSE_HEAD = 16384


def accept_value(key):
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (both ASCII str)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def _host_header(host, port, secure):
    name = "[%s]" % host if ":" in host and not host.startswith("[") else host
    return name if port == (443 if secure else 80) else "%s:%d" % (name, port)


def upgrade_request(host, port, resource, secure, headers=(), key=None):
    """``(request_bytes, key)``: the upgrade request for ``resource`` on ``host:port``.

    ``headers``: more ``(name, value)`` pairs (a dict works too); CR, LF and
    NUL in them are refused (ValueError), as they would split the request.
    """
    key = key or base64.b64encode(os.urandom(16)).decode("ascii")
    lines = ["GET %s HTTP/1.1" % resource,
             "Host: %s" % _host_header(host, port, secure),
             "Upgrade: websocket",
             "Connection: Upgrade",
             "Sec-WebSocket-Key: %s" % key,
             "Sec-WebSocket-Version: 13"]
    items = headers.items() if hasattr(headers, "items") else headers
    for name, value in items:
        text = "%s: %s" % (name, value)
        if any(c in text for c in "\r\n\0"):
            raise ValueError("header %r holds a line break or NUL" % name)
        lines.append(text)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), key


class UpgradeResponse:
    """The server's answer to the upgrade, read as bytes arrive (see the module doc)."""

    def __init__(self):
        self._buf = bytearray()
        self.status = None        # int, once complete
        self.reason = ""
        self.headers = {}         # lower-case name -> value (repeated ones joined by ", ")
        self.leftover = b""       # bytes after the blank line

    def feed(self, data):
        """Add bytes; True once the head is complete.  ProtocolError if it is not HTTP."""
        if self.status is not None:
            raise ProtocolError("the upgrade answer is complete already")
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_RESPONSE_HEAD:
                raise ProtocolError("the server's answer has no end of head in %d bytes"
                                    % MAX_RESPONSE_HEAD)
            if len(self._buf) >= 5 and not self._buf.startswith(b"HTTP/"):
                raise ProtocolError("the server's answer is not HTTP: %r" % bytes(self._buf[:32]))
            return False
        head = bytes(self._buf[:end]).decode("latin-1")
        self.leftover = bytes(self._buf[end + 4:])
        self._buf = bytearray()
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        # isdigit() alone takes "1\u00b91" (superscript one), which int() refuses.
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() \
                or not parts[1].isascii() or len(parts[1]) != 3:
            raise ProtocolError("bad status line in the server's answer: %r" % status_line[:80])
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ProtocolError("bad header line in the server's answer: %r" % line[:80])
            name = name.lower()
            value = value.strip()
            self.headers[name] = "%s, %s" % (self.headers[name], value) \
                if name in self.headers else value
        self.status = int(parts[1])
        self.reason = parts[2] if len(parts) > 2 else ""
        return True


def check_accept(response, key):
    """None if ``response`` (complete, status 101) upgrades our request; else what is wrong."""
    if "websocket" not in response.headers.get("upgrade", "").lower():
        return "no 'Upgrade: websocket' in the 101 answer"
    tokens = [t.strip().lower() for t in response.headers.get("connection", "").split(",")]
    if "upgrade" not in tokens:
        return "no 'Connection: upgrade' in the 101 answer"
    if response.headers.get("sec-websocket-accept", "") != accept_value(key):
        return "wrong Sec-WebSocket-Accept in the 101 answer"
    return None
