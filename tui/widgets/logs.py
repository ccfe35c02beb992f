"""Recent log records from the daemon, with a level filter.

The daemon sends its last records when the dashboard subscribes and every new
one after; this panel keeps the last :data:`KEEP` and shows those at or above
the chosen level.  Changing the level redraws from what is kept, so records
hidden at WARNING come back at INFO.
"""

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import RichLog, Static

from tui.format import clock

KEEP = 1000
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
RANK = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
STYLE = {"DEBUG": "dim", "INFO": "", "WARNING": "yellow", "ERROR": "bold red",
         "CRITICAL": "bold red"}


def render(record):
    level = str(record.get("level") or "INFO").upper()
    return Text.assemble((clock(record.get("time")), "dim"), " ",
                         ("%-7s" % level, STYLE.get(level, "")), " ",
                         (str(record.get("logger") or ""), "dim"), " ",
                         str(record.get("message") or ""))


class LogPanel(Vertical):
    """A title with the level, and the records at or above it."""

    DEFAULT_CSS = """
    LogPanel #log-title { height: 1; padding: 0 1; background: $panel; }
    LogPanel RichLog { height: 1fr; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.records = deque(maxlen=KEEP)
        self.level = "INFO"

    def compose(self) -> ComposeResult:
        yield Static(id="log-title")
        yield RichLog(id="log-lines", wrap=False, max_lines=KEEP, auto_scroll=True)

    def on_mount(self):
        self._title()

    def add(self, records):
        view = self.query_one(RichLog)
        for record in records:
            if not isinstance(record, dict):
                continue
            self.records.append(record)
            if self._shown(record):
                view.write(render(record))
        self._title()

    def cycle_level(self):
        self.level = LEVELS[(LEVELS.index(self.level) + 1) % len(LEVELS)]
        view = self.query_one(RichLog)
        view.clear()
        for record in self.records:
            if self._shown(record):
                view.write(render(record))
        self._title()

    def _shown(self, record):
        return RANK.get(str(record.get("level")).upper(), 20) >= RANK[self.level]

    def _title(self):
        shown = sum(1 for r in self.records if self._shown(r))
        self.query_one("#log-title", Static).update(Text.assemble(
            ("logs", "bold"), "  level %s and above (v changes it)  %d of %d records"
            % (self.level, shown, len(self.records))))
