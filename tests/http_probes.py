"""The HTTP edge-case probes of issue 9 (item 10) as data, and a runner that records answers.

Each probe is a named raw request (bytes after TLS, or plain bytes sent to the
TLS port).  :func:`run` sends it and records what a prober sees: every byte of
the answer (``Date`` values blanked) and whether the server closed the
connection within a short quiet period.  The same probes go to afb and to a
real nginx serving the same certificate and site; see tests/test_probe_suite.py.
"""

import re
import socket
import ssl
import time

import gevent

HOST = "localhost"
MSIE = "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)"
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
WS = ("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")


def req(line, *headers, host=HOST, body=b""):
    lines = [line] + (["Host: " + host] if host else []) + list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


#: name -> (transport, raw bytes).  transport: "tls" (after the handshake) or "plain".
PROBES = {
    "GET /": ("tls", req("GET / HTTP/1.1")),
    "HEAD /": ("tls", req("HEAD / HTTP/1.1")),
    "GET /index.html": ("tls", req("GET /index.html HTTP/1.1")),
    "GET missing": ("tls", req("GET /missing.html HTTP/1.1")),
    "HEAD missing": ("tls", req("HEAD /missing.html HTTP/1.1")),
    "HTTP/1.0 no Host": ("tls", req("GET / HTTP/1.0", host=None)),
    "HTTP/1.0 keep-alive": ("tls", req("GET / HTTP/1.0", "Connection: keep-alive")),
    "Connection: close": ("tls", req("GET / HTTP/1.1", "Connection: close")),
    "pipelined two": ("tls", req("GET /index.html HTTP/1.1") + req("GET /missing HTTP/1.1")),
    "query string": ("tls", req("GET /?a=1&b=%20 HTTP/1.1")),
    "no Host": ("tls", req("GET / HTTP/1.1", host=None)),
    "two Host": ("tls", req("GET / HTTP/1.1", "Host: other.example")),
    "HTTP/2.0": ("tls", req("GET / HTTP/2.0")),
    "lowercase method": ("tls", req("get / HTTP/1.1")),
    "/../ above root": ("tls", req("GET /../index.html HTTP/1.1")),
    "/docs/../": ("tls", req("GET /docs/../index.html HTTP/1.1")),
    "//index.html": ("tls", req("GET //index.html HTTP/1.1")),
    "/%zz": ("tls", req("GET /%zz HTTP/1.1")),
    "/%69ndex.html": ("tls", req("GET /%69ndex.html HTTP/1.1")),
    "/./index.html": ("tls", req("GET /./index.html HTTP/1.1")),
    "absolute URI": ("tls", req("GET https://localhost/index.html HTTP/1.1")),
    "absolute URI other host": ("tls", req("GET http://other.example/ HTTP/1.1")),
    "HTTP/0.9": ("tls", b"GET /\r\n"),
    "Range": ("tls", req("GET / HTTP/1.1", "Range: bytes=0-9")),
    "Range suffix": ("tls", req("GET / HTTP/1.1", "Range: bytes=-10")),
    "Range unsatisfiable": ("tls", req("GET / HTTP/1.1", "Range: bytes=900000-")),
    "If-None-Match": ("tls", None),      # filled in with the page's ETag by the test
    "If-Modified-Since": ("tls", None),  # ... and its Last-Modified
    "9 KB header": ("tls", req("GET / HTTP/1.1", "X-Big: " + "a" * 9000)),
    "150 headers": ("tls", req("GET / HTTP/1.1", *["X-H%d: %d" % (i, i) for i in range(150)])),
    "space in header name": ("tls", req("GET / HTTP/1.1", "Bad Name: x")),
    "binary without newline": ("tls", b"\x8f\x00\x01\xfe\xffbinary\x00"),
    "leading blank line": ("tls", b"\r\n" + req("GET / HTTP/1.1")),
    "TRACE": ("tls", req("TRACE / HTTP/1.1")),
    "CONNECT": ("tls", req("CONNECT example.com:443 HTTP/1.1")),
    "OPTIONS *": ("tls", req("OPTIONS * HTTP/1.1")),
    "POST missing": ("tls", req("POST /missing HTTP/1.1", "Content-Length: 5", body=b"hello")),
    "POST /index.html": ("tls", req("POST /index.html HTTP/1.1", "Content-Length: 5",
                                    body=b"hello")),
    "DELETE /": ("tls", req("DELETE / HTTP/1.1")),
    "chunked GET": ("tls", req("GET / HTTP/1.1", "Transfer-Encoding: chunked",
                               body=b"5\r\nhello\r\n0\r\n\r\n")),
    "MSIE 404": ("tls", req("GET /missing HTTP/1.1", "User-Agent: " + MSIE)),
    "Chrome 404": ("tls", req("GET /missing HTTP/1.1", "User-Agent: " + CHROME)),
    "directory without slash": ("tls", req("GET /docs HTTP/1.1")),
    "directory with slash": ("tls", req("GET /docs/ HTTP/1.1")),
    "gzip": ("tls", req("GET / HTTP/1.1", "Accept-Encoding: gzip, deflate")),
    "9 KB URI": ("tls", req("GET /" + "a" * 9000 + " HTTP/1.1")),
    "WebSocket upgrade on /": ("tls", req("GET / HTTP/1.1", *WS)),
    "plain HTTP to the TLS port": ("plain", req("GET / HTTP/1.1")),
}

_DATE = re.compile(rb"(?m)^(Date: )[^\r\n]*")
_CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
_CTX.check_hostname = False
_CTX.verify_mode = ssl.CERT_NONE


def with_validators(probes, etag, last_modified):
    """The probes with the conditional requests filled in for the page's ETag / date."""
    probes = dict(probes)
    probes["If-None-Match"] = ("tls", req("GET / HTTP/1.1", "If-None-Match: " + etag))
    probes["If-Modified-Since"] = ("tls", req("GET / HTTP/1.1",
                                              "If-Modified-Since: " + last_modified))
    return probes


def run(port, transport, data, quiet=1.0, limit=5.0):
    """``(answer bytes with Date blanked, 'closed' | 'open' | 'reset')`` of one probe."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=limit)
    try:
        sock = _CTX.wrap_socket(raw, server_hostname=HOST) if transport == "tls" else raw
    except OSError:
        raw.close()
        return b"", "no TLS"
    got = bytearray()
    state = "open"
    try:
        sock.sendall(data)
        deadline = time.monotonic() + limit
        sock.settimeout(quiet)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except (ConnectionResetError, ssl.SSLError):
                state = "reset"
                break
            if not chunk:
                state = "closed"
                break
            got += chunk
    finally:
        sock.close()
    return _DATE.sub(rb"\1X", bytes(got)), state


def run_all(port, probes, **kw):
    """{name: run(...)} with every probe in its own greenlet (they wait in parallel)."""
    jobs = {name: gevent.spawn(run, port, transport, data, **kw)
            for name, (transport, data) in probes.items()}
    gevent.joinall(list(jobs.values()))
    return {name: job.get() for name, job in jobs.items()}
