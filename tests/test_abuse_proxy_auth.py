"""The local proxy's passwords cannot be guessed quickly (issue 9, item 5).

A real ``afb client`` with a users_file; a guesser on 127.0.0.2 tries
RFC 1929 passwords from many connections at once.  Each wrong password is
answered after a delay, and after ``max_auth_failures`` the source is banned:
its connections are closed on accept.  Another source keeps working.  Before,
the proxy answered 3,636 guesses a second, forever.
"""

import os
import socket
import time

import gevent

from tests.support import Setup, recv_exact, running

AUTH_FAILURE_DELAY = 1.0

ALICE = b"\x01\x05alice\x06s3cret"


def _login(port, source, credentials):
    """One RFC 1929 login from ``source``; -> b"ok", b"denied", or b"closed"."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    try:
        sock.sendall(b"\x05\x01\x02")
        if sock.recv(2) != b"\x05\x02":
            return b"closed"
        sock.sendall(credentials)
        answer = sock.recv(2)
        return {b"\x01\x00": b"ok", b"\x01\x01": b"denied"}.get(answer, b"closed")
    except OSError:
        return b"closed"
    finally:
        sock.close()


def _guess(password):
    return b"\x01\x05alice" + bytes([len(password)]) + password


def test_guessing_is_slow_then_banned_and_other_sources_unaffected(tmp_path, echo):
    setup = Setup(tmp_path)
    users = tmp_path / "proxy-users"
    users.write_text("alice:s3cret\n")
    os.chmod(users, 0o600)
    conf = open(setup.client_conf).read().replace(
        "[client]\n", "[client]\nusers_file = proxy-users\nmax_auth_failures = 5\nban_time = 60\n")
    open(setup.client_conf, "w").write(conf)
    with running("server", setup, tmp_path / "server.log"), \
            running("client", setup, tmp_path / "client.log") as client:
        port = setup.proxy_port
        early = socket.create_connection(("127.0.0.1", port), timeout=10,
                                         source_address=("127.0.0.2", 0))
        early.sendall(b"\x05\x01\x02")
        assert early.recv(2) == b"\x05\x02"
        for i in range(5):
            started = time.monotonic()
            assert _login(port, "127.0.0.2", _guess(b"wrong%d" % i)) == b"denied"
            assert time.monotonic() - started >= AUTH_FAILURE_DELAY * 0.9    # slowed down
        # A connection opened before the ban learns nothing either.
        early.sendall(ALICE)
        assert early.recv(2) == b"\x01\x01"
        early.close()
        # Banned now: 200 guesses at once, the right password among them, get nothing.
        jobs = [gevent.spawn(_login, port, "127.0.0.2", ALICE if i == 100 else _guess(b"x%d" % i))
                for i in range(200)]
        gevent.joinall(jobs, timeout=30)
        assert [job.value for job in jobs] == [b"closed"] * 200
        # ...while another source logs in and uses the proxy.
        assert _login(port, "127.0.0.3", ALICE) == b"ok"
        sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                        source_address=("127.0.0.3", 0))
        sock.sendall(b"\x05\x01\x02" + ALICE + b"\x05\x01\x00\x01\x7f\x00\x00\x01"
                     + echo.port.to_bytes(2, "big"))
        assert recv_exact(sock, 2 + 2 + 10)[4:6] == b"\x05\x00"
        sock.sendall(b"hi")
        assert recv_exact(sock, 2) == b"hi"
        sock.close()
    output = client.output()
    assert "127.0.0.2" in output and "banned for 60 s after 5 failed logins" in output
    assert output.count("connection refused: banned") <= 3       # rate-limited log lines
    assert "Traceback" not in output
