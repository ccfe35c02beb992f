"""The decoy web site: what anyone who is not a valid client sees.

A small static site (the built-in page, or the files of ``[decoy] dir``)
answered the way nginx would: ``Server: nginx``, the same status, headers and
body for a probe as for a plain request of that method and path, and error
pages in nginx's format.  :mod:`afb.transport.wsserver` sends every request
it does not upgrade here.
"""

import mimetypes
import os
import time

from gevent.pywsgi import format_date_time

SERVER_HEADER = "nginx"
_BUILTIN_INDEX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "decoy", "index.html")
#: Request bodies larger than this are not read: the connection is closed instead.
MAX_DISCARD = 64 * 1024

_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    405: "Not Allowed",
    408: "Request Time-out",
    414: "Request-URI Too Large",
}


def _error_page(code):
    title = "%d %s" % (code, _REASONS[code])
    return ("<html>\r\n<head><title>%s</title></head>\r\n<body>\r\n"
            "<center><h1>%s</h1></center>\r\n<hr><center>%s</center>\r\n"
            "</body>\r\n</html>\r\n" % (title, title, SERVER_HEADER)).encode("ascii")


def http_date(ts):
    date = format_date_time(ts)
    return date.decode("latin-1") if isinstance(date, bytes) else date


def raw_error_response(code):
    """A complete nginx-like error response that closes the connection."""
    body = _error_page(code)
    head = ("HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\nContent-Type: text/html\r\n"
            "Content-Length: %d\r\nConnection: close\r\n\r\n"
            % (code, _REASONS[code], SERVER_HEADER, http_date(time.time()), len(body)))
    return head.encode("latin-1") + body


class DecoyApp:
    """WSGI app of a plain static site, with nginx-looking answers.

    Serves files under *root* (no traversal, no dotfiles, symlinks may not
    leave *root*), or the built-in ``afb/decoy/index.html`` for ``/`` and
    ``/index.html`` when *root* is None.  GET and HEAD only, else 405.
    """

    def __init__(self, root=None):
        self.root = os.path.realpath(root) if root else None
        with open(_BUILTIN_INDEX, "rb") as f:
            self._index = f.read()
        self._index_mtime = os.stat(_BUILTIN_INDEX).st_mtime

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        keep_alive = _keep_alive(environ)
        if method not in ("GET", "HEAD"):
            return self._error(start_response, 405, keep_alive, method)
        found = self._lookup(environ.get("PATH_INFO") or "/")
        if found is None:
            return self._error(start_response, 404, keep_alive, method)
        body, ctype, mtime = found
        headers = [
            ("Server", SERVER_HEADER),
            ("Date", http_date(time.time())),
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("Last-Modified", http_date(mtime)),
            ("Connection", "keep-alive" if keep_alive else "close"),
            ("ETag", '"%x-%x"' % (int(mtime), len(body))),
            ("Accept-Ranges", "bytes"),
        ]
        start_response("200 OK", headers)
        return [] if method == "HEAD" else [body]

    def _error(self, start_response, code, keep_alive, method):
        body = _error_page(code)
        start_response("%d %s" % (code, _REASONS[code]), [
            ("Server", SERVER_HEADER),
            ("Date", http_date(time.time())),
            ("Content-Type", "text/html"),
            ("Content-Length", str(len(body))),
            ("Connection", "keep-alive" if keep_alive else "close"),
        ])
        return [] if method == "HEAD" else [body]

    def _lookup(self, path):
        """``(body, content_type, mtime)`` for *path*, or None."""
        if self.root is None:
            if path in ("/", "/index.html"):
                return self._index, "text/html", self._index_mtime
            return None
        real = self._resolve(path)
        if real is None:
            return None
        try:
            with open(real, "rb") as f:
                body = f.read()
            mtime = os.stat(real).st_mtime
        except OSError:
            return None
        ctype = mimetypes.guess_type(real)[0] or "application/octet-stream"
        return body, ctype, mtime

    def _resolve(self, path):
        if "\0" in path or "\\" in path or not path.startswith("/"):
            return None
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if any(p == ".." or p.startswith(".") for p in parts):
            return None
        full = os.path.join(self.root, *parts)
        if os.path.isdir(full):
            full = os.path.join(full, "index.html")
        real = os.path.realpath(full)
        if real != self.root and not real.startswith(self.root + os.sep):
            return None
        if not os.path.isfile(real):
            return None
        return real


def _keep_alive(environ):
    conn = header_tokens(environ.get("HTTP_CONNECTION", ""))
    if environ.get("SERVER_PROTOCOL") == "HTTP/1.1":
        return "close" not in conn
    return "keep-alive" in conn


def header_tokens(value):
    return [t.strip().lower() for t in value.split(",") if t.strip()]
