"""afb.sd_notify: the datagrams systemd's Type=notify waits for."""

import os
import socket
import uuid

from afb import sd_notify


def _listener(address):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_no_socket_no_message():
    assert sd_notify.notify("READY=1", environ={}) is False


def test_path_socket_gets_the_state(tmp_path):
    path = str(tmp_path / "notify")
    with _listener(path) as sock:
        assert sd_notify.notify("READY=1", environ={"NOTIFY_SOCKET": path}) is True
        assert sock.recv(100) == b"READY=1"


def test_abstract_socket_with_at_sign():
    name = "afb-test-%s" % uuid.uuid4().hex
    with _listener("\0" + name) as sock:
        assert sd_notify.notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(100) == b"STOPPING=1"


def test_a_missing_socket_is_a_log_line_not_an_error(tmp_path, caplog):
    gone = str(tmp_path / "gone")
    assert sd_notify.notify("READY=1", environ={"NOTIFY_SOCKET": gone}) is False
    assert "cannot tell systemd" in caplog.text
    assert not os.path.exists(gone)


def test_other_address_kinds_are_ignored(caplog):
    assert sd_notify.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert "not a unix socket" in caplog.text
