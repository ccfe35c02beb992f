"""HTTP proxy requests on the local proxy port, sans-IO.

Two request forms are served:

* ``CONNECT host:port HTTP/1.x`` -- the caller answers ``200`` and tunnels;
* absolute-form ``GET http://host[:port]/path HTTP/1.x`` (any method) --
  the head is rewritten to origin-form and forwarded on a fresh stream with
  ``Connection: close``, so one client connection carries one request.

Everything else is refused with :class:`~afb.errors.HttpProxyError`:
400 malformed (also ``https://`` absolute-form and origin-form), 405
asterisk-form (``OPTIONS *``), 431 head larger than ``max_head``, 505 an HTTP
version other than 1.0/1.1.  Bare ``\\n`` line ends are accepted; obsolete line
folding, NUL and stray CR are not.
"""

import http
import re
from dataclasses import dataclass

from afb.codec.address import encode_address
from afb.errors import AfbError, HttpProxyError

DEFAULT_MAX_HEAD = 16384

#: Headers that concern only the client-proxy hop and are not forwarded.
HOP_BY_HOP = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization",
    b"proxy-authenticate", b"te", b"trailer",
))

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
_REG_NAME = re.compile(r"[A-Za-z0-9._~\-]+\Z")
# Field values: visible ASCII, obs-text, space and tab; no other controls.
_BAD_VALUE_CHAR = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class ProxyRequest:
    """A parsed proxy request; ``forward`` is the head to send upstream."""

    method: str
    host: str
    port: int
    forward: bytes


def sniff(first_byte):
    """Guess the local proxy protocol from the first byte a client sends."""
    if first_byte == 0x05:
        return "socks5"
    if first_byte == 0x04:
        return "socks4"
    if 0x41 <= first_byte <= 0x5A:
        return "http"
    return None


def response(status, reason=None, body=b""):
    """An HTTP/1.1 response head (and body) for the local proxy client.

    2xx answers have no headers (``200 Connection established``); errors carry
    ``Content-Type: text/plain``, ``Content-Length`` and ``Connection: close``.
    """
    if reason is None:
        reason = "Connection established" if status == 200 else _phrase(status)
    reason = " ".join(reason.split())  # no CR/LF from a caller's message
    line = ("HTTP/1.1 %d %s\r\n" % (status, reason)).encode("latin-1", "replace")
    if 200 <= status < 300:
        return line + b"\r\n" + body
    if not body:
        body = ("%d %s\n" % (status, reason)).encode("utf-8")
    headers = (
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % len(body)
    )
    return line + headers + body


class HttpProxyParser:
    """Collects one request head and parses it into a :class:`ProxyRequest`.

    After a request is returned, ``leftover`` holds the bytes that followed
    the head (a request body or pipelined data), ``headers`` the received
    ``(name, value)`` pairs as str, and ``version`` e.g. ``"HTTP/1.1"``.
    """

    def __init__(self, max_head=DEFAULT_MAX_HEAD):
        self.max_head = max_head
        self.leftover = b""
        self.headers = []
        self.version = None
        self._buf = bytearray()
        self._scanned = 0
        self._finished = False

    def receive(self, data):
        """Feed bytes; return the request once the head is complete, else None."""
        if self._finished:
            raise HttpProxyError("HTTP proxy request already parsed")
        self._buf += data
        match = _HEAD_END.search(self._buf, max(0, self._scanned - 3))
        if match is None:
            self._scanned = len(self._buf)
            if len(self._buf) > self.max_head:
                self._finished = True
                raise _too_large(self.max_head)
            return None
        self._finished = True
        if match.end() > self.max_head:
            raise _too_large(self.max_head)
        head = bytes(self._buf[:match.start()])
        self.leftover = bytes(self._buf[match.end():])
        self._buf = bytearray()
        return self._parse(head)

    def _parse(self, head):
        if b"\x00" in head:
            raise HttpProxyError("NUL byte in request head", http_status=400)
        # The head-end match already took the last line's CR; strip one per other line.
        lines = head.split(b"\n")
        lines[:-1] = [line[:-1] if line.endswith(b"\r") else line for line in lines[:-1]]
        if any(b"\r" in line for line in lines):
            raise HttpProxyError("stray CR in request head", http_status=400)
        method, target, version = _parse_request_line(lines[0])
        headers = [_parse_header(line) for line in lines[1:]]
        _check_framing(headers)
        self.version = version.decode("ascii")
        self.headers = [(n.decode("ascii"), v.decode("latin-1")) for n, v in headers]

        if method == b"CONNECT":
            host, port = _parse_authority(target, None)
            return ProxyRequest("CONNECT", host, port, b"")
        if target == b"*":
            raise HttpProxyError("asterisk-form %s * is not proxied" % method.decode(),
                                 http_status=405)
        scheme, sep, rest = target.partition(b"://")
        if not sep or not _TOKEN.match(scheme):
            raise HttpProxyError("origin-form request sent to a proxy; "
                                 "use CONNECT or an absolute URL", http_status=400)
        if scheme.lower() != b"http":
            raise HttpProxyError("cannot proxy %s:// absolute URLs; use CONNECT"
                                 % scheme.decode("latin-1").lower(), http_status=400)
        split = re.search(rb"[/?#]", rest)
        authority = rest[:split.start()] if split else rest
        path = rest[split.start():] if split else b""
        path = path.partition(b"#")[0]
        if not path.startswith(b"/"):
            path = b"/" + path
        host, port = _parse_authority(authority, 80)
        forward = _rewrite_head(method, path, version, authority, headers)
        return ProxyRequest(method.decode("ascii"), host, port, forward)


# --- helpers ----------------------------------------------------------------

def _phrase(status):
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _too_large(limit):
    return HttpProxyError("request head larger than %d bytes" % limit, http_status=431)


def _parse_request_line(line):
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise HttpProxyError("malformed request line %r" % line[:100], http_status=400)
    method, target, version = parts
    match = _VERSION.match(version)
    if match is None:
        raise HttpProxyError("malformed HTTP version %r" % version[:20], http_status=400)
    if match.group(1) != b"1" or match.group(2) not in (b"0", b"1"):
        raise HttpProxyError("HTTP version %s not supported" % version.decode(), http_status=505)
    if not _TOKEN.match(method):
        raise HttpProxyError("malformed method %r" % method[:20], http_status=400)
    if any(b <= 0x20 or b >= 0x7F for b in target):
        raise HttpProxyError("invalid character in request target", http_status=400)
    return method, target, version


def _parse_header(line):
    if line[:1] in (b" ", b"\t"):
        raise HttpProxyError("obsolete header line folding", http_status=400)
    name, sep, value = line.partition(b":")
    if not sep or not _TOKEN.match(name):
        raise HttpProxyError("malformed header line %r" % line[:100], http_status=400)
    value = value.strip(b" \t")
    if _BAD_VALUE_CHAR.search(value):
        raise HttpProxyError("control character in header %s" % name.decode(), http_status=400)
    return name, value


def _check_framing(headers):
    """Refuse heads whose body length is ambiguous (request smuggling)."""
    lengths = {v for n, v in headers if n.lower() == b"content-length"}
    chunked = any(n.lower() == b"transfer-encoding" for n, v in headers)
    if len(lengths) > 1 or (lengths and chunked):
        raise HttpProxyError("ambiguous request body length", http_status=400)
    if lengths and not next(iter(lengths)).isdigit():
        raise HttpProxyError("invalid Content-Length", http_status=400)


def _parse_authority(authority, default_port):
    """``host[:port]`` or ``[v6]:port`` -> ``(host, port)``; host is validated."""
    text = authority.decode("latin-1")
    if "@" in text:
        raise HttpProxyError("user info in proxy target is not allowed", http_status=400)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise HttpProxyError("malformed IPv6 authority %r" % text[:100], http_status=400)
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text = text.partition(":")
        if not sep:
            port_text = None
        if not _REG_NAME.match(host):
            raise HttpProxyError("invalid host %r" % host[:100], http_status=400)
    if port_text is None:
        if default_port is None:
            raise HttpProxyError("CONNECT target %r has no port" % text[:100], http_status=400)
        port = default_port
    elif _PORT.match(port_text) and 0 < int(port_text) <= 0xFFFF:
        port = int(port_text)
    else:
        raise HttpProxyError("invalid port in %r" % text[:100], http_status=400)
    try:
        encode_address("[%s]" % host if text.startswith("[") else host, port)
    except AfbError as exc:
        raise HttpProxyError("invalid host %r: %s" % (host[:100], exc), http_status=400) from None
    return host, port


def _rewrite_head(method, path, version, authority, headers):
    """Origin-form head: hop-by-hop headers dropped, Host set, Connection: close."""
    dropped = set(HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == b"connection":
            dropped.update(t.strip().lower() for t in value.split(b","))
    out = [b"%s %s %s" % (method, path, version), b"Host: " + authority]
    out += [b"%s: %s" % (n, v) for n, v in headers
            if n.lower() not in dropped and n.lower() != b"host"]
    out.append(b"Connection: close")
    return b"\r\n".join(out) + b"\r\n\r\n"
