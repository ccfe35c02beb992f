"""Real `afb server` / `afb client` processes: restart, reconnection, graceful stop."""

import hashlib
import os
import signal
import socket
import subprocess
import sys

import gevent
import pytest
from gevent.server import StreamServer

from tests.support import Daemon, recv_all, recv_exact, socks_connect, wait_port, wait_until


@pytest.fixture
def pair(setup, tmp_path):
    procs = {}

    def start(role):
        conf = setup.server_conf if role == "server" else setup.client_conf
        procs[role] = Daemon(role, conf, str(tmp_path / ("%s.log" % role)))
        wait_port(setup.server_port if role == "server" else setup.proxy_port)
        return procs[role]

    yield start, procs
    for proc in procs.values():
        proc.stop(signal.SIGKILL)


def _echo_through(proxy, port, deadline=20.0):
    """Retry until an echo works through the proxy (the tunnel may be reconnecting)."""
    errors = []

    def echoed():
        try:
            sock = socks_connect(proxy, "127.0.0.1", port, timeout=5)
            sock.sendall(b"hello")
            data = recv_exact(sock, 5)
            sock.close()
            return data == b"hello"
        except (OSError, EOFError) as exc:
            errors.append(exc)
            return False

    assert wait_until(echoed, deadline, 0.2), "no echo through the tunnel: %s" % errors[-1:]


def test_server_killed_and_restarted_client_reconnects(setup, pair, echo):
    start, procs = pair
    start("server")
    start("client")
    proxy = ("127.0.0.1", setup.proxy_port)
    _echo_through(proxy, echo.port)
    procs["server"].stop(signal.SIGKILL)
    with pytest.raises((OSError, EOFError)):
        sock = socks_connect(proxy, "127.0.0.1", echo.port, timeout=5)
        sock.sendall(b"x")
        recv_exact(sock, 1)
    start("server")
    _echo_through(proxy, echo.port)
    assert "tunnel down" in procs["client"].output()


class SlowTarget:
    """Sends ``size`` bytes in small slices over about ``seconds``, then closes."""

    def __init__(self, size=2 << 20, seconds=1.5):
        self.data = os.urandom(size)
        self.seconds = seconds
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, sock, _address):
        step = len(self.data) // 30
        for offset in range(0, len(self.data), step):
            sock.sendall(self.data[offset:offset + step])
            gevent.sleep(self.seconds / 30)            # paced: the stream is still open at the stop
        sock.close()


@pytest.mark.parametrize("who", ["server", "client"])
def test_sigterm_lets_open_streams_finish_then_exits_cleanly(setup, pair, who):
    start, procs = pair
    start("server")
    start("client")
    target = SlowTarget()
    proxy = ("127.0.0.1", setup.proxy_port)
    try:
        sock = socks_connect(proxy, "127.0.0.1", target.port, timeout=20)
        first = recv_exact(sock, 1)                    # the transfer is under way
        reader = gevent.spawn(recv_all, sock)
        procs[who].proc.send_signal(signal.SIGTERM)
        body = first + reader.get(timeout=20)
        assert hashlib.sha256(body).digest() == hashlib.sha256(target.data).digest()
        assert procs[who].proc.wait(timeout=15) == 0
        out = procs[who].output()
        assert "signal received" in out and "stopped" in out
        # After the stop, nothing new is accepted.
        with pytest.raises(OSError):
            port = setup.server_port if who == "server" else setup.proxy_port
            socks_connect(("127.0.0.1", port), "127.0.0.1", target.port, timeout=3)
    finally:
        target.server.stop()


def test_bad_config_is_refused_at_start_with_the_check_text(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[client]\nserver = ftp://x/\nlisten = 127.0.0.1:1080\ntoken = t\nbogus = 1\n")
    result = subprocess.run([sys.executable, "-m", "afb", "client", "-c", str(conf)],
                            capture_output=True, text=True, timeout=60,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode != 0
    assert "bogus" in result.stderr and "server" in result.stderr
    check = subprocess.run([sys.executable, "-m", "afb", "config", "check", str(conf)],
                           capture_output=True, text=True, timeout=60,
                           cwd=os.path.dirname(os.path.dirname(__file__)))
    assert check.returncode == 1
    assert set(check.stdout.splitlines() + check.stderr.splitlines()) >= {
        line for line in result.stderr.splitlines() if "bogus" in line}


def _served_pin(port):
    import ssl

    from afb.transport.tls import spki_pin_of_der

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw) as sock:
            return spki_pin_of_der(sock.getpeercert(binary_form=True))


def test_sighup_reloads_the_certificate_without_dropping_tunnels(setup, pair, echo):
    from afb import keys

    start, procs = pair
    start("server")
    start("client")
    proxy = ("127.0.0.1", setup.proxy_port)
    _echo_through(proxy, echo.port)
    open_stream = socks_connect(proxy, "127.0.0.1", echo.port)
    assert _served_pin(setup.server_port) == setup.pin
    key_pem, cert_pem = keys.make_self_signed()
    keys.write_secret(os.path.join(setup.dir, "server.key"), key_pem)
    with open(os.path.join(setup.dir, "server.crt"), "wb") as handle:
        handle.write(cert_pem)
    procs["server"].proc.send_signal(signal.SIGHUP)
    new_pin = keys.spki_pin(cert_pem)
    # new handshakes: new certificate
    assert wait_until(lambda: _served_pin(setup.server_port) == new_pin, 10)
    open_stream.sendall(b"still here")                         # the old tunnel carries on
    assert recv_exact(open_stream, 10) == b"still here"
    open_stream.close()
    assert procs["server"].proc.poll() is None
    assert "certificate reloaded" in procs["server"].output()
