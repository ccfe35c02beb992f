"""One server node among several sharing a Redis store (``[server] state = redis://``).

What another node needs lives in Redis (:mod:`afb.state_redis`); this module
is the node's side of it, in greenlets:

* **revocations, pushed**: a pub/sub listener hands each revocation to the
  :class:`~afb.apps.live_tokens.RevocationWatch` as it is made, so every
  node's live tunnels close within a round trip of ``afb token revoke``
  (the watch's poll stays, every ``revocation_poll`` s, as the safety net
  and to catch up after an outage: after a reconnect it re-subscribes and
  reads the revocations since its last look).
* **heartbeat** (every :data:`HEARTBEAT` s): this node's stream count per
  user (:meth:`~afb.state_redis.RedisStore.streams_publish`, a key that
  expires :data:`~afb.state_redis.NODE_TTL` s after the node's last
  heartbeat, so a crashed node's streams stop counting), and its QoS share.
* **per-user stream limit** (``max_streams_per_user``) over every node: an
  OPEN costs one Lua round trip (``streams_admit``) that refuses it if the
  nodes' sum would pass the limit; exact, since Redis runs the scripts one
  at a time and each stores its node's count.  A stream's end is seen by
  the others at the next heartbeat (until then they count it: a limit is
  never passed, a freed slot is late by up to 1 s on other nodes).
* **QoS rate shares**: a user's rate (``user_rate_*``, ``afb user limit``)
  is split evenly between the nodes where it has streams open: each node
  registers its active users every heartbeat and gets ``rate / nodes``
  (:meth:`afb.transport.shaper.Qos.set_node_share`); no round trip per
  packet.  How exact: the sum over nodes is the rate when the user's
  traffic is spread evenly; a node where the user is active but moves
  less than its share leaves the difference unused (the sum is lower, down
  to ``rate / nodes``); when a user becomes active on one more node, for up
  to one heartbeat (1 s) the sum can reach ``rate * (n + 1) / n``.
* **failed-login bans**: :class:`SharedThrottle` counts failures and bans
  in Redis with TTLs, so an address banned on one node is banned on all.
* **usage**: the usage recorder's ``add_usage`` is HINCRBY per day and user,
  so ``afb report`` adds up every node (nothing here).

While Redis cannot be reached: established tunnels keep working (stream
limits, bans and rates fall back to this node's own view); a new tunnel with
a valid token is refused with HTTP 503 (``state_unavailable =
fail-closed``, the default: a revoked token must not get in) or let in
without the revocation check (``fail-open``).  One log line when the store
goes down, one when it is back, one rate-limited line for refused upgrades;
the snapshot's ``state_store`` says "down" (the alert ``state_store``).
The reconnect loop probes with a backoff from 0.25 s to 5 s.

Not shared: the caps on pending connections per source
(:class:`~afb.transport.admission.Admission`) guard this process's
descriptors, which no other node spends; a per-source cap over all nodes is
the load balancer's (HAProxy's ``maxconn`` / stick tables).

Measured (loopback Redis 7.0, redis-py 8.1 under gevent, a 2-core VM shared
with other work): a stream admission 170 us median (p99 5 ms), a revocation
check 100 us, a ban check 70 us; a heartbeat of 1,000 active users 14 ms.
``afb token revoke`` to both nodes' tunnels closed: within milliseconds of
the command's write (0.3-0.85 s after the command started, most of it the
command's own start-up).  With Redis stopped by SIGSTOP and
``state_timeout = 1``, echoes on another tunnel never took more than 11 ms
(tests/test_shared_state_process.py).
"""

import logging
import time

import gevent

from afb.errors import AfbError
from afb.policy.access import AuthThrottle
from afb.ratelog import LogLimiter
from afb.state import StateUnavailable

log = logging.getLogger(__name__)

#: Seconds between two heartbeats (stream counts, QoS shares, the reconnect probe).
HEARTBEAT = 1.0
#: Backoff of the reconnect probe while the store is down.
PROBE_MIN, PROBE_MAX = 0.25, 5.0
_refused = LogLimiter(log, interval=60.0, burst=1)


class SharedNode:
    """This node's greenlets and hooks around a :class:`~afb.state_redis.RedisStore`."""

    def __init__(self, store, node=None, fail_open=False, users=None, watch=None):
        self.store = store
        self.node = node                # unique among the nodes (the server sets it)
        self.users = users              # the UserRegistry (its qos too)
        self.watch = watch              # the RevocationWatch
        self.fail_open = fail_open
        self.on_back = []               # callables run (in a greenlet) when the store is back
        self._active = set()            # users registered as active for QoS
        self._tasks = []
        store.on_change.append(self._changed)

    @property
    def state(self):
        return "up" if self.store.available else "down"

    # --- the upgrade's revocation check ---------------------------------------------

    def gate(self, cache):
        """The verifier's ``revocations``: ``cache`` (a RevocationCache), and the
        ``state_unavailable`` mode when the store cannot answer."""
        return _Gate(self, cache)

    def unavailable(self, claims, exc):
        """The store failed during an upgrade: None (fail-open) or StateUnavailable."""
        mode = "fail-open" if self.fail_open else "fail-closed"
        _refused.warning("state", "upgrades while the state store is down",
                         "%s; new tunnels %s ([server] state_unavailable = %s)", exc,
                         "let in without the revocation check" if self.fail_open
                         else "refused with HTTP 503", mode)
        if self.fail_open:
            return None
        raise StateUnavailable("%s (fail-closed)" % exc)

    # --- streams ----------------------------------------------------------------------

    def admit_stream(self, user, limit):
        """The per-user stream limit over every node (AfbError: refused)."""
        if not limit or not self.store.available:
            return
        try:
            admitted, total = self.store.streams_admit(self.node, user.name, user.streams, limit)
        except StateUnavailable:
            return      # this node's own count was checked already
        if not admitted:
            raise AfbError("user %s has too many streams on all servers (%d, limit %d)"
                           % (user.name, total, limit))

    # --- greenlets --------------------------------------------------------------------

    def start(self):
        self._tasks = [gevent.spawn(self._heartbeat), gevent.spawn(self._listen)]

    def stop(self):
        for task in self._tasks:
            task.kill(block=False)
        self._tasks = []
        if self.store.available:
            try:
                self.store.streams_publish(self.node, {})
                self.store.active_nodes(self.node, (), self._active)
            except StateUnavailable:
                pass

    def _changed(self, up, detail):
        if up:
            log.warning("state store %s reachable again (%s)", self.store.where, detail)
            gevent.spawn(self.watch.poll)       # what was revoked meanwhile
            for callback in self.on_back:
                gevent.spawn(callback)
        else:
            log.error("state store %s unreachable: %s; established tunnels keep working, "
                      "new tunnels are %s until it is back", self.store.where, detail,
                      "let in with this server's own checks (fail-open)" if self.fail_open
                      else "refused with HTTP 503 (fail-closed)")

    def _heartbeat(self):
        delay = PROBE_MIN
        while True:
            if not self.store.available:
                gevent.sleep(delay)
                delay = min(delay * 2, PROBE_MAX)
                self.store.probe()
                continue
            delay = PROBE_MIN
            started = time.monotonic()
            try:
                self.beat()
            except StateUnavailable:
                continue
            except Exception:  # noqa: BLE001 - a bug here must not end the heartbeat
                log.exception("state store heartbeat failed")
            gevent.sleep(max(0.05, HEARTBEAT - (time.monotonic() - started)))

    def beat(self):
        """One heartbeat: stream counts, then the QoS shares of the active users."""
        users = self.users.users
        self.store.streams_publish(self.node, {name: u.streams for name, u in users.items()
                                               if u.streams > 0})
        active = {name for name, u in users.items() if u.streams > 0}
        nodes = self.store.active_nodes(self.node, active, self._active - active)
        for name in self._active - active:
            self.users.qos.set_node_share(name, 1)
        self._active = active
        for name, count in nodes.items():
            self.users.qos.set_node_share(name, max(1, count))

    def _listen(self):
        """The revocation push; re-subscribes (and catches up) after an outage."""
        while True:
            if not self.store.available:
                gevent.sleep(PROBE_MIN)
                continue
            pubsub = None
            try:
                pubsub = self.store.pubsub()
                self.watch.poll()           # anything made before the subscription
                while self.store.available:
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        self.watch.apply(self.store.rows_of(message["data"]))
            except Exception as exc:  # noqa: BLE001 - redis-py's errors, a store gone away
                log.debug("revocation channel: %s", exc)
                gevent.sleep(PROBE_MIN)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001,S110 - closing a dead connection
                        pass


class _Gate:
    """``is_revoked`` through the cache; the node's mode when the store is down."""

    def __init__(self, node, cache):
        self.node = node
        self.cache = cache

    def is_revoked(self, claims):
        store = self.node.store
        if not store.available:         # known down: no cached answer lets one in
            return self.node.unavailable(claims, StateUnavailable(
                "state store %s unreachable" % store.where))
        try:
            return self.cache.is_revoked(claims)
        except StateUnavailable as exc:
            return self.node.unavailable(claims, exc)

    def clear(self):
        self.cache.clear()


class SharedThrottle(AuthThrottle):
    """Failed logins and bans in the shared store, this node's own as the fallback.

    Failures count in a fixed window from the first one (Redis TTL), not the
    sliding window of :class:`~afb.policy.access.AuthThrottle`; a ban is a
    key with a TTL of ``ban_time``.  A check costs one round trip (PTTL).
    """

    def __init__(self, store, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.store = store

    def _shared(self, what, *args):
        if self.max_failures <= 0 or not self.store.available:
            return None
        try:
            return what(*args)
        except StateUnavailable:
            return None

    def is_banned(self, ip):
        return super().is_banned(ip) or bool(self._shared(self.store.banned_for, self.key(ip)))

    def banned_for(self, ip):
        return max(super().banned_for(ip), self._shared(self.store.banned_for, self.key(ip))
                   or 0.0)

    def failed(self, ip, weight=1.0):
        local = super().failed(ip, weight)
        shared = self._shared(self.store.auth_failed, self.key(ip), weight, self.max_failures,
                              self.window, self.ban_time)
        return bool(local or shared)

    def succeeded(self, ip):
        super().succeeded(ip)
        self._shared(self.store.auth_succeeded, self.key(ip))
