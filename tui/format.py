"""Human-readable numbers for the dashboard: bytes, rates, durations, times.

Decimal units (kB = 1000 B), as curl and most network tools print rates, so
that the figures on the screen compare with what people measure elsewhere.
Every formatter accepts None (a value the daemon does not know yet) and
returns a dash for it, so a missing field never ends in a traceback.
"""

import time

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")
DASH = "-"


def human_bytes(value):
    """1234567 -> '1.2 MB'; 999 -> '999 B'."""
    if value is None:
        return DASH
    value = float(value)
    for unit in _UNITS:
        if abs(value) < 999.5 or unit == _UNITS[-1]:
            break
        value /= 1000.0
    if unit == "B":
        return "%d B" % value
    return ("%.1f %s" if abs(value) < 99.95 else "%.0f %s") % (value, unit)


def human_rate(value):
    """Bytes per second: 840000.0 -> '840 kB/s'; 0 -> '0 B/s'."""
    if value is None:
        return DASH
    return human_bytes(value) + "/s"


def human_duration(seconds):
    """Seconds as the two largest units: '4s', '3m05s', '2h03m', '5d04h'."""
    if seconds is None:
        return DASH
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return "%dd%02dh" % (days, hours)
    if hours:
        return "%dh%02dm" % (hours, minutes)
    if minutes:
        return "%dm%02ds" % (minutes, secs)
    return "%ds" % secs


def human_rtt(seconds):
    """Round-trip time: 0.0021 -> '2.1 ms'."""
    if seconds is None:
        return DASH
    ms = seconds * 1000.0
    return ("%.1f ms" if ms < 100 else "%.0f ms") % ms


def clock(timestamp):
    """A Unix time as the local wall clock, 'HH:MM:SS' (for log lines)."""
    if timestamp is None:
        return DASH
    return time.strftime("%H:%M:%S", time.localtime(timestamp))
