"""The active alerts, as the daemon reports them in each snapshot.

An alert is shown for as long as the daemon lists it, and disappears when it
ends (the daemon logs both; the log panel has them).  How long it has been
active is counted on the daemon's clock (the snapshot's ``time``).
"""

from rich.text import Text
from textual.widgets import Static

from tui.format import human_duration


class AlertsPanel(Static):
    """One line per active alert: name, for how long, the daemon's message."""

    DEFAULT_CSS = """
    AlertsPanel { height: 6; padding: 0 1; border-left: solid $panel-lighten-2; }
    """

    def show(self, snapshot):
        alerts = snapshot.get("alerts") or []
        now = snapshot.get("time")
        if not alerts:
            self.update(Text.assemble(("alerts", "bold"), "\n", ("none active", "dim")))
            return
        lines = [Text("alerts (%d)" % len(alerts), style="bold yellow")]
        for alert in alerts:
            since = alert.get("since")
            age = human_duration(now - since) if now and since else "-"
            subject = " [%s]" % alert["subject"] if alert.get("subject") else ""
            lines.append(Text.assemble((alert.get("name", "?"), "bold yellow"), subject,
                                       " %s: " % age, alert.get("message") or ""))
        self.update(Text("\n").join(lines))
