"""The server's users: what one token subject holds over all of its tunnels.

Every limit that keeps one user from hurting the others is per user as well
as per tunnel, because a user can open several tunnels: the number of
tunnels, the number of streams (open or still dialling), the bytes held in
each direction (:class:`~afb.mux.budget.ByteBudget`, the parent of each
tunnel's) and the reader's work rate (:class:`~afb.transport.pacer.Pacer`,
the parent of each tunnel's), its bandwidth (a :class:`~afb.transport.shaper.Shaper`
per direction, from :class:`~afb.transport.shaper.Qos`) and how many streams it
may open a second.  A :class:`User` lives while it has tunnels;
counting a stream is an integer add where the session already creates and
forgets it, so nothing is scanned per OPEN (the old per-user stream check
summed over every tunnel of the server).  With several servers sharing a
Redis store, the stream limit holds over all of them
(:mod:`afb.transport.shared_state`, one round trip per OPEN).
"""

import time

from afb.errors import CLOSE_POLICY_VIOLATION, AfbError
from afb.mux.budget import ByteBudget
from afb.mux.rate import TokenBucket
from afb.transport.pacer import Pacer
from afb.transport.shaper import Qos

__all__ = ["User", "UserRegistry", "TooManyTunnels"]


class TooManyTunnels(AfbError):
    """A user has as many tunnels as it may; the new one is closed (1008)."""

    close_code = CLOSE_POLICY_VIOLATION


class User:
    """One user's share of the server (see the module doc)."""

    __slots__ = ("name", "sessions", "tunnels", "streams", "down", "up", "pacer",
                 "shape_down", "shape_up", "opens", "refused_opens")

    def __init__(self, name, buffer_limit, frame_rate, shapers=(None, None)):
        self.name = name
        self.sessions = set()    # sessions running (after the handshake)
        self.tunnels = 0         # tunnels admitted, handshake included
        self.streams = 0         # streams open or dialling, all tunnels
        self.down = ByteBudget(buffer_limit, name="to %s" % name)
        self.up = ByteBudget(buffer_limit, name="from %s" % name)
        self.pacer = Pacer(frame_rate)
        self.shape_down, self.shape_up = shapers
        self.opens = None           # new streams a second (a TokenBucket), None: no limit
        self.refused_opens = 0

    def __repr__(self):
        return "<User %s tunnels=%d streams=%d>" % (self.name, self.tunnels, self.streams)


class UserRegistry:
    """Users with at least one tunnel, by name; limits from the ``[tunnel]`` section."""

    def __init__(self, max_tunnels=0, max_streams=0, buffer_limit=0, frame_rate=None, qos=None,
                 clock=time.monotonic):
        self.qos = qos if qos is not None else Qos()
        self.clock = clock
        self.max_tunnels = max_tunnels
        self.max_streams = max_streams
        self.buffer_limit = buffer_limit
        self.frame_rate = frame_rate
        self.users = {}
        #: Several servers: a SharedNode (afb.transport.shared_state) whose
        #: admit_stream holds max_streams over every node; None: this node alone.
        self.shared = None

    def __len__(self):
        return len(self.users)

    def get(self, name):
        return self.users.get(name)

    def enter(self, name):
        """A new tunnel of ``name``: its :class:`User`, or TooManyTunnels."""
        user = self.users.get(name)
        if user is None:
            user = self.users[name] = User(name, self.buffer_limit, self.frame_rate,
                                           self.qos.shapers_for(name))
            self._limit_opens(user)
        if self.max_tunnels and user.tunnels >= self.max_tunnels:
            self._drop_if_idle(user)
            raise TooManyTunnels("user %s has %d tunnels already (limit %d: [tunnel] "
                                 "max_tunnels_per_user)" % (name, user.tunnels, self.max_tunnels))
        user.tunnels += 1
        return user

    def leave(self, user, session=None):
        """A tunnel of ``user`` ended (``session``: if it got that far)."""
        user.tunnels -= 1
        if session is not None:
            user.sessions.discard(session)
        self._drop_if_idle(user)

    def check_stream(self, user):
        """Refuse (AfbError, SOCKS 0x01) a stream beyond the user's limit.

        The new stream is already counted (the session counts it on OPEN).
        """
        if self.max_streams and user.streams > self.max_streams:
            raise AfbError("user %s has too many streams (limit %d)" % (user.name,
                                                                         self.max_streams))
        if self.shared is not None:
            self.shared.admit_stream(user, self.max_streams)
        opens = user.opens
        if opens is not None and not opens.take(1, self.clock()):
            user.refused_opens += 1
            raise AfbError("user %s opens too many streams (limit %g a second: [qos] "
                           "max_new_streams_per_second)" % (user.name, opens.rate))

    def configure_qos(self, settings, overrides):
        """A reload: new ``[qos]`` settings and overrides, applied to the live users too."""
        self.qos.configure(settings, overrides)
        for user in self.users.values():
            self._limit_opens(user)

    def _limit_opens(self, user):
        rate = self.qos.new_streams_rate
        if not rate:
            user.opens = None
        elif user.opens is None:
            user.opens = TokenBucket(rate, rate, self.clock())
        else:
            user.opens.configure(rate, rate, self.clock())

    def _drop_if_idle(self, user):
        if user.tunnels <= 0 and not user.sessions and self.users.get(user.name) is user:
            del self.users[user.name]
            self.qos.drop(user.name)
