"""Log records to systemd's journal with fields of their own, in a few lines, without libsystemd.

Under systemd a daemon's stderr already reaches the journal, as text.  The
journal's native protocol (systemd.journal-fields(7), "Native Journal
Protocol") takes more: one AF_UNIX datagram per entry on
``/run/systemd/journal/socket``, ``KEY=value`` lines, so that afb's fields
are searchable fields there (``journalctl AFB_USER=alice``, ``AFB_EVENT=
tunnel_close``) and the priority is the record's level, not a guess from
the text.  :func:`under_journal` says when to use it: ``$JOURNAL_STREAM``
names stderr's device and inode, i.e. stderr *is* the journal (not a
terminal or a file the unit redirected to).

python3-systemd's JournalHandler does the same through libsystemd; this
needs no package, as :mod:`afb.sd_notify` needs none.  A value with a
newline is sent in the protocol's binary form (``KEY\\n`` + 64-bit little
endian length + bytes).  A datagram the socket refuses (an entry larger
than its buffer, journald gone) goes to stderr as a text line instead:
a log line is never lost for want of the journal, and never raises.
"""

import logging
import os
import socket
import struct
import sys

JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: logging levels -> syslog priorities (journald's PRIORITY=).
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
              (logging.INFO, 6))
#: Record attributes (``extra=``) -> journal fields.
FIELDS = {"node": "AFB_NODE", "user": "AFB_USER", "stream": "AFB_STREAM",
          "event": "AFB_EVENT", "peer": "AFB_PEER"}


def under_journal(environ=None, stream=None):
    """True when ``$JOURNAL_STREAM`` is stderr's ``device:inode`` (systemd's own test)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        device, inode = (int(part) for part in value.split(":"))
        stat = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def priority(level):
    for floor, value in PRIORITIES:
        if level >= floor:
            return value
    return 7


def _field(name, value):
    data = str(value).encode("utf-8", "replace")
    if b"\n" in data:
        return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


def entry(record, message, identifier="afb"):
    """The datagram of one record: MESSAGE (``message``), PRIORITY, afb's fields."""
    parts = [_field("MESSAGE", message), _field("PRIORITY", priority(record.levelno)),
             _field("SYSLOG_IDENTIFIER", identifier), _field("LOGGER", record.name)]
    for attribute, name in FIELDS.items():
        value = record.__dict__.get(attribute)
        if value is not None:
            parts.append(_field(name, value))
    counted = record.__dict__.get("bytes")
    if isinstance(counted, dict):
        parts.extend(_field("AFB_BYTES_" + key.upper(), value) for key, value in counted.items())
    elif counted is not None:
        parts.append(_field("AFB_BYTES", counted))
    return b"".join(parts)


class JournalHandler(logging.StreamHandler):
    """Entries to the journal socket; the text line to ``stream`` when one is refused."""

    def __init__(self, stream=None, address=JOURNAL_SOCKET):
        super().__init__(stream)
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record):
        try:
            message = self.format(record)
            self.sock.sendto(entry(record, message), self.address)
        except OSError:
            super().emit(record)        # (the journal reads stderr too)
        except Exception:  # noqa: BLE001  (logging must never raise: its own report)
            self.handleError(record)

    def close(self):
        self.sock.close()
        super().close()
