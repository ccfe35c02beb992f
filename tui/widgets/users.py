"""The server's users: streams, rates and today's usage per token subject.

With ``[qos]`` limits (issue 13), each user's limit in force ("limit ↓/↑":
its own rate or its fair share of the cap; "-" none), the seconds its
transfers waited for it ("throttled", both ways) and the bytes afb holds
for it towards the client ("queued").

Same in-place updates as the connections table (rows keyed by user name),
sorted by name: a server has tens of users, not thousands, so nothing more
is needed.  The client has no users: the view says so instead of an empty table.
"""

from rich.text import Text
from textual.widgets import DataTable

from tui.format import DASH, human_bytes, human_duration, human_rate

COLUMNS = (("user", "user"), ("tunnels", "tunnels"), ("streams", "streams"),
           ("peak", "peak"), ("up", "up"), ("down", "down"), ("rate_up", "↑/s"),
           ("rate_down", "↓/s"), ("today_up", "today ↑"), ("today_down", "today ↓"),
           ("limit_up", "limit ↑"), ("limit_down", "limit ↓"), ("throttled", "throttled"),
           ("queued", "queued"))


def _limit(value):
    return human_rate(value) if value else DASH


def _throttled(user):
    seconds = (user.get("throttled_up") or 0) + (user.get("throttled_down") or 0)
    return human_duration(seconds) if seconds else DASH


def cells(user):
    def right(text):
        return Text(str(text), justify="right")
    return (str(user.get("user", "?")), right(user.get("tunnels", "-")),
            right(user.get("streams", "-")), right(user.get("peak_streams", "-")),
            right(human_bytes(user.get("bytes_up"))), right(human_bytes(user.get("bytes_down"))),
            right(human_rate(user.get("rate_up"))), right(human_rate(user.get("rate_down"))),
            right(human_bytes(user.get("today_bytes_up"))),
            right(human_bytes(user.get("today_bytes_down"))),
            right(_limit(user.get("rate_limit_up"))), right(_limit(user.get("rate_limit_down"))),
            right(_throttled(user)), right(human_bytes(user.get("queued_down"))))


class UsersTable(DataTable):
    """One row per user, updated in place."""

    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.shown = {}

    def on_mount(self):
        for key, label in COLUMNS:
            self.add_column(label if key == "user" else Text(label, justify="right"), key=key)

    def show_users(self, users):
        wanted = {u["user"]: u for u in users if isinstance(u, dict) and u.get("user")}
        for name in [n for n in self.shown if n not in wanted]:
            self.remove_row(name)
            del self.shown[name]
        added = False
        for name, user in wanted.items():
            new = cells(user)
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
            self.sort("user")
