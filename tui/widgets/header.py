"""The two header lines: what the daemon is, how its tunnel is, and the totals.

Built from the latest ``snapshot`` message only (docs/control-protocol.rst),
so everything shown is the daemon's own figure at the time it was taken:
uptime and rates come from the daemon's clock, never from the dashboard's,
which also keeps the screen the same for the same data (snapshot tests).
"""

from rich.text import Text
from textual.widgets import Static

from tui.format import human_duration, human_rate, human_rtt


def tunnel_summary(snapshot):
    """('open', '2.1 ms') for the client's tunnel; the server counts its tunnels."""
    tunnels = snapshot.get("tunnels") or []
    if snapshot.get("role") == "server":
        open_ = sum(1 for t in tunnels if t.get("state") == "open")
        rtts = sorted(t["rtt"] for t in tunnels if t.get("rtt") is not None)
        rtt = rtts[len(rtts) // 2] if rtts else None
        return "%d tunnel%s" % (open_, "" if open_ == 1 else "s"), rtt
    if not tunnels:
        return "down", None
    first = tunnels[0]
    return first.get("state") or "?", first.get("rtt")


class StatusHeader(Static):
    """Role, address, tunnel state, RTT, uptime, streams, rates, alerts (or why none)."""

    DEFAULT_CSS = """
    StatusHeader { height: 2; background: $primary-background; padding: 0 1; }
    """

    def show(self, snapshot, paused=False):
        role = snapshot.get("role") or "?"
        where = snapshot.get("server_url") if role == "client" else snapshot.get("listen")
        tunnel, rtt = tunnel_summary(snapshot)
        totals = snapshot.get("totals") or {}
        alerts = snapshot.get("alerts") or []
        first = Text()
        first.append("afb %s" % role, style="bold")
        if role == "client" and snapshot.get("listen"):
            first.append("  proxy %s" % snapshot["listen"])
        first.append("  %s %s" % ("server" if role == "client" else "listening", where or "-"))
        state_style = "green" if tunnel in ("open",) or tunnel.endswith("tunnels") \
            or tunnel.endswith("tunnel") else "bold red"
        first.append("  tunnel " if role == "client" else "  ")
        first.append(tunnel, style=state_style)
        first.append("  RTT %s" % human_rtt(rtt))
        first.append("  uptime %s" % human_duration(snapshot.get("uptime")))
        second = Text()
        second.append("streams %s" % totals.get("streams", "-"))
        if totals.get("streams_total") is not None:
            second.append(" (%s since start)" % totals["streams_total"])
        second.append("  ↑ %s" % human_rate(totals.get("rate_up")), style="cyan")
        second.append("  ↓ %s" % human_rate(totals.get("rate_down")), style="magenta")
        if alerts:
            second.append("  alerts: %s" % ", ".join(a.get("name", "?") for a in alerts),
                          style="bold yellow")
        else:
            second.append("  no alerts", style="dim")
        if paused:
            second.append("  PAUSED (p resumes)", style="bold reverse")
        self.update(Text("\n").join([first, second]))

    def waiting(self, text):
        self.update(Text.assemble(("afb tui", "bold"), "  ", (text, "dim")))
