"""Descriptors: running out fails one stream, never a tunnel; abandoned dials are freed
(issue 9, item 2, the tunnel's side; the front door's limits are tested with the server).

Real ``afb server`` / ``afb client`` processes on loopback.  A connect that
never completes is made with a listener whose accept queue is full: Linux
then drops the SYNs, so the connect stays in progress until afb gives up.
"""

import socket

import pytest

from afb.codec import frames
from tests.abuse import RawTunnel, open_fds
from tests.support import Setup, recv_exact, running, socks_open, wait_until


class BlackHole:
    """127.0.0.1:port where connects hang: a full accept queue that is never served."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(filler)

    def close(self):
        for sock in self.fillers + [self.listener]:
            sock.close()


def test_out_of_descriptors_fails_that_stream_only(tmp_path, echo):
    setup = Setup(tmp_path, fast_open=False)
    opened = []
    with running("server", setup, tmp_path / "server.log", nofile=48) as server, \
            running("client", setup, tmp_path / "client.log") as client:
        try:
            proxy = ("127.0.0.1", setup.proxy_port)
            codes = []
            for _ in range(60):
                sock, code = socks_open(proxy, echo.port)
                opened.append(sock)
                codes.append(code)
                if code:
                    break
            assert codes[-1] == 0x01 and codes[:-1] == [0] * (len(codes) - 1), codes
            for sock in opened[:-1]:                     # the tunnel still carries them all
                sock.sendall(b"ping")
                assert recv_exact(sock, 4) == b"ping"
            full = open_fds(server.proc.pid)
            for sock in opened[:10]:
                sock.close()
            assert wait_until(lambda: open_fds(server.proc.pid) <= full - 10, 10), \
                "%d of the server's descriptors still open" % open_fds(server.proc.pid)
            again, code = socks_open(proxy, echo.port)  # descriptors free again: streams work
            opened.append(again)
            assert code == 0
            again.sendall(b"back")
            assert recv_exact(again, 4) == b"back"
        finally:
            for sock in opened:
                sock.close()
    assert "out of descriptors (EMFILE)" in server.output()
    assert "Traceback" not in server.output()
    assert "tunnel down" not in client.output()


@pytest.fixture
def hole():
    target = BlackHole()
    yield target
    target.close()


@pytest.fixture
def slow_server(tmp_path):
    setup = Setup(tmp_path, server_extra="[tunnel]\nconnect_timeout = 60\n")
    with running("server", setup, tmp_path / "server.log") as server:
        yield setup, server


def test_a_dial_abandoned_by_the_client_frees_its_descriptor_at_once(slow_server, hole):
    setup, server = slow_server
    attacker = RawTunnel(setup)
    assert attacker.read_hello() is not None
    base = open_fds(server.proc.pid)
    ids = attacker.open_many("127.0.0.1", hole.port, 50)
    assert wait_until(lambda: open_fds(server.proc.pid) >= base + 50, 5)
    attacker.send(*[frames.frame(frames.RST, sid, frames.rst_payload(1, "gave up")) for sid in ids])
    assert wait_until(lambda: open_fds(server.proc.pid) <= base + 2, 5), \
        "%d descriptors still open" % (open_fds(server.proc.pid) - base)
    attacker.close()


def test_cycling_tunnels_cannot_pile_up_pending_dials(slow_server, hole):
    setup, server = slow_server
    base = open_fds(server.proc.pid)
    worst = 0
    for _ in range(5):
        attacker = RawTunnel(setup)
        assert attacker.read_hello() is not None
        attacker.open_many("127.0.0.1", hole.port, 50)
        wait_until(lambda: open_fds(server.proc.pid) >= base + 50, 5)
        attacker.close()
        worst = max(worst, open_fds(server.proc.pid) - base)
    assert wait_until(lambda: open_fds(server.proc.pid) <= base + 2, 5)
    assert worst <= 50 + 4, "%d descriptors held at worst" % worst
