"""The client's WebSocket upgrade, on bytes (afb/codec/ws_upgrade.py)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afb.codec.ws_upgrade import (
    MAX_RESPONSE_HEAD,
    UpgradeResponse,
    accept_value,
    check_accept,
    upgrade_request,
)
from afb.errors import AfbError, ProtocolError

KEY = "dGhlIHNhbXBsZSBub25jZQ=="          # RFC 6455, 1.3


def _answer(key=KEY, extra=""):
    return ("HTTP/1.1 101 Switching Protocols\r\nServer: nginx\r\nUpgrade: websocket\r\n"
            "Connection: upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n"
            % (accept_value(key), extra)).encode()


def test_the_rfc_example_accept_value():
    assert accept_value(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_the_request_names_host_port_path_and_our_headers():
    request, key = upgrade_request("vps.example.org", 8443, "/api/x?y=1", True,
                                   {"Authorization": "Bearer t"})
    assert request == (b"GET /api/x?y=1 HTTP/1.1\r\nHost: vps.example.org:8443\r\n"
                       b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
                       + key.encode() + b"\r\nSec-WebSocket-Version: 13\r\n"
                       b"Authorization: Bearer t\r\n\r\n")
    assert upgrade_request("::1", 443, "/", True)[0].split(b"\r\n")[1] == b"Host: [::1]"
    assert upgrade_request("h", 80, "/", False)[0].split(b"\r\n")[1] == b"Host: h"
    with pytest.raises(ValueError):
        upgrade_request("h", 80, "/", False, {"Cookie": "a=b\r\nEvil: 1"})


def test_an_answer_fed_one_byte_at_a_time_with_frames_after_it():
    data = _answer() + b"\x82\x02hi"
    response = UpgradeResponse()
    done = [response.feed(data[i:i + 1]) for i in range(len(data) - 4)]
    assert done[-1] and not any(done[:-1])
    response_all = UpgradeResponse()
    assert response_all.feed(data)
    assert response_all.status == 101 and response_all.leftover == b"\x82\x02hi"
    assert check_accept(response_all, KEY) is None
    assert "Sec-WebSocket-Accept" in check_accept(response_all, "AAAAAAAAAAAAAAAAAAAAAA==")


def test_a_refusal_is_read_as_a_status():
    response = UpgradeResponse()
    assert response.feed(b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\nContent-Length: 3\r\n\r\nabc")
    assert (response.status, response.reason, response.leftover) == (404, "Not Found", b"abc")


@pytest.mark.parametrize("data", [
    b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    b"HTTP/1.1 abc Bad\r\n\r\n",
    b"HTTP/1.1 101 X\r\nno colon\r\n\r\n",
    b"HTTP/1.1 " + b"x" * MAX_RESPONSE_HEAD,
])
def test_what_is_not_an_http_answer_is_a_protocol_error(data):
    with pytest.raises(ProtocolError):
        UpgradeResponse().feed(data)


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_fuzz_any_bytes_complete_a_head_or_raise_afb_errors(chunks):
    response = UpgradeResponse()
    try:
        for chunk in chunks:
            if response.feed(chunk):
                check_accept(response, KEY)
                break
    except AfbError:
        pass
