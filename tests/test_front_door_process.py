"""Issue 9, items 2 and 4, on a real ``afb server`` process: descriptors and log flooding.

* Idle unauthenticated connections from several 127.x source addresses must
  not take the descriptors that established tunnels need: the per-source cap
  and the high-water mark close them at once, and a real client still opens
  its tunnel and new streams.
* Out of descriptors at accept(): one rate-limited warning, accepting pauses
  and resumes; no traceback.
* A prober that floods refused upgrades, or disconnects during or right after
  the TLS handshake, makes the server log O(burst) lines, one summary line,
  and no traceback.

Everything talks to 127.0.0.0/8 only; every loop is bounded in count and time.
"""

import contextlib
import os
import resource
import socket
import ssl
import struct
import time

import gevent
import pytest

from tests.support import (
    Daemon,
    EchoTarget,
    Setup,
    recv_exact,
    socks_connect,
    wait_log,
    wait_until,
)

CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE
FD_LIMIT = 256


def _low_fd_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def _accept_queue(port):
    """Connections waiting in the accept queue of the listener on ``port``."""
    waiting = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.read().splitlines()[1:]:
                fields = line.split()        # a listener's rx_queue is its accept backlog
                if fields[1].endswith(":%04X" % port) and fields[3] == "0A":
                    waiting += int(fields[4].split(":")[1], 16)
    return waiting


def _all_accepted(setup):
    assert wait_until(lambda: _accept_queue(setup.server_port) == 0, 10), \
        "%d connections not accepted" % _accept_queue(setup.server_port)


def _idle_flood(port, sources, per_source):
    """Open idle TCP connections (no byte sent) from each source address; the sockets."""
    socks = []
    for source in sources:
        for _ in range(per_source):
            sock = socket.socket()
            sock.bind((source, 0))
            sock.settimeout(2)
            try:
                sock.connect(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            socks.append(sock)
    return socks


@contextlib.contextmanager
def _serving(tmp_path, server_extra="", **popen):
    """(setup, server process, list of flood sockets closed at the end)."""
    setup = Setup(tmp_path, server_extra=server_extra)
    server = Daemon("server", setup.server_conf, str(tmp_path / "server.log"), **popen)
    flood = []
    try:
        wait_log(server, "listening on")    # (no connection of ours to wait out, as wait_port's)
        yield setup, server, flood
    finally:
        for sock in flood:
            sock.close()
        server.stop()


def _tunnel_works(setup, echo, streams=5):
    """A real in-process client opens its tunnel and *streams* new echo streams."""
    from afb.apps.client import ProxyClient

    client = ProxyClient(setup.client_cfg())
    client.start()
    try:
        client.tunnel.get_session(10)
        for i in range(streams):
            sock = socks_connect(("127.0.0.1", setup.proxy_port), "127.0.0.1", echo.port,
                                 timeout=10)
            sock.sendall(b"stream %d" % i)
            assert recv_exact(sock, len(b"stream %d" % i)) == b"stream %d" % i
            sock.close()
    finally:
        client.stop(timeout=0)


@pytest.fixture
def echo():
    target = EchoTarget()
    yield target
    target.close()


def test_idle_unauthenticated_flood_leaves_room_for_tunnels(tmp_path, echo, capsys):
    with _serving(tmp_path, preexec_fn=_low_fd_limit) as (setup, server, flood):
        base = _fds(server.proc.pid)
        # 10 sources x 40 idle connections = 400 > the 256 descriptors the process has
        sources = ["127.0.%d.%d" % (9, i) for i in range(2, 12)]
        flood += _idle_flood(setup.server_port, sources, 40)
        _all_accepted(setup)
        held = _fds(server.proc.pid) - base
        assert held <= int(FD_LIMIT * 0.8), held          # the high-water mark holds
        _tunnel_works(setup, echo)
        with capsys.disabled():
            print("\n[descriptors] %d idle unauthenticated connections from %d sources "
                  "(limit %d): %d descriptors held" % (len(flood), len(sources), FD_LIMIT, held))
    out = server.output()
    assert "Traceback" not in out, out[-3000:]
    assert "not yet authenticated (limit 32)" in out        # the per-source cap spoke


def test_per_source_cap_counts_pending_connections(tmp_path):
    with _serving(tmp_path, "[access]\nmax_pending_per_source = 8\n") as (setup, server, flood):
        base = _fds(server.proc.pid)
        flood += _idle_flood(setup.server_port, ["127.0.7.2"], 30)
        _all_accepted(setup)
        assert wait_until(lambda: _fds(server.proc.pid) - base == 8, 5), \
            _fds(server.proc.pid) - base
        flood += _idle_flood(setup.server_port, ["127.0.7.3"], 3)   # another source: served
        _all_accepted(setup)
        assert wait_until(lambda: _fds(server.proc.pid) - base == 11, 5), \
            _fds(server.proc.pid) - base
    assert "Traceback" not in server.output()


def test_out_of_descriptors_at_accept_pauses_quietly_and_recovers(tmp_path, echo):
    extra = "[access]\nmax_pending_per_source = 0\ndescriptor_high_water = 0\n"
    with _serving(tmp_path, extra, preexec_fn=_low_fd_limit) as (setup, server, flood):
        flood += _idle_flood(setup.server_port, ["127.0.6.%d" % i for i in range(2, 8)], 50)
        gevent.sleep(1.5)                          # accept() keeps hitting EMFILE meanwhile
        while flood:
            flood.pop().close()
        _tunnel_works(setup, echo, streams=2)      # its client retries until the server accepts
    out = server.output()
    assert "Traceback" not in out, out[-3000:]
    assert 1 <= out.count("out of descriptors") <= 10, out[-3000:]


def _probe_disconnects(port):
    """Probes that end during or right after TLS, each kind a few times."""
    def connect():
        sock = socket.create_connection(("127.0.0.1", port), timeout=3)
        return sock

    def rst(sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    hello = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = CTX.wrap_bio(*hello, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    client_hello = hello[1].read()
    for _ in range(5):
        connect().close()                                   # nothing sent
        sock = connect()
        sock.sendall(client_hello[:len(client_hello) // 2])  # half a ClientHello
        sock.close()
        sock = connect()
        sock.sendall(client_hello[:40])
        rst(sock)                                           # RST mid-handshake
        tls = CTX.wrap_socket(connect(), server_hostname="localhost")
        tls.close()                                         # close right after the handshake
        tls = CTX.wrap_socket(connect(), server_hostname="localhost")
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        rst(tls)                                            # RST in the request head
        tls = CTX.wrap_socket(connect(), server_hostname="localhost")
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        rst(tls)                                            # RST while being answered


def test_probe_flood_logs_a_burst_and_a_summary_and_no_traceback(tmp_path):
    with _serving(tmp_path, "[access]\nmax_auth_failures = 0\n") as (setup, server, _flood):
        _probe_disconnects(setup.server_port)
        request = (b"GET /tunnel HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                   b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   b"Authorization: Bearer not-a-token\r\n\r\n")
        t0 = time.monotonic()
        for _ in range(300):
            tls = CTX.wrap_socket(socket.create_connection(("127.0.0.1", setup.server_port), 3),
                                  server_hostname="localhost")
            tls.sendall(request)
            assert tls.recv(100).startswith(b"HTTP/1.1 404 Not Found")
            tls.close()
        assert time.monotonic() - t0 < 60
    out = server.output()
    assert "Traceback" not in out, out[-3000:]
    assert "Error" not in out.replace("HttpRequestError", ""), out[-3000:]
    refusals = [line for line in out.splitlines() if "refused WebSocket upgrade from" in line]
    assert len(refusals) == 5, refusals
    assert '127.0.0.1: 295 more lines like "refused WebSocket upgrade"' in out, out[-2000:]
    logged = [line for line in out.splitlines() if " DEBUG " not in line]
    assert len(logged) < 20, logged
