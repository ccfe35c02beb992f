"""The WebSocket reader's input buffer (afb/transport/ws_input.py) when its socket goes away."""

import pytest

from afb.transport.ws_input import FrameInput


class _ClosedUnderUs:
    """What gevent's SSL socket does once another greenlet closed it: ValueError."""

    def recv_into(self, _buffer):
        raise ValueError("Read on closed or unwrapped SSL socket.")


class _Eof:
    def recv_into(self, _buffer):
        return 0


def test_a_socket_closed_under_the_reader_is_a_lost_link_not_a_crash():
    # bench/soak: a tunnel reset during a write closed the socket while the reader
    # waited in recv_into; the ValueError killed the session's greenlet and its
    # 10,000 streams hung.  An OSError ends the session (or holds it for a resume).
    reader = FrameInput(_ClosedUnderUs())
    with pytest.raises(OSError):
        reader.header()
    with pytest.raises(OSError):
        FrameInput(_ClosedUnderUs(), initial=b"\x82").payload(1 << 20, None)


def test_a_plain_eof_is_still_an_eof():
    assert FrameInput(_Eof()).header() is None
