"""The last log records of a daemon, for the control socket and the dashboard.

The daemon keeps logging to stderr (journald) as before; a :class:`LogRing`
is a second handler on the root logger that keeps the newest records as
small dicts in a bounded deque and tells listeners (the control socket's
subscribers) about each new one.  A record costs one dict and one deque
append when it is logged; nothing is formatted again when it is read.
"""

import logging
from collections import deque

__all__ = ["LogRing", "LEVELS"]

#: Level names a reader may filter by, lowest first.
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class LogRing(logging.Handler):
    """Keeps the last ``size`` records (RECORD dicts of docs/control-protocol.rst)."""

    def __init__(self, size=1000):
        super().__init__(logging.DEBUG)
        self.records = deque(maxlen=size)
        self.listeners = set()      # callables, each called with every new RECORD

    def emit(self, record):
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001  (a bad format string must not lose the line)
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            message += " (%s: %s)" % (type(record.exc_info[1]).__name__, record.exc_info[1])
        entry = {"time": record.created, "level": record.levelname,
                 "logger": record.name, "message": message}
        self.records.append(entry)
        for listener in list(self.listeners):
            listener(entry)

    def recent(self, limit=100, level=None):
        """The newest ``limit`` records (oldest first) at ``level`` or above."""
        records = list(self.records)
        if level:
            floor = LEVELS.index(level) if level in LEVELS else 0
            records = [r for r in records
                       if r["level"] in LEVELS and LEVELS.index(r["level"]) >= floor]
        return records[-limit:] if limit > 0 else []

    def install(self):
        """Add to the root logger (once)."""
        root = logging.getLogger()
        if self not in root.handlers:
            root.addHandler(self)
        return self

    def remove(self):
        logging.getLogger().removeHandler(self)
