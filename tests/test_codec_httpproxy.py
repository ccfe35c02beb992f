"""afb.codec.httpproxy: CONNECT and absolute-form requests on the proxy port."""

import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afb.codec.httpproxy import HttpProxyParser, ProxyRequest, response, sniff
from afb.errors import AfbError, HttpProxyError

DATA = pathlib.Path(__file__).parent / "data" / "http"
VALID = sorted((DATA / "valid").glob("*.http"))
INVALID = sorted((DATA / "invalid").glob("*.http"))


def unescape(text):
    """Data-file text -> bytes: real newlines dropped, ``\\r \\n \\0 \\xHH`` decoded."""
    return text.replace("\n", "").encode("latin-1").decode("unicode_escape").encode("latin-1")


def load(path):
    return unescape(path.read_text("latin-1")), json.loads(path.with_suffix(".json").read_text())


# --- running a parser -------------------------------------------------------

def run(data, chunks, max_head=16384):
    """Feed ``data`` in ``chunks`` sizes.

    Returns ``("ok", request, leftover)`` or ``("error", http_status)``.
    """
    parser = HttpProxyParser(max_head)
    pos = 0
    for size in chunks:
        piece = data[pos:pos + size]
        pos += size
        try:
            result = parser.receive(piece)
        except HttpProxyError as exc:
            return ("error", exc.http_status)
        if result is not None:
            return ("ok", result, parser.leftover + data[pos:])
    return ("incomplete",)


def run_all(data, max_head=16384):
    return run(data, [len(data)], max_head)


def run_trickle(data, max_head=16384):
    return run(data, [1] * len(data), max_head)


# --- sniff ------------------------------------------------------------------

@pytest.mark.parametrize("first, kind", [
    (0x05, "socks5"), (0x04, "socks4"), (ord("C"), "http"), (ord("G"), "http"),
    (ord("A"), "http"), (ord("Z"), "http"), (ord("g"), None), (0x00, None),
    (0x16, None), (0x40, None), (0x5B, None), (0xFF, None),
])
def test_sniff(first, kind):
    assert sniff(first) == kind


# --- data files -------------------------------------------------------------

def test_data_files_exist():
    assert len(VALID) >= 5 and len(INVALID) >= 20


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_request_files(path):
    data, expected = load(path)
    assert run_all(data) == ("ok", ProxyRequest(
        expected["method"], expected["host"], expected["port"], unescape(expected["forward"])),
        unescape(expected["leftover"]))
    assert run_trickle(data) == run_all(data)


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_request_files(path):
    data, expected = load(path)
    with pytest.raises(HttpProxyError, match=expected["match"]) as info:
        HttpProxyParser().receive(data)
    assert info.value.http_status == expected["http_status"]
    assert run_trickle(data) == ("error", expected["http_status"])


# --- parser behaviour -------------------------------------------------------

def test_connect_returns_request_and_keeps_headers():
    parser = HttpProxyParser()
    assert parser.receive(b"CONNECT example.com:443 HTTP/1.1\r\n") is None
    assert parser.receive(b"Proxy-Authorization: Basic YTpi\r\n") is None
    req = parser.receive(b"\r\n\x16\x03")
    assert req == ProxyRequest("CONNECT", "example.com", 443, b"")
    assert parser.leftover == b"\x16\x03"
    assert parser.headers == [("Proxy-Authorization", "Basic YTpi")]
    assert parser.version == "HTTP/1.1"


def test_underscore_host_and_max_port():
    assert run_all(b"CONNECT my_host.lan:65535 HTTP/1.1\r\n\r\n")[1] == ProxyRequest(
        "CONNECT", "my_host.lan", 65535, b"")


def test_any_method_absolute_form():
    req = run_all(b"DELETE http://h/x HTTP/1.1\r\n\r\n")[1]
    assert req.method == "DELETE"
    assert req.forward == b"DELETE /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"


def test_receive_after_request_raises():
    parser = HttpProxyParser()
    parser.receive(b"CONNECT h:1 HTTP/1.1\r\n\r\n")
    with pytest.raises(HttpProxyError, match="already"):
        parser.receive(b"more")


def test_receive_after_error_raises():
    parser = HttpProxyParser()
    with pytest.raises(HttpProxyError):
        parser.receive(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(HttpProxyError, match="already"):
        parser.receive(b"CONNECT h:1 HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize("extra, status", [(0, "ok"), (1, "error")])
def test_head_size_limit(extra, status):
    head = b"CONNECT h:1 HTTP/1.1\r\nX: " + b"a" * 100 + b"\r\n\r\n"
    outcome = run_all(head + b"body", max_head=len(head) - extra)
    assert outcome[0] == status
    if status == "error":
        assert outcome == ("error", 431)
        assert run_trickle(head, max_head=len(head) - extra) == ("error", 431)


def test_head_too_large_without_end():
    parser = HttpProxyParser(max_head=64)
    assert parser.receive(b"CONNECT h:1 HTTP/1.1\r\n" + b"X: y\r\n" * 7) is None
    with pytest.raises(HttpProxyError, match="larger than 64") as info:
        parser.receive(b"X: y\r\n")
    assert info.value.http_status == 431


def test_default_limit_is_16k():
    head = b"CONNECT h:1 HTTP/1.1\r\nX: " + b"a" * 16384 + b"\r\n\r\n"
    assert run_all(head) == ("error", 431)


def test_head_end_split_across_calls():
    for split in range(1, 4):
        parser = HttpProxyParser()
        data = b"CONNECT h:1 HTTP/1.1\r\n\r\nrest"
        cut = data.index(b"\r\n\r\n") + split
        assert parser.receive(data[:cut]) is None
        assert parser.receive(data[cut:]).host == "h"
        assert parser.leftover == b"rest"


# --- response() -------------------------------------------------------------

def test_response_200():
    assert response(200) == b"HTTP/1.1 200 Connection established\r\n\r\n"


def test_response_error_default_body():
    body = b"502 Bad Gateway\n"
    assert response(502) == (
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


def test_response_error_custom_reason_and_body():
    out = response(403, "Not\r\nAllowed", b"destination refused\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 403 Not Allowed", b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: 20", b"Connection: close"]
    assert body == b"destination refused\n"


@pytest.mark.parametrize("status", [400, 405, 431, 505, 504, 599])
def test_response_statuses(status):
    out = response(status)
    assert out.startswith(b"HTTP/1.1 %d " % status) and b"Connection: close\r\n" in out


# --- property tests ---------------------------------------------------------

SAMPLES = [load(p)[0] for p in VALID + INVALID]
labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
names = st.lists(labels, min_size=1, max_size=3).map(".".join).filter(
    lambda h: not h.replace(".", "").isdigit())
hosts = st.one_of(names, st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
# "", or "/..." or "?..." (what may follow the authority in an absolute URL).
paths = st.tuples(
    st.sampled_from(["", "/", "?"]),
    st.text("abcXYZ019._~%!$&'()*+,;=:@-/?", max_size=30),
).map(lambda parts: parts[0] and parts[0] + parts[1])


def authority(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_raise_afb_errors(data):
    try:
        result = HttpProxyParser(max_head=256).receive(data)
    except AfbError as exc:
        assert isinstance(exc, HttpProxyError)
        assert exc.http_status in (400, 405, 431, 505)
        return
    assert result is None or isinstance(result, ProxyRequest)


@given(sample=st.sampled_from(SAMPLES), data=st.binary(max_size=60), at=st.integers(0, 200))
def test_mutated_samples_only_raise_afb_errors(sample, data, at):
    try:
        HttpProxyParser().receive(sample[:at] + data + sample[at:])
    except AfbError as exc:
        assert isinstance(exc, HttpProxyError)


@settings(max_examples=50)
@given(host=hosts, port=st.integers(1, 65535))
def test_connect_round_trip(host, port):
    data = b"CONNECT %s HTTP/1.1\r\n\r\n" % authority(host, port).encode()
    assert run_all(data) == ("ok", ProxyRequest("CONNECT", host, port, b""), b"")


@settings(max_examples=50)
@given(host=hosts, port=st.integers(1, 65535), path=paths)
def test_absolute_form_round_trip(host, port, path):
    auth = authority(host, port)
    data = ("GET http://%s%s HTTP/1.1\r\nAccept: */*\r\n\r\n" % (auth, path)).encode()
    origin = path if path.startswith("/") else "/" + path
    forward = ("GET %s HTTP/1.1\r\nHost: %s\r\nAccept: */*\r\nConnection: close\r\n\r\n"
               % (origin, auth)).encode()
    assert run_all(data) == ("ok", ProxyRequest("GET", host, port, forward), b"")


@given(sample=st.sampled_from(SAMPLES), cuts=st.lists(st.integers(0, 400), max_size=10))
def test_random_split_points(sample, cuts):
    points = sorted({min(c, len(sample)) for c in cuts} | {0, len(sample)})
    chunks = [b - a for a, b in zip(points, points[1:], strict=False)]
    assert run(sample, chunks) == run_all(sample)
