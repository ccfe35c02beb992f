"""The counters the data path keeps for monitoring: plain integer adds, nothing else.

A :class:`Tally` sums what the streams that ended carried (the live ones
are read from the streams themselves when someone asks), so a stream's bytes
are not lost when it closes.  The session adds to it where a stream leaves
its table (:meth:`~afb.transport.session.Session.forget`, the one exit) and
counts where one enters (:meth:`~afb.transport.session.Session.new_stream`,
the one entry): two adds per stream, none per byte.  The bytes of a live
stream are the stream's own ``bytes_in``/``bytes_out``, kept for flow
control already.

:data:`ERRORS` counts failures by kind for the whole process.  It is a
:class:`collections.Counter`, so counting one is a dict add; the places that
refuse, fail or reset call :func:`count` once per event, never per byte.

:data:`UDP` counts the datagrams of SOCKS5 UDP associations (afb/transport/
udp_relay.py on the client, udp_association.py on the server): carried up
(from the apps towards the destinations) and down, and dropped by reason.
UDP may drop, so a drop is no error: they are counted apart from
:data:`ERRORS` (a flood of refused datagrams would otherwise fire the
errors-per-minute alert), one dict add per datagram.
"""

from collections import Counter

__all__ = ["ERROR_KINDS", "ERRORS", "Tally", "UDP", "UDP_KINDS", "count",
           "count_destination_error", "count_udp"]

#: The error kinds a snapshot lists (docs/control-protocol.rst), always all of them.
ERROR_KINDS = ("auth_failures", "decoy_answers", "acl_refusals", "source_refusals",
               "dns_failures", "connect_timeouts", "connect_refused", "resets",
               "limit_hits", "bans")

#: Failures by kind, for the whole process (one daemon per process).
ERRORS = Counter()


def count(kind, n=1):
    """One more failure of ``kind`` (one of :data:`ERROR_KINDS`)."""
    ERRORS[kind] += n


#: What the snapshot's ``udp`` object lists (docs/control-protocol.rst): datagrams
#: carried each way, and dropped: fragments (FRAG != 0), from a source other than
#: the associating app, refused by the destination ACL, finding a full queue (or
#: the tunnel's budget spent), too big for the tunnel, malformed, and for an
#: association that is gone, over the user's rate (server); UDP sends the kernel
#: refused; associations opened.
UDP_KINDS = ("datagrams_up", "datagrams_down", "dropped_fragment", "dropped_source",
             "dropped_acl", "dropped_queue_full", "dropped_too_big", "dropped_malformed",
             "dropped_no_association", "dropped_rate", "send_errors", "associations")

#: UDP datagrams by kind, for the whole process.
UDP = Counter()


def count_udp(kind, n=1):
    """One more datagram of ``kind`` (one of :data:`UDP_KINDS`)."""
    UDP[kind] += n


#: SOCKS5 reply codes of a failed destination -> the error kind it is counted as.
_DESTINATION_KINDS = {0x02: "acl_refusals", 0x04: "dns_failures", 0x05: "connect_refused",
                      0x06: "connect_timeouts"}


def count_destination_error(error):
    """Count a stream whose destination failed by its SOCKS5 reply code.

    0x02 is the ACL, 0x04 a name that does not resolve (or a host that does
    not answer), 0x05 a refused connect, 0x06 a connect that timed out; other
    codes (0x01 general failure, 0x03 network unreachable) count nowhere but
    in the log: they say nothing about the destination the admin can act on.
    """
    kind = _DESTINATION_KINDS.get(getattr(error, "reply", None))
    if kind is not None:
        ERRORS[kind] += 1


class Tally:
    """Streams and bytes of what ended, for one tunnel or one user (server) or the process.

    ``bytes_in``/``bytes_out`` are as the session sees them (from / to its
    peer); the monitor turns them into up/down by role.  ``peak`` is the most
    streams open at once since :meth:`take_peak` last ran (server users).
    """

    __slots__ = ("bytes_in", "bytes_out", "streams", "peak", "tunnel_seconds", "parent")

    def __init__(self, parent=None):
        self.bytes_in = 0
        self.bytes_out = 0
        self.streams = 0            # streams opened, live ones included
        self.peak = 0
        self.tunnel_seconds = 0.0   # of tunnels that ended
        self.parent = parent        # a tunnel's tally adds to its user's

    def stream_opened(self, open_now):
        """A new stream; ``open_now``: the streams now open for the user (server) or the
        tunnel (client), for the peak."""
        self.streams += 1
        if open_now > self.peak:
            self.peak = open_now
        if self.parent is not None:
            self.parent.stream_opened(open_now)

    def stream_ended(self, stream):
        """``stream`` left its session's table: its bytes stay here."""
        self.bytes_in += stream.bytes_in
        self.bytes_out += stream.bytes_out
        if self.parent is not None:
            self.parent.stream_ended(stream)

    def tunnel_ended(self, seconds):
        """A tunnel that was up ``seconds`` ended."""
        self.tunnel_seconds += seconds
        if self.parent is not None:
            self.parent.tunnel_ended(seconds)

    def take_peak(self, open_now):
        """The peak since the last call; the next one starts from ``open_now``."""
        peak, self.peak = max(self.peak, open_now), open_now
        return peak
