"""The built-in decoy web site: what anyone who is not a valid client sees without an upstream.

It answers the way Debian's nginx does with its default ``nginx.conf`` and
default site (``root``, ``index index.html index.htm
index.nginx-debian.html``, ``try_files $uri $uri/ =404``, ``gzip on``) plus
``server_tokens off``: the same status lines, header order, error pages
(with nginx's padding for MSIE and Chrome), ``ETag`` / ``Last-Modified``
from the file, 304 for ``If-None-Match`` / ``If-Modified-Since``, single
byte ranges, the ``301`` to ``https://host/dir/`` for a directory without its
slash, gzip at level 1 for ``text/html``, and which answers keep the
connection.  tests/test_probe_suite.py runs 48 probes against this and
against a real nginx and lists where they still differ; ``[decoy] upstream``
(a real web server behind afb) differs nowhere.

Pure code on a parsed :class:`~afb.codec.http_head.Head` and the files of
the site: no sockets.  The site is ``[decoy] dir``, or afb's own
``afb/decoy/`` (one ``index.html``).  Unlike nginx, dot files and symlinks
leading out of the site are never served.
"""

import os
import time
import zlib
from email.utils import formatdate, parsedate_to_datetime

SERVER_HEADER = "nginx"
BUILTIN_SITE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "decoy")
INDEX_FILES = ("index.html", "index.htm", "index.nginx-debian.html")

REASONS = {
    200: "OK", 206: "Partial Content", 301: "Moved Permanently", 304: "Not Modified",
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Not Allowed",
    408: "Request Time-out", 414: "Request-URI Too Large",
    416: "Requested Range Not Satisfiable", 501: "Not Implemented",
    503: "Service Temporarily Unavailable",
    505: "HTTP Version Not Supported",
}
#: Error statuses after which nginx closes the connection (ngx_http_special_response_handler).
CLOSING = frozenset((400, 414, 501, 505))
PLAIN_HTTP_DETAIL = "The plain HTTP request was sent to HTTPS port"
_PADDING = b"<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n" * 6
#: A few lines of nginx's mime.types (the rest is application/octet-stream, its default_type).
MIME = {
    "html": "text/html", "htm": "text/html", "shtml": "text/html", "css": "text/css",
    "xml": "text/xml", "txt": "text/plain", "gif": "image/gif", "jpeg": "image/jpeg",
    "jpg": "image/jpeg", "png": "image/png", "svg": "image/svg+xml", "svgz": "image/svg+xml",
    "ico": "image/x-icon", "webp": "image/webp", "js": "application/javascript",
    "json": "application/json", "pdf": "application/pdf", "woff": "font/woff",
    "woff2": "font/woff2", "zip": "application/zip", "mp4": "video/mp4", "mp3": "audio/mpeg",
    "atom": "application/atom+xml", "rss": "application/rss+xml", "wasm": "application/wasm",
}


def http_date(ts):
    """``Tue, 01 Dec 2026 19:59:10 GMT``."""
    return formatdate(ts, usegmt=True)


def error_body(code, detail=None):
    """nginx's error page (``server_tokens off``), with a detail line for 400 variants."""
    title = "%d %s" % (code, detail or REASONS[code])
    extra = "<center>%s</center>\r\n" % detail if detail else ""
    return ("<html>\r\n<head><title>%s</title></head>\r\n<body>\r\n"
            "<center><h1>%d %s</h1></center>\r\n%s<hr><center>%s</center>\r\n"
            "</body>\r\n</html>\r\n" % (title, code, REASONS[code], extra, SERVER_HEADER)
            ).encode("ascii")


def _head_bytes(status, headers):
    lines = ["HTTP/1.1 %d %s" % (status, REASONS[status]), "Server: " + SERVER_HEADER,
             "Date: " + http_date(time.time())]
    lines += ["%s: %s" % item for item in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def error_response(code, detail=None, keep_alive=False, head=None):
    """A complete error answer as nginx sends it -> (bytes, keep_alive)."""
    keep_alive = keep_alive and code not in CLOSING
    body = error_body(code, detail)
    if head is not None and _wants_padding(head):
        body += _PADDING
    extra = []
    return _finish(head, code, "text/html", body, keep_alive, extra)


def _finish(head, code, ctype, body, keep_alive, extra, location=None):
    """Headers, optional gzip and HEAD handling of an nginx error/redirect page."""
    gz = head is not None and code in (403, 404) and _wants_gzip(head) and len(body) >= 20
    headers = [("Content-Type", ctype)]
    if gz:
        body = _chunked(_gzip(body))
        headers.append(("Transfer-Encoding", "chunked"))
    else:
        headers.append(("Content-Length", str(len(body))))
    if location:
        headers.append(("Location", location))
    headers.append(("Connection", "keep-alive" if keep_alive else "close"))
    headers += extra
    if gz:
        headers.append(("Content-Encoding", "gzip"))
    if head is not None and head.method == "HEAD":
        body = b""
    return _head_bytes(code, headers) + body, keep_alive


def _wants_padding(head):
    agent = head.get("user-agent") or ""
    return head.version >= (1, 0) and (("MSIE " in agent and "Opera" not in agent)
                                       or "Chrome/" in agent)


def _wants_gzip(head):
    if head.version < (1, 1) or head.method == "HEAD" or head.get("via") is not None:
        return False
    for token in head.tokens("accept-encoding"):
        name, _, params = token.partition(";")
        if name.strip() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _gzip(data):
    """gzip as nginx's gzip filter makes it: level 1, window and memLevel cut to the size."""
    wbits, memlevel = 15, 8
    while len(data) < (1 << (wbits - 1)) - 262:
        wbits -= 1
        memlevel -= 1
    deflate = zlib.compressobj(1, zlib.DEFLATED, -max(wbits, 9), max(memlevel, 1))
    packed = deflate.compress(data) + deflate.flush()
    trailer = (zlib.crc32(data).to_bytes(4, "little")
               + (len(data) & 0xFFFFFFFF).to_bytes(4, "little"))
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\x03" + packed + trailer


def _chunked(data):
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"


class Decoy:
    """The built-in decoy site over *root* (None: afb's built-in page)."""

    def __init__(self, root=None):
        self.root = os.path.realpath(root or BUILTIN_SITE)

    def respond(self, head, path, local_host):
        """The answer to a request for the clean *path* -> (bytes, keep_alive)."""
        keep = head.keep_alive
        if head.version == (0, 9):
            found = self._file(path.rstrip("/") + "/index.html" if path.endswith("/") else path)
            return (found[0] if found else error_body(404)), False
        if head.method == "TRACE":
            return error_response(405, head=head)
        allowed = head.method in ("GET", "HEAD", "POST")
        real = self._real(path)
        if real is not None and os.path.isfile(real) and not path.endswith("/"):
            return self._static(head, real, keep, allowed)
        if real is not None and os.path.isdir(real):
            if not allowed:
                return error_response(405, keep_alive=keep, head=head)
            if not path.endswith("/"):
                location = "https://%s%s/" % (head.host or local_host, path)
                query = head.uri.partition("?")[2]
                if query:
                    location += "?" + query
                return _finish(head, 301, "text/html", error_body(301), keep, [], location)
            for name in INDEX_FILES:
                index = os.path.join(real, name)
                if os.path.isfile(index):
                    return self._static(head, index, keep, allowed)
            return error_response(403, keep_alive=keep, head=head)
        return error_response(404, keep_alive=keep, head=head)

    def _real(self, path):
        """The file system path of *path* inside the site, or None."""
        parts = [p for p in path.split("/") if p]
        if any(p.startswith(".") or "\\" in p for p in parts):
            return None
        real = os.path.realpath(os.path.join(self.root, *parts))
        if real != self.root and not real.startswith(self.root + os.sep):
            return None
        return real

    def _file(self, path):
        real = self._real(path)
        if real is None or not os.path.isfile(real):
            return None
        with open(real, "rb") as handle:
            return handle.read(), os.stat(real)

    def _static(self, head, real, keep, allowed):
        if not allowed or head.method == "POST":
            return error_response(405, keep_alive=keep, head=head)
        try:
            with open(real, "rb") as handle:
                body = handle.read()
            mtime = int(os.stat(real).st_mtime)
        except OSError:
            return error_response(404, keep_alive=keep, head=head)
        ext = os.path.splitext(real)[1][1:].lower()
        ctype = MIME.get(ext, "application/octet-stream")
        etag = '"%x-%x"' % (mtime, len(body))
        last_modified = http_date(mtime)
        conn = ("Connection", "keep-alive" if keep else "close")
        if _not_modified(head, etag, mtime):
            return _head_bytes(304, [("Last-Modified", last_modified), conn,
                                     ("ETag", etag)]), keep
        if ctype == "text/html" and _wants_gzip(head) and len(body) >= 20:
            data = b"" if head.method == "HEAD" else _chunked(_gzip(body))
            head_bytes = _head_bytes(200, [
                ("Content-Type", ctype), ("Last-Modified", last_modified),
                ("Transfer-Encoding", "chunked"), conn, ("ETag", "W/" + etag),
                ("Content-Encoding", "gzip")])
            return head_bytes + data, keep
        span = _range(head.get("range"), len(body))
        if span == "unsatisfiable":
            return _finish(head, 416, "text/html", error_body(416), keep,
                           [("Content-Range", "bytes */%d" % len(body))])
        if span is not None:
            first, last = span
            part = body[first:last + 1]
            return _head_bytes(206, [("Content-Type", ctype), ("Content-Length", str(len(part))),
                                     ("Last-Modified", last_modified), conn, ("ETag", etag),
                                     ("Content-Range", "bytes %d-%d/%d" % (first, last, len(body)))]
                               ) + (b"" if head.method == "HEAD" else part), keep
        return _head_bytes(200, [("Content-Type", ctype), ("Content-Length", str(len(body))),
                                 ("Last-Modified", last_modified), conn, ("ETag", etag),
                                 ("Accept-Ranges", "bytes")]
                           ) + (b"" if head.method == "HEAD" else body), keep


def _not_modified(head, etag, mtime):
    ims, inm = head.get("if-modified-since"), head.get("if-none-match")
    if ims is None and inm is None:
        return False
    if ims is not None:
        try:
            if int(parsedate_to_datetime(ims).timestamp()) != mtime:
                return False
        except (TypeError, ValueError, OverflowError):
            return False
    if inm is not None:
        tags = [t.strip() for t in inm.split(",")]
        bare = etag.strip('"')
        if "*" not in tags and not any(t.removeprefix("W/").strip('"') == bare for t in tags):
            return False
    return True


def _range(value, size):
    """(first, last) of a single ``bytes=`` range, "unsatisfiable", or None (whole file)."""
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    first, dash, last = value[6:].strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) \
            or (last and not last.isdigit()):
        return None
    if not first:
        n = int(last)
        return (max(0, size - n), size - 1) if n and size else "unsatisfiable"
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        return "unsatisfiable"
    if end < start:
        return None
    return start, end


__all__ = ["Decoy", "error_response", "error_body", "http_date", "SERVER_HEADER",
           "PLAIN_HTTP_DETAIL", "REASONS"]
