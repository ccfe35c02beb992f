"""Logging set-up for the daemons: one handler on the root logger, added once."""

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
          "warning": logging.WARNING, "error": logging.ERROR}

_handler = None


def configure(level="info", stream=None):
    """Log to ``stream`` (default stderr) at ``level``; later calls only adjust.

    A second call changes the level (and the stream, if given) without adding
    another handler, so messages are never printed twice.
    """
    global _handler
    if isinstance(level, str):
        level = LEVELS.get(level.lower(), logging.INFO)
    root = logging.getLogger()
    if _handler is None or _handler not in root.handlers:
        _handler = logging.StreamHandler(stream or sys.stderr)
        _handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(_handler)
    elif stream is not None:
        _handler.setStream(stream)
    root.setLevel(level)
    return _handler
