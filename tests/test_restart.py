"""A server restart leaves no gap (issue 10, item 5).

The new ``afb server`` listens on the same port (SO_REUSEPORT) before the old
one gets SIGTERM.
"""

import logging
import socket

import pytest

from afb.transport.listen_socket import reuse_port_listener


def test_reuse_port_shares_a_port_and_says_so(caplog):
    caplog.set_level(logging.WARNING, logger="afb.transport.listen_socket")
    first = reuse_port_listener(("127.0.0.1", 0), 16, socket.AF_INET)
    port = first.getsockname()[1]
    try:
        first.close()
        first = reuse_port_listener(("127.0.0.1", port), 16, socket.AF_INET)
        assert not caplog.records
        second = reuse_port_listener(("127.0.0.1", port), 16, socket.AF_INET)
        second.close()
        assert [r.getMessage() for r in caplog.records] == [
            "another process listens on port %d too (SO_REUSEPORT): new connections are "
            "shared with it until it stops; right while an old afb server drains after a "
            "restart, a mistake otherwise" % port]
        plain = socket.socket()
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError):            # without SO_REUSEPORT: address in use
            plain.bind(("127.0.0.1", port))
        plain.close()
    finally:
        first.close()


def test_a_port_held_without_reuse_port_still_fails_to_bind(caplog):
    caplog.set_level(logging.WARNING, logger="afb.transport.listen_socket")
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    try:
        with pytest.raises(OSError) as info:
            reuse_port_listener(other.getsockname(), 16, socket.AF_INET)
        assert "127.0.0.1" in str(info.value) and not caplog.records
    finally:
        other.close()
