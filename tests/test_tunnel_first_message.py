"""A tunnel whose first message is not a HELLO is refused as a protocol error (1002).

An empty first message used to raise TypeError inside the handshake
(``frame_name(None)``), reach the server's catch-all, log a traceback and
close with 1011.  Real ``afb server`` processes; the client is afb's own
WebSocket (and E2E) code, sending what we choose.
"""

import hashlib

import pytest

from afb.errors import CLOSE_PROTOCOL_ERROR
from afb.transport import tls, wsclient
from afb.transport.secure_channel import client_secure
from tests.support import Setup, running


@pytest.mark.parametrize("e2e", [False, True], ids=["plain", "e2e"])
@pytest.mark.parametrize("first, reason", [
    (b"", "empty first message, expected HELLO"),
    (b"\x09\x00\x00\x00\x00\x00\x00\x00\x00\x08" + b"12345678", "first frame is PING, not HELLO"),
])
def test_the_first_message_must_be_a_hello(tmp_path, e2e, first, reason):
    setup = Setup(tmp_path, e2e=e2e)
    with running("server", setup, tmp_path / "server.log") as server:
        raw = wsclient.connect(setup.url, headers={"Authorization": "Bearer " + setup.token},
                               ssl_context=tls.client_context(pin=setup.pin), pin=setup.pin)
        ws = raw
        if e2e:
            ws = client_secure(raw, setup.e2e_public_key,
                               hashlib.sha256(setup.token.encode()).digest())
        ws.send_message([first])
        assert ws.recv_message() is None
        assert raw.peer_close_code == CLOSE_PROTOCOL_ERROR
        assert raw.peer_close_reason == reason
        raw.close()
    output = server.output()
    assert "Traceback" not in output and "handshake failed: %s" % reason in output
