"""Logging set-up for the daemons: one handler on the root logger, added once.

Two formats (``log_format`` in ``[server]`` / ``[client]``):

* ``text``, for people: ``TIME LEVEL LOGGER: message``; with a ``node_id``
  set in the config, ``TIME LEVEL [NODE] LOGGER: message``.  A node left
  to its default (the host name) is not printed: on one node it is noise,
  and journald and syslog put the host name on every line already.
* ``json``, for a central log store (several nodes behind HAProxy): one
  object per line with ``time`` (UTC, ISO 8601, milliseconds), ``level``,
  ``node`` (always; the host name by default), ``logger``, ``message`` and,
  where the call gave them as ``extra=``, ``user``, ``stream``, ``event``
  and ``bytes`` (:data:`FIELDS`), plus ``exc`` with a traceback.  The few
  lines an operator counts carry them: tunnel open/close, stream refused,
  tunnel refused (``event`` names which).

Under systemd (``$JOURNAL_STREAM`` is stderr) the records go to the journal
through its native socket (:mod:`afb.journald`): the same text, without the
time (the journal stamps each entry), or the JSON line, as ``MESSAGE``, the
level as ``PRIORITY``, and the fields as journal fields (``AFB_NODE``,
``AFB_USER``, ``AFB_EVENT``, ``AFB_STREAM``, ``AFB_PEER``, ``AFB_BYTES_UP``
/ ``_DOWN``), so ``journalctl AFB_USER=alice`` finds a user's lines.
"""

import datetime
import json
import logging
import socket
import sys

from afb import journald

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_NODE = "%(asctime)s %(levelname)s [%(node)s] %(name)s: %(message)s"
#: Text for the journal, which stamps entries itself.
JOURNAL_TEXT = "%(levelname)s %(name)s: %(message)s"
JOURNAL_TEXT_NODE = "%(levelname)s [%(node)s] %(name)s: %(message)s"
FORMAT = TEXT       # (the name other modules knew)
FORMATS = ("text", "json")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
          "warning": logging.WARNING, "error": logging.ERROR}
#: Record attributes (``extra=``) copied into a JSON line when a call gave them.
FIELDS = ("user", "stream", "event", "bytes", "peer")

_handler = None
_style = ("text", "")       # (format, node_id) in force


def node_name(node_id=""):
    """``node_id`` from the config, or the host name when it is empty."""
    return node_id or socket.gethostname()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message are escaped)."""

    def __init__(self, node):
        super().__init__()
        self.node = node

    def format(self, record):
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        line = {"time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "level": record.levelname, "node": self.node, "logger": record.name,
                "message": record.getMessage()}
        for field in FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _NodeFilter(logging.Filter):
    """Puts ``node`` on every record, for the text format's ``%(node)s``."""

    def __init__(self, node):
        super().__init__()
        self.node = node

    def filter(self, record):
        record.node = self.node
        return True


def configure_from(section):
    """:func:`configure` from a ``[server]`` / ``[client]`` section of a loaded config."""
    return configure(section["log_level"], fmt=section.get("log_format", "text"),
                     node_id=section.get("node_id", ""))


def formatter(fmt="text", node_id="", journal=False):
    """The formatter of ``fmt`` (``text`` or ``json``) for ``node_id`` (see the module);
    ``journal``: for the journal (text without the time)."""
    if fmt == "json":
        return JsonFormatter(node_name(node_id))
    if journal:
        return logging.Formatter(JOURNAL_TEXT_NODE if node_id else JOURNAL_TEXT)
    return logging.Formatter(TEXT_NODE if node_id else TEXT)


def configure(level="info", stream=None, fmt=None, node_id=None):
    """Log to ``stream`` (default stderr) at ``level`` in ``fmt``; later calls only adjust.

    A second call changes the level (and the stream, the format, the node
    when given) without adding another handler, so messages are never
    printed twice.  ``fmt``/``node_id`` left None keep what was set.
    """
    global _handler, _style
    if fmt is not None or node_id is not None or _handler is None:
        _style = (fmt or _style[0], _style[1] if node_id is None else node_id)
    if isinstance(level, str):
        level = LEVELS.get(level.lower(), logging.INFO)
    root = logging.getLogger()
    if _handler is None or _handler not in root.handlers:
        if stream is None and journald.under_journal():
            _handler = journald.JournalHandler(sys.stderr)
        else:
            _handler = logging.StreamHandler(stream or sys.stderr)
        root.addHandler(_handler)
    elif stream is not None:
        _handler.setStream(stream)
    for old in list(_handler.filters):
        _handler.removeFilter(old)
    _handler.addFilter(_NodeFilter(node_name(_style[1])))
    _handler.setFormatter(formatter(*_style, journal=isinstance(_handler,
                                                                 journald.JournalHandler)))
    root.setLevel(level)
    return _handler
