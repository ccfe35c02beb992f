"""Alert rules ([alerts] in the config): a pure evaluator of snapshots.

:class:`AlertEngine` takes the daemon's SNAPSHOT dict (docs/control-protocol.rst)
once a second and returns the alerts that started and those that ended; it
holds no socket, no greenlet and no clock of its own (``now`` comes in), so
its tests feed fixed snapshots and a fake time.  :mod:`afb.monitor.reporting`
runs it every second, logs each change in one line and runs ``alert_command``.

Rules (0 turns one off), each alert named by a stable tag:

``bandwidth_up`` / ``bandwidth_down``
    the whole daemon's rate above ``max_rate_up`` / ``max_rate_down``.
``error_rate``
    errors of every kind but ``decoy_answers`` over the last 60 s above
    ``max_errors_per_minute`` (answering probes and stray browsers with the
    decoy site is what a public server does all day, not an error of afb's).
``auth_failures`` (server)
    failed tunnel logins over the last 60 s above ``max_auth_failures_per_minute``;
``auth_failures_source`` (server; subject: the address)
    the same from one client address above ``max_auth_failures_per_source``.
    Fed by ``sources``: the failures per address since the previous call.
``tunnel_down`` (client)
    no open tunnel for longer than ``tunnel_down_after`` seconds.
``state_store`` (server, several servers sharing Redis)
    the shared state store cannot be reached (new tunnels get HTTP 503
    under ``state_unavailable = fail-closed``); always on.  Fed by the
    snapshot's ``state_store`` ("up" / "down"), absent with SQLite.
``rss`` / ``fds``
    the process's resident memory above ``max_rss`` bytes, its descriptors
    above ``max_fds``.
``anomaly`` (subject: a user, or None for the whole daemon)
    up+down rate above ``anomaly_factor`` times its own recent mean, an
    exponentially weighted moving average with time constant
    ``anomaly_window`` seconds, and above ``anomaly_floor`` too (from idle,
    any traffic is "far above the mean": the floor keeps that quiet).  A
    mean starts at the subject's first rate, and a subject is judged once it
    has been watched for a quarter of the window (150 s by default): before
    that its mean is no baseline.

An alert starts on the first evaluation its condition holds and ends once
it has not held for ``clear_after`` seconds: a 1 s rate goes up and down
with every burst, and an alert that flaps each second helps no one.
While it is active its ``value`` and ``message`` follow the latest figures.
"""

import math
from collections import deque

#: Seconds of history the per-minute rules look at.
MINUTE = 60.0
#: Every alert name (``alert=<name>`` in the log).
RULE_NAMES = ("bandwidth_up", "bandwidth_down", "error_rate", "auth_failures",
              "auth_failures_source", "tunnel_down", "rss", "fds", "anomaly", "state_store")
#: Error kinds the ``error_rate`` rule leaves out (see the module doc).
NOT_ERRORS = ("decoy_answers",)


def human_rate(value):
    """``12100000.0`` -> ``'12.1 MB/s'`` (decimal units, as the config's rates)."""
    return human_bytes(value) + "/s"


def human_bytes(value):
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return "%.1f %s" % (value / size, unit)
    return "%.0f B" % value


class _Window:
    """Counts within the last minute: ``add(now, total) -> increase over <= 60 s``."""

    def __init__(self):
        self.samples = deque()

    def add(self, now, total):
        samples = self.samples
        if samples and total < samples[-1][1]:     # a counter went back: start again
            samples.clear()
        samples.append((now, total))
        while len(samples) > 1 and samples[1][0] <= now - MINUTE:
            samples.popleft()
        return total - samples[0][1] if len(samples) > 1 else 0


class AlertEngine:
    """``evaluate(snapshot, now, sources) -> (started, cleared)``: lists of ALERT dicts."""

    def __init__(self, settings, role="server", now=0.0):
        self.settings = dict(settings)
        self.role = role
        self.active = {}            # (name, subject) -> ALERT dict
        self._false_since = {}      # (name, subject) of an active alert -> when it stopped holding
        self._errors = _Window()
        self._auth = _Window()
        self._sources = deque()     # (time, {address: failures})
        self._down_since = now      # client: no tunnel open since then (None: one is open)
        self._mean = {}             # anomaly subject -> EWMA of its rate
        self._first_seen = {None: now}
        self._last = now

    def alerts(self):
        """The active alerts, oldest first (what the snapshot's ``alerts`` lists)."""
        return sorted((dict(a) for a in self.active.values()),
                      key=lambda a: (a["since"], a["name"], str(a["subject"])))

    def evaluate(self, snapshot, now, sources=None):
        """Judge one snapshot; ``sources``: auth failures per address since the last call."""
        firing = {}
        self._bandwidth(snapshot, firing)
        self._error_rates(snapshot, now, sources or {}, firing)
        self._tunnel(snapshot, now, firing)
        if snapshot.get("state_store") == "down":
            firing[("state_store", None)] = (1, 0, "the shared state store (Redis) is "
                                                   "unreachable")
        self._process(snapshot, firing)
        self._anomalies(snapshot, now, firing)
        self._last = now
        return self._update(firing, now)

    # --- rules: each adds (name, subject) -> (value, threshold, message) ----------

    def _bandwidth(self, snapshot, firing):
        totals = snapshot.get("totals") or {}
        for direction, word in (("up", "upload"), ("down", "download")):
            limit = self.settings.get("max_rate_" + direction) or 0
            rate = totals.get("rate_" + direction) or 0.0
            if limit and rate > limit:
                firing[("bandwidth_" + direction, None)] = (
                    rate, limit, "%s %s > %s" % (word, human_rate(rate), human_rate(limit)))

    def _error_rates(self, snapshot, now, sources, firing):
        errors = snapshot.get("errors") or {}
        total = sum(n for kind, n in errors.items() if kind not in NOT_ERRORS)
        count = self._errors.add(now, total)
        limit = self.settings.get("max_errors_per_minute") or 0
        if limit and count > limit:
            firing[("error_rate", None)] = (count, limit, "%d errors in the last minute > %d"
                                            % (count, limit))
        count = self._auth.add(now, errors.get("auth_failures", 0))
        limit = self.settings.get("max_auth_failures_per_minute") or 0
        if limit and count > limit:
            firing[("auth_failures", None)] = (
                count, limit, "%d failed logins in the last minute > %d" % (count, limit))
        self._per_source(now, sources, firing)

    def _per_source(self, now, sources, firing):
        window = self._sources
        if sources:
            window.append((now, dict(sources)))
        while window and window[0][0] <= now - MINUTE:
            window.popleft()
        limit = self.settings.get("max_auth_failures_per_source") or 0
        if not limit or not window:
            return
        counts = {}
        for _when, batch in window:
            for address, n in batch.items():
                counts[address] = counts.get(address, 0) + n
        for address, count in counts.items():
            if count > limit:
                firing[("auth_failures_source", address)] = (
                    count, limit, "%d failed logins from %s in the last minute > %d"
                    % (count, address, limit))

    def _tunnel(self, snapshot, now, firing):
        limit = self.settings.get("tunnel_down_after") or 0
        if self.role != "client":
            return
        if any(t.get("state") == "open" for t in snapshot.get("tunnels") or ()):
            self._down_since = None
            return
        if self._down_since is None:
            self._down_since = now
        down = now - self._down_since
        if limit and down > limit:
            firing[("tunnel_down", None)] = (down, limit, "no tunnel for %.0f s > %.0f s"
                                             % (down, limit))

    def _process(self, snapshot, firing):
        process = snapshot.get("process") or {}
        limit, rss = self.settings.get("max_rss") or 0, process.get("rss") or 0
        if limit and rss > limit:
            firing[("rss", None)] = (rss, limit, "resident memory %s > %s"
                                     % (human_bytes(rss), human_bytes(limit)))
        limit, fds = self.settings.get("max_fds") or 0, process.get("fds") or 0
        if limit and fds > limit:
            firing[("fds", None)] = (fds, limit, "%d open descriptors > %d" % (fds, limit))

    def _anomalies(self, snapshot, now, firing):
        factor = self.settings.get("anomaly_factor") or 0
        if not factor:
            return
        window = self.settings.get("anomaly_window") or 600.0
        floor = self.settings.get("anomaly_floor") or 0.0
        totals = snapshot.get("totals") or {}
        rates = {None: (totals.get("rate_up") or 0.0) + (totals.get("rate_down") or 0.0)}
        for user in snapshot.get("users") or ():
            rates[user["user"]] = (user.get("rate_up") or 0.0) + (user.get("rate_down") or 0.0)
        alpha = 1.0 - math.exp(-max(0.0, now - self._last) / window)
        for subject in set(self._mean) | set(rates):
            rate = rates.get(subject, 0.0)
            first = self._first_seen.setdefault(subject, now)
            mean = self._mean.get(subject, rate)       # starts at its first rate
            if (now - first >= window / 4 and rate > floor and rate > factor * mean):
                who = "user %s" % subject if subject is not None else "total"
                firing[("anomaly", subject)] = (
                    rate, factor * mean, "%s rate %s > %g x its mean %s" % (
                        who, human_rate(rate), factor, human_rate(mean)))
            mean += alpha * (rate - mean)
            if subject is not None and subject not in rates and mean < 1.0:
                self._mean.pop(subject, None)      # gone and idle: forget it
                self._first_seen.pop(subject, None)
            else:
                self._mean[subject] = mean

    # --- start / update / clear --------------------------------------------------

    def _update(self, firing, now):
        started, cleared = [], []
        for key, (value, threshold, message) in firing.items():
            self._false_since.pop(key, None)
            alert = self.active.get(key)
            if alert is None:
                alert = self.active[key] = {"name": key[0], "since": now, "subject": key[1]}
                started.append(alert)
            alert.update(value=float(value), threshold=float(threshold), message=message)
        hold = self.settings.get("clear_after") or 0.0
        for key in [k for k in self.active if k not in firing]:
            stopped = self._false_since.setdefault(key, now)
            if now - stopped >= hold:
                del self._false_since[key]
                cleared.append(self.active.pop(key))
        return [dict(a) for a in started], [dict(a) for a in cleared]
