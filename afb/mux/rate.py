"""Byte-rate limits, sans-IO: a token bucket, and weighted fair shares of a cap.

A :class:`TokenBucket` holds up to ``burst`` tokens (bytes) and gains
``rate`` a second.  The server's shaping (:mod:`afb.transport.shaper`) asks
it how much a relay may read now (:meth:`TokenBucket.allowance`), charges
what was read (:meth:`TokenBucket.spend`, which may leave a debt of at most
one read: the next read waits until it is repaid, so the long-run rate is
exact), and how long to wait (:meth:`TokenBucket.wait_time`).  It never
holds data: afb enforces a rate by *not reading* (down) or *not granting
credit* (up), so memory stays bounded by the windows and budgets.

:func:`fair_shares` splits a total cap between users by weight, max-min
fair and work-conserving: a user who used less than its share last period
keeps what it used (plus headroom, to grow), and the rest is split among
the users who wanted more (were throttled), or among all of them when none
did.  (The first version kept the rest unassigned: a lone user under a cap
could then grow by only a quarter per period.)  It is re-run every
``period`` seconds (:data:`SHARE_PERIOD`) by the server; a user who stops
leaves its share to the others at the next run.

Pure code: the clock is an argument (``now``), so the tests run on a fake one.
"""

__all__ = ["TokenBucket", "fair_shares", "default_burst", "MIN_GRANT", "SHARE_PERIOD"]

#: Smallest read a throttled relay waits for (unless the burst is smaller):
#: waking a reader for a few bytes costs more than it moves.
MIN_GRANT = 16 * 1024
#: Seconds between two recomputations of the fair shares (work-conserving
#: within this, plus the throttled readers' wait).
SHARE_PERIOD = 0.2
#: A user who moved less than its share gets this much more than it used,
#: and at least :data:`FLOOR` bytes/s (a reader waits for MIN_GRANT).
HEADROOM = 1.25
FLOOR = MIN_GRANT / SHARE_PERIOD


def default_burst(rate):
    """The burst of a bucket of ``rate`` when the config says 0: 100 ms of it, >= 64 KiB."""
    return max(64 * 1024, rate / 10.0)


class TokenBucket:
    """``rate`` tokens (bytes) a second, at most ``burst`` saved; see the module doc.

    ``rate`` 0 or None: unlimited (:meth:`allowance` is infinite, nothing waits).
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate, burst=None, now=0.0):
        self.rate = float(rate or 0)
        self.burst = float(burst or default_burst(self.rate))
        self.tokens = self.burst
        self.stamp = now

    def __repr__(self):
        return "<TokenBucket %.0f/s burst %.0f tokens %.0f>" % (self.rate, self.burst, self.tokens)

    def _refill(self, now):
        elapsed = now - self.stamp
        if elapsed > 0:
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.stamp = now
        return self.tokens

    def allowance(self, now):
        """Tokens there are now (<= 0: none; may be negative after a debt)."""
        if not self.rate:
            return float("inf")
        return self._refill(now)

    def take(self, n, now):
        """Take up to ``n`` tokens; -> how many were granted (0..n)."""
        if not self.rate:
            return n
        tokens = self._refill(now)
        granted = n if n <= tokens else max(0, int(tokens))
        self.tokens = tokens - granted
        return granted

    def spend(self, n, now):
        """Charge ``n`` bytes already moved (the tokens may go below zero)."""
        if self.rate:
            self._refill(now)
            self.tokens -= n

    def wait_time(self, n, now):
        """Seconds until ``n`` tokens (at most the burst) are there; 0: now."""
        if not self.rate:
            return 0.0
        want = n if n < self.burst else self.burst
        missing = want - self._refill(now)
        return missing / self.rate if missing > 0 else 0.0

    def configure(self, rate, burst=None, now=0.0):
        """A new rate (a reload, a new fair share); saved tokens are kept (up to the
        burst), an unlimited bucket that gets a rate starts full."""
        was_unlimited = not self.rate
        self._refill(now)
        self.rate = float(rate or 0)
        self.burst = float(burst or default_burst(self.rate))
        if self.tokens > self.burst or was_unlimited:
            self.tokens = self.burst
        self.stamp = now


def fair_shares(cap, users):
    """Split ``cap`` bytes/s among ``users``: ``{key: (weight, used, wanted_more, limit)}``.

    ``used``: bytes/s moved last period; ``wanted_more``: the user was
    throttled (its demand is unknown, at least its share); ``limit``: its
    own rate (0: none).  -> ``{key: rate}``, summing to at most ``cap``.
    Weighted max-min fairness by water-filling: a user whose demand (what
    it used, times :data:`HEADROOM`, or its own limit) is below its weighted
    share of what is left gets its demand; the others split the rest by
    weight.  When every user got its demand, what is left is shared among
    them by weight too (work-conserving: a lone user gets the whole cap).
    Users who moved nothing and wanted nothing are not counted: they get
    the share a newcomer would (so a new transfer starts at once).
    """
    demands = {}
    idle = []
    for key, (weight, used, wanted_more, limit) in users.items():
        weight = weight if weight > 0 else 1.0
        if not used and not wanted_more:
            idle.append(key)
            continue
        demand = float("inf") if wanted_more else max(used * HEADROOM, FLOOR)
        if limit:
            demand = min(demand, limit)
        demands[key] = (weight, demand)
    shares = {}
    left = float(cap)
    active = dict(demands)
    while active:
        total_weight = sum(weight for weight, _ in active.values())
        satisfied = [key for key, (weight, demand) in active.items()
                     if demand <= left * weight / total_weight]
        if not satisfied:
            for key, (weight, _) in active.items():
                shares[key] = left * weight / total_weight
            break
        for key in satisfied:
            shares[key] = active.pop(key)[1]
            left -= shares[key]
    if not active and left > 0:
        # Everyone got what it asked for: the rest goes to them too, by weight
        # (within their own limits), so no one waits while the cap has room.
        open_ = {key: weight for key, (weight, _) in demands.items()
                 if not users[key][3] or shares[key] < users[key][3]}
        while open_ and left > 0:
            total_weight = sum(open_.values())
            pool = left
            capped = False
            for key, weight in list(open_.items()):
                limit = users[key][3]
                share = shares[key] + pool * weight / total_weight
                if limit and share >= limit:
                    share = limit
                    capped = True
                    del open_[key]
                left -= share - shares[key]
                shares[key] = share
            if not capped:
                break
    active_weight = sum(weight for weight, _ in demands.values())
    for key in idle:
        weight, _used, _more, limit = users[key]
        weight = weight if weight > 0 else 1.0
        share = cap * weight / (active_weight + weight)
        shares[key] = min(share, limit) if limit else share
    return shares
