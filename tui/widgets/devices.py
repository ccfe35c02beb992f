"""The client's LAN devices (issue 13, part 4): limits, shares, priority streams.

One row per device the client's ``[qos]`` rules know (its proxy login, or
its source address): its weight in the shares of ``max_down`` / ``max_up``,
streams open (and how many go to ``priority_ports`` / ``priority_hosts``),
bytes and rates, the limit in force each way ("-": none), the seconds its
transfers waited for it since its first stream still open ("throttled",
both ways) and the bytes afb holds for its apps ("queued").

Same in-place updates as the users table (rows keyed by device), sorted by
name: a LAN has tens of devices.
"""

from rich.text import Text
from textual.widgets import DataTable

from tui.format import DASH, human_bytes, human_rate
from tui.widgets.users import _limit, _throttled

COLUMNS = (("device", "device"), ("weight", "weight"), ("streams", "streams"),
           ("priority", "priority"), ("up", "up"), ("down", "down"), ("rate_up", "↑/s"),
           ("rate_down", "↓/s"), ("limit_up", "limit ↑"), ("limit_down", "limit ↓"),
           ("throttled", "throttled"), ("queued", "queued"), ("refused", "refused"))


def _weight(value):
    if value is None:
        return DASH
    return ("%d" % value) if float(value).is_integer() else ("%.2g" % value)


def cells(device):
    def right(text):
        return Text(str(text), justify="right")
    priority = "%s (%s)" % (device.get("priority_streams", "-"),
                            device.get("priority_streams_total", "-"))
    return (str(device.get("device", "?")), right(_weight(device.get("weight"))),
            right(device.get("streams", "-")), right(priority),
            right(human_bytes(device.get("bytes_up"))),
            right(human_bytes(device.get("bytes_down"))),
            right(human_rate(device.get("rate_up"))), right(human_rate(device.get("rate_down"))),
            right(_limit(device.get("rate_limit_up"))),
            right(_limit(device.get("rate_limit_down"))), right(_throttled(device)),
            right(human_bytes(device.get("queued_down"))),
            right(device.get("refused_streams", "-")))


class DevicesTable(DataTable):
    """One row per LAN device, updated in place."""

    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.shown = {}

    def on_mount(self):
        for key, label in COLUMNS:
            self.add_column(label if key == "device" else Text(label, justify="right"), key=key)

    def show_devices(self, devices):
        wanted = {d["device"]: d for d in devices if isinstance(d, dict) and d.get("device")}
        for name in [n for n in self.shown if n not in wanted]:
            self.remove_row(name)
            del self.shown[name]
        added = False
        for name, device in wanted.items():
            new = cells(device)
            old = self.shown.get(name)
            if old is None:
                self.add_row(*new, key=name)
                added = True
            else:
                for (key, _label), before, after in zip(COLUMNS, old, new, strict=True):
                    if before != after:
                        self.update_cell(name, key, after)
            self.shown[name] = new
        if added:
            self.sort("device")
