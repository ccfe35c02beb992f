"""The first request head on the server's port, sans-IO, judged the way nginx judges it.

The server decides on raw bytes what a connection is: a tunnel upgrade, or
something for the decoy (the built-in one, or a real web server behind,
which must get the bytes unchanged).  So the head is read here, not by a
WSGI server: :class:`HeadReader` takes bytes as they come and returns a
:class:`Head` once the blank line has arrived, or raises
:class:`~afb.errors.HttpRequestError` carrying the status nginx answers with
(400, 414, 505, or 400 "Request Header Or Cookie Too Large").

The rules and limits are nginx's (1.22-1.26, measured against Debian's
nginx with tests/http_probes.py): empty lines before the request line are
skipped; a method is ``[A-Z_-]+`` and anything else is refused as soon as it
arrives (binary bytes get their 400 without waiting for a newline); the
target is origin-form or absolute-form; ``HTTP/0.9`` is a bare ``GET /path``;
a major version above 1 is 505; a request line longer than 8 KiB is 414, a
header line longer than 8 KiB or a head over 32 KiB is "Request Header Or
Cookie Too Large" (``large_client_header_buffers 4 8k``); a space or control
byte in a header name is 400 (nginx >= 1.21.1), other odd names are skipped
(``ignore_invalid_headers``); HTTP/1.1 needs exactly one ``Host``.
:func:`normalize_path` is nginx's URI clean-up (%-decoding, ``//``, ``.``,
``..``), which the decoy uses.
"""

import re

from afb.errors import HttpRequestError

#: Longest request line / header line, and the whole head (large_client_header_buffers 4 8k).
MAX_LINE = 8192
MAX_HEAD = 4 * 8192

TOO_LARGE = "Request Header Or Cookie Too Large"

_METHOD = re.compile(rb"[A-Z_-]*\Z")
_VERSION = re.compile(rb"HTTP/([0-9]{1,3})\.([0-9]{1,3})\Z")
_NAME_OK = re.compile(rb"[A-Za-z0-9-]+\Z")
_NAME_FATAL = re.compile(rb"[\x00-\x20\x7f]")
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)\Z", re.S)
_HOST = re.compile(r"[A-Za-z0-9._\-\[\]:]*\Z")


class Head:
    """A parsed request head.  Header names are lower-cased; values are str (latin-1)."""

    __slots__ = ("method", "target", "version", "headers", "raw", "host", "uri")

    def __init__(self, method, target, version, headers, raw):
        self.method = method          # str, e.g. "GET"
        self.target = target          # str as sent (origin-form or absolute-form)
        self.version = version        # (major, minor); (0, 9) for a simple request
        self.headers = headers        # [(name, value)] in order, invalid names left out
        self.raw = raw                # the head's bytes as received, blank line included
        self.host = None              # Host header or the absolute URI's host, lower case
        self.uri = target             # origin-form part of the target ("/" for none)

    def get(self, name, default=None):
        """The value of header *name* (lower case); repeated headers joined with ", "."""
        values = [v for n, v in self.headers if n == name]
        return ", ".join(values) if values else default

    def tokens(self, name):
        """Comma-separated tokens of header *name*, stripped and lower-cased."""
        return [t.strip().lower() for t in (self.get(name) or "").split(",") if t.strip()]

    @property
    def keep_alive(self):
        """Whether the client asks to keep the connection (HTTP/1.1 unless close)."""
        connection = self.tokens("connection")
        if self.version >= (1, 1):
            return "close" not in connection
        return self.version == (1, 0) and "keep-alive" in connection

    def environ(self, remote_addr):
        """A WSGI-like environ of the keys the tunnel's ``authorize`` reads."""
        env = {"REQUEST_METHOD": self.method, "PATH_INFO": self.uri.partition("?")[0],
               "QUERY_STRING": self.uri.partition("?")[2], "REMOTE_ADDR": remote_addr,
               "SERVER_PROTOCOL": "HTTP/%d.%d" % self.version}
        for name, _value in self.headers:
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in env:
                env[key] = self.get(name)
        return env


class HeadReader:
    """Feed bytes with :meth:`feed`; a :class:`Head` once complete, else None.

    ``buffered`` holds every byte received (the head and what followed it),
    for a caller that hands the connection on unchanged; ``leftover`` the
    bytes after the head once it is complete.
    """

    def __init__(self):
        self.buffered = bytearray()
        self.leftover = b""
        self._skip = 0          # leading CR/LF bytes before the request line

    def feed(self, data):
        self.buffered += data
        buf = self.buffered
        while self._skip < len(buf) and buf[self._skip] in b"\r\n":
            self._skip += 1
        start = self._skip
        end = buf.find(b"\n", start)
        if end < 0:
            _check_partial_line(bytes(buf[start:start + MAX_LINE + 1]))
            return None
        line = bytes(buf[start:end]).rstrip(b"\r")
        method, target, version = _request_line(line)
        if version == (0, 9):
            return self._done(Head(method, target, version, [], bytes(buf[:end + 1])), end + 1)
        pos = end + 1
        headers = []
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if len(buf) - pos > MAX_LINE or len(buf) - start > MAX_HEAD:
                    raise HttpRequestError(TOO_LARGE, http_status=400)
                return None
            header = bytes(buf[pos:nl])
            pos = nl + 1
            if header.endswith(b"\r"):
                header = header[:-1]
            if len(header) > MAX_LINE or pos - start > MAX_HEAD:
                raise HttpRequestError(TOO_LARGE, http_status=400)
            if not header:
                break
            parsed = _header_line(header)
            if parsed is not None:
                headers.append(parsed)
        head = Head(method, target, version, headers, bytes(buf[:pos]))
        _check_head(head)
        return self._done(head, pos)

    def _done(self, head, pos):
        self.leftover = bytes(self.buffered[pos:])
        return head


def _bad(why):
    return HttpRequestError(why, http_status=400)


def _check_partial_line(part):
    """Refuse a request line as soon as its start cannot be valid (nginx does)."""
    method, space, _rest = part.partition(b" ")
    if not _METHOD.match(method):
        raise _bad("invalid method")
    if not space and len(part) > MAX_LINE:
        raise HttpRequestError("request line too long", http_status=414)
    if len(part) > MAX_LINE:
        raise HttpRequestError("request line too long", http_status=414)


def _request_line(line):
    if len(line) > MAX_LINE:
        raise HttpRequestError("request line too long", http_status=414)
    if b"\r" in line or b"\0" in line:
        raise _bad("control byte in the request line")
    parts = line.split(b" ")
    parts = [p for p in parts if p] if len(parts) > 3 else parts
    if len(parts) == 2 and parts[0] == b"GET":      # HTTP/0.9 simple request
        method, target, version = parts[0], parts[1], (0, 9)
    elif len(parts) == 3:
        method, target = parts[0], parts[1]
        match = _VERSION.match(parts[2])
        if not match:
            raise _bad("bad HTTP version")
        version = (int(match.group(1)), int(match.group(2)))
        if version[0] > 1:
            raise HttpRequestError("unsupported HTTP version", http_status=505)
        if version[0] == 0:
            raise _bad("bad HTTP version")
    else:
        raise _bad("malformed request line")
    if not method or not _METHOD.match(method):
        raise _bad("invalid method")
    if not (target.startswith(b"/") or _ABSOLUTE.match(target)):
        raise _bad("request target is neither a path nor an absolute URI")
    if re.search(rb"[\x00-\x20\x7f]", target):
        raise _bad("control byte in the target")
    return method.decode("ascii"), target.decode("latin-1"), version


def _header_line(line):
    name, colon, value = line.partition(b":")
    if not colon or not name:
        raise _bad("header line without a name")
    if _NAME_FATAL.search(name) or b"\0" in value or b"\r" in value:
        raise _bad("space or control byte in a header")
    if not _NAME_OK.match(name):
        return None                              # ignore_invalid_headers on
    return name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")


def _check_head(head):
    hosts = [v for n, v in head.headers if n == "host"]
    if len(hosts) > 1:
        raise _bad("two Host headers")
    host = hosts[0] if hosts else None
    absolute = _ABSOLUTE.match(head.target.encode("latin-1"))
    if absolute:
        host = absolute.group(2).decode("latin-1")
        head.uri = absolute.group(3).decode("latin-1") or "/"
        if not head.uri.startswith("/"):
            head.uri = "/" + head.uri
    if host is not None:
        head.host = _valid_host(host)
    elif head.version == (1, 1):
        raise _bad("no Host header")
    lengths = [v for n, v in head.headers if n == "content-length"]
    if len(lengths) > 1 or (lengths and _content_length(lengths[0]) is None):
        raise _bad("bad Content-Length")
    te = head.get("transfer-encoding")
    if te is not None:
        if head.version < (1, 1) or lengths:
            raise _bad("Transfer-Encoding with HTTP/1.0 or Content-Length")
        if te.strip().lower() != "chunked":
            raise HttpRequestError("unknown Transfer-Encoding", http_status=501)


def _valid_host(host):
    """nginx's ngx_http_validate_host: lower case, port and trailing dot dropped."""
    host = host.strip().lower()
    if not _HOST.match(host) or ".." in host or host.startswith("."):
        raise _bad("invalid host")
    if host.startswith("["):
        host = host[:host.find("]") + 1]
    else:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _content_length(value):
    """The int of a Content-Length value nginx takes (ASCII digits, below 2**63), else None.

    ``str.isdigit`` alone also takes "\u00b2" (a latin-1 superscript two), and
    ``int`` refuses more than 4300 digits: both raised ValueError in
    :func:`body_length` (seen while writing bench/fuzz's target)."""
    digits = value.lstrip("0") or "0"
    if not (value.isascii() and value.isdigit()) or len(digits) > 19 or int(digits) >= 1 << 63:
        return None
    return int(digits)


def body_length(head):
    """Bytes of request body after *head*: an int, or ``"chunked"``."""
    if head.get("transfer-encoding") is not None:
        return "chunked"
    return _content_length(head.get("content-length") or "0")


_HEX = re.compile(r"%([0-9A-Fa-f]{2})")


def normalize_path(uri):
    """nginx's clean path of *uri* (query dropped): %-decoded, ``//`` merged, dot
    segments resolved; HttpRequestError(400) for a bad escape or ``..`` above the root."""
    path = uri.partition("?")[0].partition("#")[0]
    if re.search(r"%(?![0-9A-Fa-f]{2})", path):
        raise _bad("bad %-escape")
    raw = _HEX.sub(lambda m: chr(int(m.group(1), 16)), path)
    if "\0" in raw:
        raise _bad("NUL in the path")
    out = []
    for segment in raw.split("/")[1:]:
        if segment == "..":
            if not out:
                raise _bad("path leaves the root")
            out.pop()
        elif segment not in ("", "."):
            out.append(segment)
    tail = raw.endswith(("/", "/.", "/..")) and out is not None
    path = "/" + "/".join(out)
    if tail and path != "/":
        path += "/"
    return path


class ChunkedSkipper:
    """Sans-IO reader of a chunked body that only finds its end.

    :meth:`feed` returns the bytes after the body once it is over, else None;
    HttpRequestError(400) for bad framing.
    """

    def __init__(self):
        self._buf = bytearray()
        self._left = 0          # data bytes (and their CRLF) still to skip
        self._trailers = False

    def feed(self, data):
        buf = self._buf
        buf += data
        while True:
            if self._left:
                take = min(self._left, len(buf))
                del buf[:take]
                self._left -= take
                if self._left:
                    return None
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > 4096:
                    raise _bad("chunk line too long")
                return None
            line = bytes(buf[:nl]).rstrip(b"\r")
            del buf[:nl + 1]
            if self._trailers:
                if not line:
                    return bytes(buf)
                continue
            size = line.partition(b";")[0].strip()
            if not size or not re.match(rb"[0-9A-Fa-f]{1,15}\Z", size):
                raise _bad("bad chunk size")
            n = int(size, 16)
            if n == 0:
                self._trailers = True
            else:
                self._left = n + 2


__all__ = ["Head", "HeadReader", "ChunkedSkipper", "normalize_path", "body_length",
           "MAX_LINE", "MAX_HEAD", "TOO_LARGE"]
