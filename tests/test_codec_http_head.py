"""afb.codec.http_head: the server's first request head, judged as nginx judges it.

The expected statuses are what Debian's nginx answered to the same bytes
(tests/http_probes.py, tests/test_probe_suite.py).
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afb.codec.http_head import (
    MAX_HEAD,
    TOO_LARGE,
    ChunkedSkipper,
    HeadReader,
    body_length,
    normalize_path,
)
from afb.codec.proxy_protocol import proxy_v1_header
from afb.errors import HttpRequestError

UPGRADE = (b"GET /tunnel?x=1 HTTP/1.1\r\nHost: Example.COM:8443\r\nUpgrade: websocket\r\n"
           b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer a.b.c\r\n"
           b"Cookie: a=1\r\nCookie: session=t\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n")


def feed(data, size):
    """(head or None, leftover) or ("error", status, message), feeding *size* bytes at a time."""
    reader = HeadReader()
    try:
        for i in range(0, len(data), size):
            head = reader.feed(data[i:i + size])
            if head is not None:
                return head, reader.leftover + data[i + size:]
    except HttpRequestError as exc:
        return "error", exc.http_status, str(exc)
    return None, b""


@pytest.mark.parametrize("size", [1, 2, 7, 1 << 20])
def test_upgrade_head_whole_and_trickled(size):
    head, rest = feed(UPGRADE + b"\x82\x85frame", size)
    assert (head.method, head.target, head.version, head.uri) == (
        "GET", "/tunnel?x=1", (1, 1), "/tunnel?x=1")
    assert head.host == "example.com"
    assert head.tokens("connection") == ["keep-alive", "upgrade"]
    assert head.get("cookie") == "a=1, session=t"
    assert head.raw == UPGRADE and rest == b"\x82\x85frame"
    env = head.environ("198.51.100.7")
    assert env["PATH_INFO"] == "/tunnel" and env["QUERY_STRING"] == "x=1"
    assert env["REMOTE_ADDR"] == "198.51.100.7"
    assert env["HTTP_AUTHORIZATION"] == "Bearer a.b.c"
    assert env["HTTP_X_FORWARDED_FOR"] == "192.0.2.1"
    assert env["HTTP_SEC_WEBSOCKET_KEY"] == "dGhlIHNhbXBsZSBub25jZQ=="
    assert head.keep_alive


@pytest.mark.parametrize("data, status", [
    (b"GET / HTTP/1.1\r\n\r\n", 400),                                   # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),             # two Host
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", 400),
    (b"\x8f\x00\x01", 400),                                             # at once, no newline
    (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"CONNECT example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    (b"GET / HTTP/1.x\r\nHost: a\r\n\r\n", 400),
])
@pytest.mark.parametrize("size", [1, 1 << 20])
def test_refusals_carry_nginx_status(data, status, size):
    result = feed(data, size)
    assert result[:2] == ("error", status), result


def test_too_large_and_simple_requests():
    many = b"GET / HTTP/1.1\r\nHost: a\r\n" + (b"X-H: " + b"b" * 8000 + b"\r\n") * 5
    assert feed(many, 4096)[2] == TOO_LARGE                          # over 4 x 8 KiB
    head, rest = feed(b"GET /index.html\r\n", 1)
    assert head.version == (0, 9) and head.uri == "/index.html" and not head.keep_alive
    head, _ = feed(b"\r\n\r\nGET / HTTP/1.0\r\n\r\n", 3)            # leading blank lines
    assert head.version == (1, 0) and head.host is None and not head.keep_alive
    head, _ = feed(b"GET http://Other.Example:81 HTTP/1.1\r\nHost: x\r\n\r\n", 5)
    assert head.host == "other.example" and head.uri == "/"
    head, _ = feed(b"GET / HTTP/1.1\r\nHost: a\r\nX_Under: 1\r\n\r\n", 100)
    assert head.get("x_under") is None                               # ignored, not refused
    assert feed(b"GET / HTTP/1.1\r\nHost: a\r\n", 1) == (None, b"")
    assert MAX_HEAD == 32768


@pytest.mark.parametrize("uri, path", [
    ("/", "/"), ("//index.html", "/index.html"), ("/./a/../b/", "/b/"),
    ("/%69ndex.html?q", "/index.html"),
    ("/docs/..", "/"), ("/a/.", "/a/"), ("/a%2fb", "/a/b"),
])
def test_normalize_path(uri, path):
    assert normalize_path(uri) == path


@pytest.mark.parametrize("uri", ["/../x", "/%zz", "/a/../../b", "/%0"])
def test_normalize_path_refuses(uri):
    with pytest.raises(HttpRequestError) as info:
        normalize_path(uri)
    assert info.value.http_status == 400


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_chunked_skipper(size):
    body = b"5\r\nhello\r\n10;ext=1\r\n" + b"x" * 16 + b"\r\n0\r\nTrailer: a\r\n\r\nNEXT"
    skipper, rest = ChunkedSkipper(), None
    for i in range(0, len(body), size):
        rest = skipper.feed(body[i:i + size])
        if rest is not None:
            rest += body[i + size:]
            break
    assert rest == b"NEXT"
    with pytest.raises(HttpRequestError):
        ChunkedSkipper().feed(b"zz\r\n")
    head, _ = feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 100)
    assert body_length(head) == "chunked"


def test_proxy_protocol_v1():
    assert proxy_v1_header(("192.0.2.1", 5000), ("127.0.0.1", 443)) == \
        b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 443\r\n"
    assert proxy_v1_header(("2001:db8::1", 1), ("::1", 2)) == b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"
    assert proxy_v1_header(("::ffff:192.0.2.1", 1), ("127.0.0.1", 2)).startswith(b"PROXY TCP4 ")
    assert proxy_v1_header(("x", 1), ("127.0.0.1", 2)) == b"PROXY UNKNOWN\r\n"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
def test_fuzz_any_bytes_any_split(data, size):
    """Any bytes: a Head, None or HttpRequestError; the same whole or in pieces."""
    whole, pieces = feed(data, 1 << 20), feed(data, size)
    if whole[0] == "error" or pieces[0] == "error":
        assert whole[0] == pieces[0] == "error" or whole[0] is None or pieces[0] is None
    elif whole[0] is not None:
        assert pieces[0] is not None and pieces[0].raw == whole[0].raw


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"GET", b" ", b"/", b"a", b"%", b"..", b"HTTP/1.1", b"\r\n",
                                 b"Host: x", b":", b"\n", b"Upgrade: websocket", b"\x00",
                                 b"HTTP/1.0", b"Transfer-Encoding: chunked"]), max_size=30))
def test_fuzz_request_like_tokens(parts):
    data = b"".join(parts)
    result = feed(data, 1 << 20)
    if result[0] not in (None, "error"):
        try:
            normalize_path(result[0].uri)
        except HttpRequestError:
            pass
    assert feed(data, 1)[0] in (None, "error") or feed(data, 1)[0].raw == result[0].raw
