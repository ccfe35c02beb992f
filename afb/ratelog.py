"""Rate-limited log lines: a few lines per key, then one summary line.

Anyone on the network can make the server log: every probe, refused
upgrade, refused stream or failed login used to cost one line, so a single
source could write thousands of lines a second (about 27 GiB a day, measured
with 2,732 probes/s).  A :class:`LogLimiter` lets through the first
``burst`` lines of a key (usually the peer's address, or the user) in each
``interval`` seconds, counts the rest, and says how many it held back in one
line when the interval ends::

    refused WebSocket upgrade from 192.0.2.7: wrong path '/x'
    ... (4 more lines of that source)
    192.0.2.7: 2718 more lines like "refused WebSocket upgrade" in the last 60 s

Pure code: no gevent, no I/O but the logger, an injectable clock.  The
summary lines leave from :meth:`LogLimiter.flush`, which the daemons call
from a housekeeping loop (and which :meth:`log` calls for the key it sees),
so a flood that stops still gets its summary.  At most ``max_keys`` keys are
remembered; when a flood of keys (many source addresses) fills the table,
keys without held-back lines go first, then the oldest are summarised early.
"""

import logging
import time
import weakref
from collections import OrderedDict

__all__ = ["LogLimiter", "flush_all"]

_limiters = weakref.WeakSet()


def flush_all(now=None):
    """:meth:`LogLimiter.flush` every limiter of the process (a daemon's housekeeping)."""
    return sum(limiter.flush(now) for limiter in list(_limiters))


class _Key:
    __slots__ = ("started", "emitted", "held", "what", "level")

    def __init__(self, started):
        self.started = started
        self.emitted = 0
        self.held = 0
        self.what = ""
        self.level = logging.INFO


class LogLimiter:
    """At most ``burst`` lines per key per ``interval`` s on ``logger``; see the module doc."""

    def __init__(self, logger, interval=60.0, burst=5, max_keys=4096, clock=time.monotonic):
        self.logger = logger
        self.interval = float(interval)
        self.burst = int(burst)
        self.max_keys = max(1, int(max_keys))
        self.clock = clock
        self._keys = OrderedDict()
        #: Lines held back since start, all keys (for counters and tests).
        self.suppressed = 0
        _limiters.add(self)

    def __len__(self):
        return len(self._keys)

    def log(self, level, key, what, msg, *args, extra=None):
        """Log ``msg % args`` unless ``key`` used its burst; True if it went out.

        ``what`` is a short fixed description of the kind of line (without
        values), used in the summary: ``N more lines like "<what>"``;
        ``extra``: the record's fields for JSON logs (afb/logsetup.py).
        """
        if not self.logger.isEnabledFor(level):
            return False
        now = self.clock()
        entry = self._keys.get(key)
        if entry is not None and now - entry.started >= self.interval:
            self._summarise(key, entry, now)
            del self._keys[key]
            entry = None
        if entry is None:
            self._make_room(now)
            entry = self._keys[key] = _Key(now)
        if entry.emitted < self.burst:
            entry.emitted += 1
            self.logger.log(level, msg, *args, extra=extra)
            return True
        entry.held += 1
        entry.what = what
        entry.level = max(entry.level, level)
        self.suppressed += 1
        return False

    def info(self, key, what, msg, *args, extra=None):
        return self.log(logging.INFO, key, what, msg, *args, extra=extra)

    def warning(self, key, what, msg, *args, extra=None):
        return self.log(logging.WARNING, key, what, msg, *args, extra=extra)

    def flush(self, now=None):
        """Summarise and forget every key whose interval has ended; -> lines written."""
        now = self.clock() if now is None else now
        ended = [(k, e) for k, e in self._keys.items() if now - e.started >= self.interval]
        written = 0
        for key, entry in ended:
            written += self._summarise(key, entry, now)
            del self._keys[key]
        return written

    def _summarise(self, key, entry, now):
        if not entry.held:
            return 0
        self.logger.log(entry.level, "%s: %d more lines like \"%s\" in the last %.0f s",
                        key, entry.held, entry.what, min(now - entry.started, self.interval))
        entry.held = 0
        return 1

    def _make_room(self, now):
        if len(self._keys) < self.max_keys:
            return
        quiet = [k for k, e in self._keys.items() if not e.held]
        for key in quiet[:max(1, len(self._keys) // 8)]:
            del self._keys[key]
        while len(self._keys) >= self.max_keys:
            key, entry = self._keys.popitem(last=False)
            self._summarise(key, entry, now)
