"""Up and down bandwidth over the last minutes, as two sparklines.

Fed with the totals' ``rate_up``/``rate_down`` of each once-a-second
snapshot, the daemon's own measurement: nothing is interpolated, and a
second without a snapshot (daemon away, dashboard paused by the system)
simply adds no point.  Five minutes fit a wide terminal at one column per
second; a narrower one shows the most recent part.
"""

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from tui.format import human_rate

HISTORY = 300


class BandwidthChart(Vertical):
    """Two labelled sparklines: upload (app to destination) and download."""

    DEFAULT_CSS = """
    BandwidthChart { height: 6; padding: 0 1; }
    BandwidthChart Sparkline { height: 2; }
    BandwidthChart #bw-up > .sparkline--max-color { color: $accent; }
    BandwidthChart #bw-up > .sparkline--min-color { color: $accent 40%; }
    BandwidthChart #bw-down > .sparkline--max-color { color: $secondary; }
    BandwidthChart #bw-down > .sparkline--min-color { color: $secondary 40%; }
    """

    def __init__(self, history=HISTORY, **kwargs):
        super().__init__(**kwargs)
        self.up = deque(maxlen=history)
        self.down = deque(maxlen=history)

    def compose(self) -> ComposeResult:
        yield Static(id="bw-up-label")
        yield Sparkline([], id="bw-up")
        yield Static(id="bw-down-label")
        yield Sparkline([], id="bw-down")

    def on_mount(self):
        self._labels()

    def push(self, rate_up, rate_down):
        """One snapshot's totals (bytes per second; None counts as no point)."""
        if rate_up is None or rate_down is None:
            return
        self.up.append(float(rate_up))
        self.down.append(float(rate_down))
        self.query_one("#bw-up", Sparkline).data = list(self.up)
        self.query_one("#bw-down", Sparkline).data = list(self.down)
        self._labels()

    def _labels(self):
        span = "last %ds" % len(self.up) if len(self.up) < 120 else \
            "last %d min" % (len(self.up) // 60)
        for name, arrow, history, style in (("up", "↑ upload", self.up, "cyan"),
                                            ("down", "↓ download", self.down, "magenta")):
            now = history[-1] if history else None
            peak = max(history) if history else None
            label = Text.assemble((arrow, "bold " + style), "  now %s  peak %s  (%s)"
                                  % (human_rate(now), human_rate(peak), span))
            self.query_one("#bw-%s-label" % name, Static).update(label)
