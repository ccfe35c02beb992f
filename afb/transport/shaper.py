"""Bandwidth limits and fair shares of the server's users, by back-pressure (issue 13).

Each user has one :class:`Shaper` per direction; the relays of its streams
(:mod:`afb.transport.relay`) ask it before they move bytes:

* **down** (destination -> client): a relay reads its destination socket at
  most :meth:`Shaper.ready` bytes at a time; when the bucket is empty it
  stops reading (as it does when a byte budget is exhausted) and waits on
  the shaper, whose one timer wakes it when tokens are back.  The
  destination's data waits in the kernel, then in the destination: TCP
  slows the sender, afb holds nothing more.
* **up** (client -> destination): the bytes a destination took are handed
  back to the client as WINDOW credit only as fast as the bucket allows, so
  the client stops sending after one window.  What is held back is credit,
  not data: memory stays bounded by the stream windows.

A user's limit is its own rate (``[qos] user_rate_down`` / ``user_rate_up``,
or its row in the state store's ``user_limits`` table), and, when ``[qos]
max_down`` / ``max_up`` cap the whole server, its fair share of the cap
(:func:`afb.mux.rate.fair_shares`, by ``weight``), recomputed every
:data:`~afb.mux.rate.SHARE_PERIOD` seconds by :class:`Qos` from what each
user moved and whether it was throttled; a bucket at the cap is charged by
every user too, so the cap holds while shares catch up.

Per-user overrides live in the state store (``afb user limit alice --down
10M``), not in token claims: a limit is the operator's decision about a
user, not about one token; it changes without issuing and handing out a new
token, applies to every token of the user (refreshed ones too) and, on
SIGHUP, to the user's live tunnels; and several servers sharing the store
agree on it.

Unlimited costs the data path one ``None`` test and one attribute read per
read or write: a relay's shaper is None on the client, and
:attr:`Shaper.limited` is False on a server without limits.
"""

import logging
import time

import gevent

from afb.mux.rate import MIN_GRANT, SHARE_PERIOD, TokenBucket, fair_shares

log = logging.getLogger(__name__)

__all__ = ["Shaper", "Priority", "Qos", "qos_settings"]


class Shaper:
    """One user's rate in one direction: its bucket, the cap's, the waiting relays."""

    __slots__ = ("bucket", "cap", "limited", "limit", "weight", "moved", "wanted_more",
                 "throttled", "throttled_mark", "_since", "_waiters", "_first", "_timer",
                 "_due", "_slice", "clock")

    def __init__(self, cap=None, clock=time.monotonic):
        self.clock = clock
        self.bucket = TokenBucket(0, now=clock())
        self.cap = cap              # the server-wide bucket (a TokenBucket) or None
        self.limit = 0.0            # the user's own rate (0: none)
        self.weight = 1.0
        self.limited = False
        self.moved = 0              # bytes since the fair-share loop last looked
        self.wanted_more = False    # a relay waited since then
        self.throttled = 0.0        # seconds with a relay waiting, finished spells
        self.throttled_mark = 0.0   # throttled_seconds() at the last reset_figures()
        self._since = None          # start of the current spell
        self._waiters = {}
        self._first = {}            # priority streams' waiters: called first
        self._timer = None
        self._due = 0.0             # when the timer fires
        self._slice = 0.0           # each woken relay's part of the tokens (0: no limit)

    def __repr__(self):
        return "<Shaper %r%s>" % (self.bucket, " waiters=%d" % len(self._waiters)
                                  if self._waiters else "")

    @property
    def rate(self):
        """The rate in force (bytes/s; 0: unlimited)."""
        return self.bucket.rate

    @property
    def waiting(self):
        return len(self._waiters) + len(self._first)

    def throttled_seconds(self, now=None):
        """Seconds a relay waited, since this shaper was made (a counter's total)."""
        since = self._since
        return self.throttled + ((now or self.clock()) - since if since is not None else 0.0)

    def throttled_now(self, now=None):
        """Seconds a relay waited since :meth:`reset_figures` (the snapshot's figure)."""
        return self.throttled_seconds(now) - self.throttled_mark

    def reset_figures(self):
        """The owner's last stream ended: :meth:`throttled_now` starts again from 0."""
        self.throttled_mark = self.throttled_seconds()

    def configure(self, rate, burst=0, weight=1.0, limit=None):
        """Set the rate in force (``limit``: the user's own, for the fair shares)."""
        now = self.clock()
        if limit is not None:
            self.limit = limit
        self.weight = weight
        if rate != self.bucket.rate:
            self.bucket.configure(rate, burst or None, now)
        self.limited = bool(rate) or self.cap is not None
        if self._waiters or self._first:
            self._arm(0.0)

    def ready(self, wanted, debt=False):
        """Bytes a relay may move now (<= ``wanted``), 0: wait (call :meth:`wait`).

        ``debt``: a priority stream's question, which may take the buckets down
        to minus one burst (see :class:`Priority`).
        """
        now = self.clock()
        bucket = self.bucket
        allowed = bucket.allowance(now)
        if debt:
            allowed += bucket.burst
        cap = self.cap
        if cap is not None:
            capped = cap.allowance(now)
            if debt:
                capped += cap.burst
            if capped < allowed:
                allowed = capped
        part = self._slice
        if part and not debt:
            if allowed < part:
                return 0
            if allowed < self._burst():
                return wanted if wanted <= part else int(part)
            self._slice = 0.0       # the buckets are full again: no one is short
        if allowed >= wanted:
            return wanted
        if allowed < MIN_GRANT and allowed < self._burst():
            return 0
        return int(allowed)

    def spend(self, n):
        """Charge ``n`` bytes moved (after a read, or credit handed back)."""
        now = self.clock()
        self.bucket.spend(n, now)
        if self.cap is not None:
            self.cap.spend(n, now)
        self.moved += n

    def wait(self, callback, first=False):
        """Call ``callback()`` once (when tokens are back, or the limit changed);
        ``first``: a priority stream's, called before the others, as soon as the
        buckets are above minus one burst."""
        self.wanted_more = True
        now = self.clock()
        if self._since is None:
            self._since = now
        (self._first if first else self._waiters)[callback] = None
        timer = self._timer
        active = timer is not None and timer.active
        if active and not first:
            return
        want = min(MIN_GRANT, self._burst())
        bucket, cap = self.bucket, self.cap
        delay = bucket.wait_time(want - (bucket.burst if first else 0), now)
        if cap is not None:
            delay = max(delay, cap.wait_time(want - (cap.burst if first else 0), now))
            delay = min(delay, SHARE_PERIOD)
        if not active or now + delay < self._due:
            self._arm(delay)

    def forget(self, callback):
        if (self._waiters.pop(callback, 1) is None or self._first.pop(callback, 1) is None) \
                and not self._waiters and not self._first:
            self._spell_ends()

    def _burst(self):
        burst = self.bucket.burst if self.bucket.rate else float("inf")
        if self.cap is not None and self.cap.rate and self.cap.burst < burst:
            burst = self.cap.burst
        return burst

    def _arm(self, delay):
        timer = self._timer
        if timer is not None:
            timer.stop()
            timer.close()
        delay = max(delay, 0.0005)
        self._due = self.clock() + delay
        self._timer = timer = gevent.get_hub().loop.timer(delay)
        timer.start(self._fire)

    def _fire(self):
        """Wake every waiter; when several wait, each may take only its part of the
        tokens there are now.  Without the parts, the relay whose read callback the
        event loop ran first took them all, every time: an SSH stream of a user
        beside its bulk download waited 20 s for one read (seen in
        tests/test_qos_devices_process.py), and which one ran first depended on
        the order libev invokes ready descriptors in."""
        first, self._first = self._first, {}
        waiters, self._waiters = self._waiters, {}
        self._slice = 0.0
        count = len(first) + len(waiters)
        if count > 1:
            now = self.clock()
            allowed = self.bucket.allowance(now)
            if self.cap is not None:
                allowed = min(allowed, self.cap.allowance(now))
            if count < allowed < float("inf"):
                self._slice = allowed / count
        for callback in first:
            callback()
        for callback in waiters:
            callback()
        if not self._waiters and not self._first:
            self._spell_ends()

    def _spell_ends(self):
        if self._since is not None:
            self.throttled += self.clock() - self._since
            self._since = None

    def close(self):
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None
        self._waiters.clear()
        self._first.clear()
        self._spell_ends()


class Priority:
    """A priority stream's view of its device's :class:`Shaper` (client, issue 13).

    What the stream moves is charged to the device's buckets as any stream's
    is, so the device's rate holds; but it may take them down to minus one
    burst where the others wait for :data:`~afb.mux.rate.MIN_GRANT` tokens, and
    its waiters are woken first.  So beside a throttled bulk transfer of the
    same device (which keeps the bucket near zero), an SSH keystroke or a game
    packet is read at once instead of waiting for the next refill of the
    queue (up to MIN_GRANT / rate: 16 ms at 1 MB/s, with every other waiter
    of the device before it); the bulk transfer pays for it.  A priority
    stream that moves bulk takes the device's whole rate (strict priority).
    """

    __slots__ = ("shaper",)

    def __init__(self, shaper):
        self.shaper = shaper

    @property
    def limited(self):
        return self.shaper.limited

    @property
    def rate(self):
        return self.shaper.rate

    def ready(self, wanted):
        return self.shaper.ready(wanted, debt=True)

    def spend(self, n):
        self.shaper.spend(n)

    def wait(self, callback):
        self.shaper.wait(callback, first=True)

    def forget(self, callback):
        self.shaper.forget(callback)


def qos_settings(section):
    """The ``[qos]`` section as plain numbers (floats, bytes/s)."""
    return {key: float(section.get(key, 0) or 0) for key in (
        "user_rate_down", "user_rate_up", "burst", "max_down", "max_up",
        "max_new_streams_per_second")}


class Qos:
    """The server's rates: defaults, per-user overrides, caps and the fair-share loop."""

    def __init__(self, settings=None, overrides=None, clock=time.monotonic):
        self.clock = clock
        self.settings = {}
        self.overrides = {}
        self.caps = {"down": None, "up": None}
        self.users = {}             # name -> (down Shaper, up Shaper), set by the registry
        # name -> [down, up] seconds throttled in the shapers of its earlier tunnels: a
        # user's shapers go with its last tunnel (its snapshot figures start again), its
        # Prometheus counter goes on.  As many entries as the monitor's user tallies.
        self.finished = {}
        self.keep_totals = True
        self.node_shares = {}       # name -> on how many nodes its rate is split (issue 14)
        self._loop = None
        self.configure(settings or {}, overrides or {})

    # --- configuration -------------------------------------------------------------

    def configure(self, settings, overrides):
        """Apply a ``[qos]`` section (qos_settings) and the store's overrides; live users too."""
        self.settings = dict(settings)
        self.overrides = dict(overrides)
        burst = self.settings.get("burst", 0)
        for direction in ("down", "up"):
            cap = self.settings.get("max_" + direction, 0)
            if cap:
                bucket = self.caps[direction]
                if bucket is None:
                    self.caps[direction] = TokenBucket(cap, burst or None, self.clock())
                else:
                    bucket.configure(cap, burst or None, self.clock())
            else:
                self.caps[direction] = None
        for name, (down, up) in self.users.items():
            self._apply(name, down, up)
        self._start_or_stop_loop()

    @property
    def new_streams_rate(self):
        return self.settings.get("max_new_streams_per_second", 0)

    def user_limits(self, name):
        """-> (rate down, rate up, weight) of user ``name`` (rates 0: unlimited)."""
        row = self.overrides.get(name) or {}
        down = row.get("rate_down")
        up = row.get("rate_up")
        nodes = self.node_shares.get(name, 1)
        return ((self.settings.get("user_rate_down", 0) if down is None else down) / nodes,
                (self.settings.get("user_rate_up", 0) if up is None else up) / nodes,
                row.get("weight") or 1.0)

    def set_node_share(self, name, nodes):
        """Several servers (afb.transport.shared_state): ``name``'s rates are split
        between ``nodes`` nodes; this one takes ``1 / nodes`` of them."""
        if self.node_shares.get(name, 1) == nodes:
            return
        if nodes == 1:
            self.node_shares.pop(name, None)
        else:
            self.node_shares[name] = nodes
        if name in self.users:
            self._apply(name, *self.users[name])

    def shapers_for(self, name):
        """New shapers of a user who arrives: its limits and the caps."""
        down, up = Shaper(self.caps["down"], self.clock), Shaper(self.caps["up"], self.clock)
        self.users[name] = (down, up)
        self._apply(name, down, up)
        return down, up

    def drop(self, name):
        self.node_shares.pop(name, None)
        shapers = self.users.pop(name, None)
        if shapers is not None:
            if self.keep_totals:
                totals = self.finished.setdefault(name, [0.0, 0.0])
                for index, shaper in enumerate(shapers):
                    totals[index] += shaper.throttled_seconds()
            for shaper in shapers:
                shaper.close()

    def throttled_totals(self, name):
        """-> (down, up) seconds ``name`` was throttled since the start (counters)."""
        down, up = self.finished.get(name, (0.0, 0.0))
        live = self.users.get(name)
        if live is not None:
            down += live[0].throttled_seconds()
            up += live[1].throttled_seconds()
        return down, up

    def _apply(self, name, down, up):
        rate_down, rate_up, weight = self.user_limits(name)
        burst = self.settings.get("burst", 0)
        for shaper, rate, direction in ((down, rate_down, "down"), (up, rate_up, "up")):
            shaper.cap = self.caps[direction]
            if shaper.cap is not None:
                # A newcomer's share until the loop sees it move.
                share = shaper.cap.rate * weight / (weight + sum(
                    pair[0 if direction == "down" else 1].weight for key, pair in
                    self.users.items() if key != name))
                rate = min(rate, share) if rate else share
            shaper.configure(rate, burst, weight, limit=self.user_limits(name)[
                0 if direction == "down" else 1])

    # --- fair shares --------------------------------------------------------------------

    def _start_or_stop_loop(self):
        wanted = self.caps["down"] is not None or self.caps["up"] is not None
        if wanted and self._loop is None:
            self._loop = gevent.spawn(self._share_loop)
        elif not wanted and self._loop is not None:
            self._loop.kill(block=False)
            self._loop = None

    def _share_loop(self):
        last = self.clock()
        while True:
            gevent.sleep(SHARE_PERIOD)
            now = self.clock()
            self.share(now - last)
            last = now

    def share(self, elapsed):
        """Recompute every user's rate from the last ``elapsed`` seconds (the loop)."""
        for index, direction in enumerate(("down", "up")):
            cap = self.caps[direction]
            if cap is None:
                continue
            burst = self.settings.get("burst", 0)
            shapers = {name: pair[index] for name, pair in self.users.items()}
            demand = {name: (s.weight, s.moved / elapsed if elapsed > 0 else 0.0,
                             s.wanted_more or s.waiting > 0, s.limit)
                      for name, s in shapers.items()}
            for name, rate in fair_shares(cap.rate, demand).items():
                shaper = shapers[name]
                shaper.moved = 0
                shaper.wanted_more = False
                shaper.configure(rate, burst, shaper.weight)

    def close(self):
        if self._loop is not None:
            self._loop.kill(block=False)
            self._loop = None
