"""Inputs that crashed a parser under bench/fuzz (or that writing its target showed), as bytes.

Each test feeds the exact input (the fuzz target's first byte, which only
says how the rest was cut into ``receive`` calls, is left out) and checks
that the parser now answers with its own error, the one its caller turns
into a reply, instead of an exception that no caller catches.
"""

import pytest

from afb.codec.http_head import HeadReader, body_length
from afb.codec.ws_upgrade import UpgradeResponse
from afb.config import check_config
from afb.errors import HttpRequestError, ProtocolError
from afb.monitor import control_protocol as proto

# bench/results/fuzz/ws_upgrade/crash-c34c1f2e0b8647aa5c9e56a7d090f661b42ed7b3: the status
# "1\xb91" (latin-1 superscript one) passed str.isdigit(), then int() raised ValueError.
WS_UPGRADE_STATUS = (
    b"HTTP/1./1.1 1\xb91 Qwitocols\r\nUpgrad\xdae: websocket\r\nConnection: Upgrade\r\n"
    b"Cet: sPLMBZ1 101 Qwitocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Cet: sPLMBZ\r\n\r\n\x82\x00")


def test_upgrade_answer_with_a_superscript_digit_in_its_status_is_not_http():
    with pytest.raises(ProtocolError, match="bad status line"):
        UpgradeResponse().feed(WS_UPGRADE_STATUS)


# bench/results/fuzz/control/crash-fc22bc0f81796ac83cd81b334178d2a0cedccefe: a list as the
# command raised TypeError (unhashable) from ``cmd not in COMMANDS``.
CONTROL_LIST_COMMAND = b'{"cmd": [1]}\n[1[1,2]\n'


def _answers(data):
    """The error codes the control server sends for ``data`` (control_server._answer)."""
    codes = []
    for line in proto.LineSplitter().feed(data):
        try:
            proto.parse_request(line)
        except proto.ControlError as exc:
            proto.encode(proto.error_message(exc))
            codes.append(exc.code)
    return codes


def test_control_request_whose_command_is_a_list():
    assert _answers(CONTROL_LIST_COMMAND) == ["unknown_command", "bad_json"]


# Found while writing the control target (the fuzzer had not reached them in 300,000
# inputs): an id the answer cannot carry made encode() raise ValueError in the server's
# error path, and deep nesting made json raise RecursionError.
@pytest.mark.parametrize("line", [
    b'{"cmd": "nope", "id": NaN}',
    b'{"cmd": "reload", "id": Infinity}',
    b'{"cmd": "reload", "id": -Infinity}',
    b'{"cmd": "reload", "id": 1e999}',
    b"[" * 5000,
    b'{"id": ' + b"[" * 3000 + b"]" * 3000 + b"}",
])
def test_control_request_json_the_answer_could_not_carry(line):
    answers = _answers(line + b"\n")
    if line.startswith(b'{"id": ['):
        # Python 3.13's json parses and encodes 3,000 levels (3.11 raised RecursionError):
        # then the request is one without a command.  Either way an answer, no crash.
        assert answers in (["bad_json"], ["unknown_command"]), answers
    else:
        assert answers == ["bad_json"], answers


def test_control_request_ids_that_json_can_carry_still_work():
    request = proto.parse_request(b'{"cmd": "reload", "id": 1.5e3}')
    assert proto.encode({"type": "ok"}, request.id) == b'{"type":"ok","id":1500.0}\n'


# Found while writing the http_head target: a Content-Length the head check let through
# and body_length() could not convert (ValueError in the decoy's keep-alive loop).
@pytest.mark.parametrize("value", [
    b"\xb2",                          # latin-1 superscript two: str.isdigit() is True
    b"1\xb9",
    b"9" * 4301,                      # more digits than int() converts
    b"9223372036854775808",           # 2**63: nginx's off_t overflows, 400
])
def test_content_length_that_is_not_a_number_nginx_takes_is_400(value):
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + value + b"\r\n\r\n"
    with pytest.raises(HttpRequestError, match="bad Content-Length") as caught:
        HeadReader().feed(head)
    assert caught.value.http_status == 400


@pytest.mark.parametrize("value, length", [
    (b"0", 0), (b"007", 7), (b"9223372036854775807", (1 << 63) - 1), (b"0" * 5000 + b"5", 5),
])
def test_content_length_nginx_takes(value, length):
    head = HeadReader().feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + value
                             + b"\r\n\r\n")
    assert body_length(head) == length


# bench/results/fuzz/config/crash-82900c749849c1328b18af5387038a330a1360d2: "client" as a
# top-level key made guess_role() say client, then _server_choice() called .get on a str.
@pytest.mark.parametrize("text, error", [
    (b"client =\n\n", "client: must be a [client] section, not a key"),
    (b"servers = 1\n[client]\ntoken = x\nserver = ws://a/\n",
     "servers: must be a [servers] section, not a key"),
])
def test_config_with_a_key_where_a_section_belongs(tmp_path, text, error):
    path = tmp_path / "afb.conf"
    path.write_bytes(text)
    assert check_config(str(path)) == ["%s:1: %s" % (path, error)]
