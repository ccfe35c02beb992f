"""What the server's log says (issue 10, item 7): no secret path, no words cut off, no "()".

Real ``afb server`` and ``afb client`` processes on loopback; the server's
log file is read as an operator would.
"""

import signal

from afb.codec import aead
from tests.support import Setup, running, wait_log

MISMATCH = ("E2E handshake failed: server key does not match the pinned key (or the channel "
            "binding differs, or the handshake was")


def test_the_secret_path_is_logged_masked(tmp_path):
    setup = Setup(tmp_path)                     # path = /tunnel
    with running("server", setup, tmp_path / "server.log") as server:
        log = wait_log(server, "listening on")
    assert "listening on wss://127.0.0.1:%d/tun\u2026" % setup.server_port in log
    assert "/tunnel" not in log


def test_a_close_reason_too_long_for_the_frame_ends_in_an_ellipsis(tmp_path):
    """A client with the wrong E2E key: its reason (131 bytes) reaches the server cut to 123."""
    setup = Setup(tmp_path)
    setup.e2e_public_key = aead.generate_static_key()[1]      # not the server's
    setup.write()
    with running("server", setup, tmp_path / "server.log") as server, \
            running("client", setup, tmp_path / "client.log"):
        log = wait_log(server, "handshake failed: peer closed during the handshake")
    assert "(%s\u2026)" % MISMATCH in log, log
    assert "tamper)" not in log


def test_a_peer_that_closes_without_a_reason_says_so(tmp_path):
    setup = Setup(tmp_path)
    with running("server", setup, tmp_path / "server.log") as server, \
            running("client", setup, tmp_path / "client.log") as client:
        wait_log(server, "tunnel open")
        client.proc.send_signal(signal.SIGKILL)     # no close frame: the kernel's FIN only
        client.proc.wait(10)
        # Held for a resume (resume_grace), so the line is the link's, not the tunnel's end.
        log = wait_log(server, "WebSocket lost")
    assert "closed by peer (no reason given)" in log and "closed by peer ()" not in log, log
