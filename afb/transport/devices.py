"""The client's LAN devices (issue 13, part 4): limits, fair shares, priority streams.

A device is the app's proxy login (RFC 1929 / Basic) when ``users_file``
is set, else its source address.  :class:`Devices` is a
:class:`~afb.transport.shaper.Qos` keyed by device: ``[qos]``
``device_rate_*`` as every device's rate, ``device_rates`` and
``device_weights`` (:mod:`afb.policy.device_rules`) as one device's own
rate and its weight in the shares of ``max_down`` / ``max_up``.  A SIGHUP
reconfigures the same shapers, so live streams follow the new figures.

:meth:`Devices.acquire` / :meth:`Devices.release` go around each relay; a
stream to a ``priority_ports`` / ``priority_hosts`` destination gets
:class:`~afb.transport.shaper.Priority` views of its device's shapers
(served first, charged all the same) and is counted apart.  New streams a
second are limited per device (:meth:`Devices.admit`).

A record outlives its streams (its bucket of new streams must, or a
device opening one short stream after the other would never be limited):
past :data:`MAX_IDLE_DEVICES` records, those without streams whose bucket
is full again are dropped.  When a device's last stream ends, its
"current" figures (throttled seconds) start again; the totals behind the
Prometheus counters go on.  On the client the relay *reads* the device's
upload and hands *credit* back for its download, so :meth:`Devices.acquire`
returns ``(up shaper, down shaper)``.
"""

import logging
import time

from afb.mux.rate import TokenBucket
from afb.policy.device_rules import PriorityRules, parse_device_rates, parse_device_weights
from afb.transport.shaper import Priority, Qos

log = logging.getLogger(__name__)

__all__ = ["Devices", "client_qos", "MAX_IDLE_DEVICES"]

#: Device records kept without streams before idle ones are dropped.
MAX_IDLE_DEVICES = 256
_RATE_KEYS = ("device_rate_down", "device_rate_up", "burst", "max_down", "max_up",
              "max_new_streams_per_second")


def client_qos(section):
    """The client's ``[qos]`` -> ``(settings, overrides, PriorityRules)`` for :class:`Devices`.

    ``settings``: :class:`Qos` settings (bytes/s); ``overrides``: ``{device:
    {rate_down, rate_up, weight}}`` (None: the default).
    """
    settings = {key: float(section.get(key, 0) or 0) for key in _RATE_KEYS}
    for direction in ("down", "up"):
        settings["user_rate_" + direction] = settings.pop("device_rate_" + direction)
    overrides = {}
    for name, weight in parse_device_weights(section.get("device_weights")).items():
        overrides[name] = {"rate_down": None, "rate_up": None, "weight": weight}
    for name, (down, up) in parse_device_rates(section.get("device_rates")).items():
        row = overrides.setdefault(name, {"weight": None})
        row["rate_down"], row["rate_up"] = down, up
    rules = PriorityRules(section.get("priority_ports") or (),
                          section.get("priority_hosts") or ())
    return settings, overrides, rules


class Device:
    """One device's record: its live streams (stream -> priority?) and counters."""

    __slots__ = ("streams", "opens", "refused", "priority", "priority_total", "bytes_up",
                 "bytes_down")

    def __init__(self, opens):
        self.streams = {}
        self.opens = opens          # new streams a second (a TokenBucket), None: no limit
        self.refused = 0
        self.priority = 0           # priority streams open now
        self.priority_total = 0
        self.bytes_up = 0           # of its finished streams
        self.bytes_down = 0


class Devices:
    """The LAN devices' limits and records (see the module doc)."""

    def __init__(self, settings=None, overrides=None, priority=None, clock=time.monotonic):
        self.clock = clock
        self.qos = Qos(settings or {}, overrides or {}, clock=clock)
        self.qos.keep_totals = False    # a device's counters go with its record
        self.priority = priority if priority is not None else PriorityRules()
        self.devices = {}           # name -> Device

    @property
    def limited(self):
        """Whether any rule is set (else the client runs without :class:`Devices`)."""
        s = self.qos.settings
        return bool(self.priority) or any(row.get("rate_down") or row.get("rate_up") for row in
                                          self.qos.overrides.values()) or any(
            s.get(key) for key in ("user_rate_down", "user_rate_up", "max_down", "max_up",
                                   "max_new_streams_per_second"))

    def configure(self, settings, overrides=None, priority=None):
        """A reload: every device's shapers (live streams too) to the new figures;
        priority rules apply to the streams opened from now on."""
        self.qos.configure(settings, overrides or {})
        if priority is not None:
            self.priority = priority
        for record in self.devices.values():
            record.opens = self._opens(record.opens)

    def _opens(self, bucket):
        rate = self.qos.new_streams_rate
        if not rate:
            return None
        if bucket is None:
            return TokenBucket(rate, rate, self.clock())
        bucket.configure(rate, rate, self.clock())
        return bucket

    def _record(self, name):
        record = self.devices.get(name)
        if record is None:
            if len(self.devices) >= MAX_IDLE_DEVICES:
                self._sweep()
            record = self.devices[name] = Device(self._opens(None))
            self.qos.shapers_for(name)
        return record

    def _sweep(self):
        now = self.clock()
        for name, record in list(self.devices.items()):
            opens = record.opens
            if not record.streams and (opens is None or opens.allowance(now) >= opens.burst):
                del self.devices[name]
                self.qos.drop(name)

    def admit(self, name):
        """True if device ``name`` may open one more stream now (counted), else False."""
        record = self._record(name)
        opens = record.opens
        if opens is not None and not opens.take(1, self.clock()):
            record.refused += 1
            return False
        return True

    def is_priority(self, host, port):
        return bool(self.priority) and self.priority.matches(host, port)

    def acquire(self, name, stream, priority=False):
        """``stream`` of ``name`` gets a relay: -> its ``(read, credit)`` shapers."""
        record = self._record(name)
        record.streams[stream] = priority
        down, up = self.qos.users[name]
        if priority:
            record.priority += 1
            record.priority_total += 1
            return Priority(up), Priority(down)
        return up, down

    def release(self, name, stream):
        """``stream``'s relay ended; the device's last one resets its current figures."""
        record = self.devices.get(name)
        if record is None or stream not in record.streams:
            return
        if record.streams.pop(stream):
            record.priority -= 1
        record.bytes_up += stream.bytes_out
        record.bytes_down += stream.bytes_in
        if not record.streams:
            for shaper in self.qos.users[name]:
                shaper.reset_figures()

    def rows(self):
        """DEVICE dicts for the client's snapshot (docs/control-protocol.rst)."""
        out = []
        now = self.clock()
        for name, record in sorted(self.devices.items()):
            down, up = self.qos.users[name]
            streams = list(record.streams)
            weight = (self.qos.overrides.get(name) or {}).get("weight") or 1.0
            out.append({
                "device": name, "streams": len(streams), "priority_streams": record.priority,
                "priority_streams_total": record.priority_total,
                "bytes_up": record.bytes_up + sum(s.bytes_out for s in streams),
                "bytes_down": record.bytes_down + sum(s.bytes_in for s in streams),
                "queued_down": sum(s.buffered for s in streams), "weight": weight,
                "rate_limit_down": round(down.rate), "rate_limit_up": round(up.rate),
                "throttled_down": round(down.throttled_now(now), 3),
                "throttled_up": round(up.throttled_now(now), 3),
                "throttled_down_total": round(down.throttled_seconds(now), 3),
                "throttled_up_total": round(up.throttled_seconds(now), 3),
                "refused_streams": record.refused})
        return out

    def close(self):
        self.qos.close()
