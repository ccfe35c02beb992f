"""The control socket's JSON-lines framing as the dashboard reads it (tui/lines.py)."""

import json

from tui.lines import MAX_LINE, BadLine, LineDecoder, decode, encode

SNAP = {"v": 1, "type": "snapshot", "role": "client", "totals": {"streams": 3}}


def line(message):
    return json.dumps(message).encode() + b"\n"


def test_whole_lines_in_one_read():
    assert LineDecoder().feed(line(SNAP) + line({"v": 1, "type": "ok"})) == [
        SNAP, {"v": 1, "type": "ok"}]


def test_a_line_split_across_reads():
    data = line(SNAP)
    decoder = LineDecoder()
    assert decoder.feed(data[:10]) == []
    assert decoder.feed(data[10:-1]) == []
    assert decoder.feed(data[-1:]) == [SNAP]


def test_one_byte_at_a_time():
    data = line(SNAP) + line({"v": 1, "type": "log", "records": []})
    decoder = LineDecoder()
    out = []
    for i in range(len(data)):
        out.extend(decoder.feed(data[i:i + 1]))
    assert out == [SNAP, {"v": 1, "type": "log", "records": []}]


def test_an_over_long_line_is_skipped_to_its_end_and_the_next_one_reads():
    decoder = LineDecoder(max_line=100)
    out = decoder.feed(b"x" * 60)
    out += decoder.feed(b"y" * 60)          # over the limit here
    out += decoder.feed(b"z" * 1000)        # still the same line: dropped, not kept
    assert decoder._size == 0 and decoder._parts == []
    out += decoder.feed(b"zz\n" + line(SNAP))
    assert len(out) == 2
    assert isinstance(out[0], BadLine) and "longer than 100 bytes" in out[0].reason
    assert out[1] == SNAP


def test_a_line_of_exactly_the_limit_is_accepted():
    message = {"v": 1, "pad": ""}
    message["pad"] = "a" * (100 - len(json.dumps(message)))
    assert len(json.dumps(message)) == 100
    assert LineDecoder(max_line=100).feed(line(message)) == [message]


def test_bad_json_and_non_objects_become_bad_lines_not_exceptions():
    out = LineDecoder().feed(b"{not json\n[1, 2]\n\xff\xfe\n\n" + line(SNAP))
    assert [type(m) for m in out] == [BadLine, BadLine, BadLine, dict]
    assert "not JSON" in out[0].reason and "{not json" in out[0].reason
    assert "not an object" in out[1].reason


def test_decode_and_encode():
    assert decode(b'{"a": 1}') == {"a": 1}
    assert encode({"cmd": "snapshot"}) == b'{"cmd":"snapshot","v":1}\n'
    assert encode({"v": 1, "cmd": "x"}).endswith(b"\n")
    assert MAX_LINE >= 32 * 1024 * 1024
