"""The control socket's protocol on bytes (afb/monitor/control_protocol.py): lines, requests,
errors, one byte at a time and fuzzed."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afb.monitor import control_protocol as proto
from afb.monitor.counters import Tally
from afb.monitor.stream_rows import select_streams


def feed_all(data, chunks=None):
    splitter = proto.LineSplitter()
    if chunks is None:
        return splitter.feed(data)
    out, at = [], 0
    for size in chunks:
        out += splitter.feed(data[at:at + size])
        at += size
    return out + splitter.feed(data[at:])


def test_lines_whole_and_one_byte_at_a_time():
    data = b'{"cmd": "snapshot"}\n{"cmd": "logs"}\npartial'
    assert feed_all(data) == [b'{"cmd": "snapshot"}', b'{"cmd": "logs"}']
    assert feed_all(data, [1] * len(data)) == [b'{"cmd": "snapshot"}', b'{"cmd": "logs"}']


def test_an_over_long_line_is_reported_once_and_skipped_to_its_end():
    long = b"x" * (proto.MAX_LINE + 10)
    data = long + b"\n" + b'{"cmd": "snapshot"}\n'
    for chunks in (None, [4096] * 20, [proto.MAX_LINE + 1, 3]):
        assert feed_all(data, chunks) == [proto.TOO_LONG, b'{"cmd": "snapshot"}']


def test_the_splitter_holds_no_more_than_a_line():
    splitter = proto.LineSplitter()
    for _ in range(100):
        splitter.feed(b"y" * 65536)
    assert len(splitter._buf) <= proto.MAX_LINE


@pytest.mark.parametrize("line, code", [
    (b"{", "bad_json"),
    (b"\xff\xfe", "bad_json"),
    (b"[1, 2]", "bad_request"),
    (b'{"v": 2, "cmd": "snapshot"}', "unsupported_version"),
    (b'{"cmd": "nonsense"}', "unknown_command"),
    (b'{"v": 1}', "unknown_command"),
    (b'{"cmd": "streams", "limit": "10"}', "bad_request"),
    (b'{"cmd": "streams", "limit": true}', "bad_request"),
    (b'{"cmd": "streams", "limit": -1}', "bad_request"),
    (b'{"cmd": "streams", "limit": 100001}', "bad_request"),
    (b'{"cmd": "streams", "colour": "red"}', "bad_request"),
    (b'{"cmd": "close_stream"}', "bad_request"),
    (b'{"cmd": "close_stream", "stream": 5}', "bad_request"),
    (b'{"cmd": "disconnect_user"}', "bad_request"),
])
def test_bad_requests_carry_their_code(line, code):
    with pytest.raises(proto.ControlError) as caught:
        proto.parse_request(line)
    assert caught.value.code == code
    message = proto.error_message(caught.value)
    assert message["type"] == "error" and message["error"] == code and message["message"]


def test_an_error_keeps_the_request_id():
    with pytest.raises(proto.ControlError) as caught:
        proto.parse_request(b'{"v": 1, "cmd": "nope", "id": 7}')
    assert proto.error_message(caught.value)["id"] == 7


def test_defaults_are_filled_in():
    request = proto.parse_request(b'{"v": 1, "cmd": "streams", "id": "a", "sort": "age"}')
    assert (request.cmd, request.id) == ("streams", "a")
    assert request.args == {"filter": None, "sort": "age", "desc": False, "limit": 1000}
    assert proto.parse_request(b'{"cmd": "subscribe"}').args == {
        "streams": False, "limit": 5000, "logs": 100}


def test_encode_is_one_line_with_the_id():
    line = proto.encode({"v": 1, "type": "ok", "text": "a\nb"}, request_id=3)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"v": 1, "type": "ok", "text": "a\nb", "id": 3}


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_request_or_a_control_error(data):
    for line in feed_all(data + b"\n", [7] * 50):
        if line is proto.TOO_LONG:
            continue
        try:
            proto.parse_request(line)
        except proto.ControlError as exc:
            assert exc.code in ("bad_json", "bad_request", "unknown_command",
                                "unsupported_version")


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(["v", "cmd", "id", "limit", "sort", "filter", "desc",
                                        "stream", "user", "streams", "logs", "level"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-5, 200000),
                                 st.text(max_size=8), st.sampled_from(list(proto.COMMANDS)))))
def test_any_object_gives_a_request_or_a_control_error(obj):
    try:
        request = proto.parse_request(json.dumps(obj).encode())
    except proto.ControlError:
        return
    assert request.cmd in proto.COMMANDS


def rows():
    return [{"id": "1/1", "host": "example.com", "user": "alice", "app": None, "state": "open",
             "resolved": "93.184.216.34:443", "bytes_down": 10, "opened": 3.0},
            {"id": "1/3", "host": "debian.org", "user": "bob", "app": None, "state": "opening",
             "resolved": None, "bytes_down": 500, "opened": 1.0},
            {"id": "2/1", "host": "example.net", "user": "alice", "app": None,
             "state": "half-closed", "resolved": None, "bytes_down": None, "opened": 2.0}]


def test_select_filters_sorts_and_limits():
    assert [r["id"] for r in select_streams(rows())[1]] == ["1/3", "2/1", "1/1"]
    total, chosen = select_streams(rows(), "ALICE", "opened", True, 1)
    assert (total, [r["id"] for r in chosen]) == (2, ["1/1"])
    assert [r["id"] for r in select_streams(rows(), sort="bytes_down")[1]] == ["2/1", "1/1", "1/3"]
    assert [r["id"] for r in select_streams(rows(), sort="bytes_down", desc=True)[1]] == [
        "1/3", "1/1", "2/1"]
    assert select_streams(rows(), "93.184")[0] == 1


class _Stream:
    def __init__(self, bytes_in, bytes_out):
        self.bytes_in, self.bytes_out = bytes_in, bytes_out


def test_tallies_chain_and_keep_the_peak():
    process = Tally()
    user = Tally(parent=process)
    tunnel = Tally(parent=user)
    for open_now in (1, 2, 3):
        tunnel.stream_opened(open_now)
    tunnel.stream_ended(_Stream(10, 20))
    tunnel.tunnel_ended(5.0)
    assert (process.streams, process.bytes_in, process.bytes_out, process.tunnel_seconds) == (
        3, 10, 20, 5.0)
    assert user.take_peak(open_now=1) == 3
    assert user.take_peak(open_now=1) == 1     # the next period starts from what is open
