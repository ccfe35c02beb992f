"""``afb tui``: the Textual dashboard of an afb client or server.

The app owns one :class:`~tui.control_client.ControlClient` running on
Textual's asyncio loop and turns each message into widget updates: a
``snapshot`` (once a second) feeds the header, the connections table, the
bandwidth chart, the alerts and the users view (a server's users, a
client's LAN devices); ``log`` messages feed the log panel.  When no
daemon answers, the status line says where it looked and what to do, and
the client keeps trying by itself.

This module (and all of :mod:`tui`) never imports gevent or the daemons'
transport: the dashboard is its own process and the control socket is all it
knows of the daemon (tests/test_entry_imports.py checks it).

:class:`Dashboard` takes ``connect`` and ``environ`` so that tests and the
benchmark point it at a fake daemon; ``timings`` (a list) makes it record,
for each snapshot, the seconds from its arrival to the end of the screen
refresh that shows it (bench/tui).
"""

import logging
import time

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import ContentSwitcher, DataTable, Footer, Input, Static

from tui.control_client import ControlClient, ControlError
from tui.lines import BadLine
from tui.screens import ConfirmScreen, HelpScreen
from tui.widgets.alerts import AlertsPanel
from tui.widgets.bandwidth import BandwidthChart
from tui.widgets.connections import ConnectionsTable, destination, who
from tui.widgets.devices import DevicesTable
from tui.widgets.header import StatusHeader
from tui.widgets.logs import LogPanel
from tui.widgets.status import StatusLine
from tui.widgets.users import UsersTable

log = logging.getLogger(__name__)


class Dashboard(App):
    """The dashboard: header, connections, bandwidth, alerts; logs and users views."""

    TITLE = "afb tui"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("c", "close_stream", "close"),
        Binding("slash", "filter", "filter"),
        Binding("s", "sort", "sort"),
        Binding("S", "reverse_sort", "reverse", show=False),
        Binding("p", "pause", "pause"),
        Binding("l", "view('logs')", "logs"),
        Binding("u", "view('users')", "users"),
        Binding("v", "log_level", "log level", show=False),
        Binding("r", "reconnect", "reconnect", show=False),
        Binding("question_mark", "help", "help"),
        Binding("escape", "back", "back", show=False),
    ]

    def __init__(self, connect=None, environ=None, backoff=(0.25, 4.0), timings=None,
                 stream_limit=None):
        super().__init__()
        kwargs = {} if stream_limit is None else {"stream_limit": stream_limit}
        self.client = ControlClient(self._on_daemon_message, self._on_daemon_status,
                                    connect=connect, environ=environ, backoff=backoff,
                                    **kwargs)
        self.snapshot = None
        self.paused = False
        self.pending_streams = None
        self.timings = timings

    def compose(self) -> ComposeResult:
        yield StatusHeader(id="header")
        yield StatusLine(id="status")
        with ContentSwitcher(initial="main", id="views"):
            with Vertical(id="main"):
                yield Static(id="table-title")
                yield ConnectionsTable(id="connections")
                with Horizontal(id="bottom"):
                    yield BandwidthChart(id="bandwidth")
                    yield AlertsPanel(id="alerts")
            yield LogPanel(id="logs")
            with Vertical(id="users"):
                yield Static(id="users-title")
                yield UsersTable(id="users-table")
                yield DevicesTable(id="devices-table")
        yield Input(placeholder="filter: part of a destination, user/app or state "
                                "(Enter keeps it, Esc clears)", id="filter")
        yield Footer()

    def on_mount(self):
        # The widgets live on the default screen; App.query_one() looks at the
        # active one, which is a modal while a question or the help is up.
        self.main = self.screen
        self.main.query_one(StatusHeader).waiting("looking for an afb daemon...")
        self.main.query_one(AlertsPanel).show({})
        self.main.query_one("#filter", Input).display = False
        self.main.query_one(DevicesTable).display = False
        self._table_title()
        self.main.query_one(ConnectionsTable).focus()
        self.run_worker(self.client.run(), name="control", exclusive=True, exit_on_error=False)

    # --- from the daemon ----------------------------------------------------------

    def _on_daemon_status(self, connected, text):
        status = self.main.query_one(StatusLine)
        if connected:
            status.clear_problem()
        else:
            status.problem(text)
            if self.snapshot is None:
                self.main.query_one(StatusHeader).waiting("no daemon")
            else:
                self.main.query_one(StatusHeader).waiting("daemon lost: the figures below are "
                                                     "its last ones")

    def _on_daemon_message(self, message):
        """One message from the daemon onto the screen; a fault here is one line, not the end."""
        try:
            self._show_message(message)
        except Exception as exc:    # noqa: BLE001  (a bug must not stop the reconnecting)
            log.debug("cannot show %r", message, exc_info=True)
            self.main.query_one(StatusLine).problem(
                "afb tui could not show a %s message: %s: %s"
                % (getattr(message, "get", lambda _k: "bad")("type"), type(exc).__name__, exc),
                warning=True)

    def _show_message(self, message):
        if isinstance(message, BadLine):
            self.main.query_one(StatusLine).problem(message.reason, warning=True)
            return
        kind = message.get("type")
        if kind == "snapshot":
            started = time.perf_counter()
            self.show_snapshot(message)
            if self.timings is not None:
                self.call_after_refresh(self._timed, started, time.perf_counter())
        elif kind == "log":
            self.main.query_one(LogPanel).add(message.get("records") or [])
        elif kind == "error":
            self.main.query_one(StatusLine).problem(
                "the daemon answered: %s: %s" % (message.get("error"), message.get("message")),
                warning=True)

    def _timed(self, started, applied):
        self.timings.append((applied - started, time.perf_counter() - started))

    def show_snapshot(self, snapshot):
        """Every widget to this snapshot (the table only when not paused)."""
        self.snapshot = snapshot
        self.main.query_one(StatusHeader).show(snapshot, paused=self.paused)
        totals = snapshot.get("totals") or {}
        self.main.query_one(BandwidthChart).push(totals.get("rate_up"), totals.get("rate_down"))
        self.main.query_one(AlertsPanel).show(snapshot)
        self._users(snapshot)
        streams = snapshot.get("streams")
        if streams is not None:
            if self.paused:
                self.pending_streams = streams
            else:
                self.main.query_one(ConnectionsTable).show_streams(streams)
        self._table_title()

    def _users(self, snapshot):
        title = self.main.query_one("#users-title", Static)
        server = snapshot.get("role") == "server"
        self.main.query_one(UsersTable).display = server
        self.main.query_one(DevicesTable).display = not server
        if server:
            users = snapshot.get("users") or []
            title.update("users: %d (streams and rates now; today = the usage store's UTC day)"
                         % len(users))
            self.main.query_one(UsersTable).show_users(users)
        elif "devices" in snapshot:
            devices = snapshot.get("devices") or []
            title.update("LAN devices: %d (priority = streams to priority destinations now "
                         "(since first seen); throttled = since its first stream open)"
                         % len(devices))
            self.main.query_one(DevicesTable).show_devices(devices)
        else:
            title.update("LAN devices: none listed, the client's config sets no QoS rules "
                         "(device limits, weights, priority ports); a client has no users")

    def _table_title(self):
        table = self.main.query_one(ConnectionsTable)
        totals = (self.snapshot or {}).get("totals") or {}
        total = totals.get("streams")
        parts = ["connections: %d shown" % table.row_count]
        if total is not None and total > len(table.streams):
            parts.append("of %d (the newest %d sent)" % (total, len(table.streams)))
        if table.filter_text:
            parts.append("filter %r" % table.filter_text)
        parts.append("sort %s" % table.sort_label())
        if self.paused:
            parts.append("PAUSED")
        self.main.query_one("#table-title", Static).update("  ".join(parts))

    # --- keys ---------------------------------------------------------------------

    def action_close_stream(self):
        stream = self.main.query_one(ConnectionsTable).selected_stream()
        if stream is None:
            self.notify("no connection selected", severity="warning")
            return
        question = "Close stream %s?\n\n  %s\n  %s, %s\n\nThe app gets a reset." % (
            stream["id"], destination(stream), who(stream), stream.get("state") or "-")
        self.push_screen(ConfirmScreen(question),
                         lambda yes: yes and self._close(stream["id"]))

    @work(exclusive=False, group="requests")
    async def _close(self, stream_id):
        try:
            await self.client.request({"cmd": "close_stream", "stream": stream_id})
        except ControlError as exc:
            self.notify("stream %s not closed: %s" % (stream_id, exc), severity="error")
        else:
            self.notify("stream %s closed" % stream_id)

    def action_filter(self):
        self.action_view("main")
        box = self.main.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event):
        self.main.query_one(ConnectionsTable).set_filter(event.value)
        self._table_title()

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event):
        box = self.main.query_one("#filter", Input)
        box.display = bool(event.value)
        self.main.query_one(ConnectionsTable).focus()

    def action_back(self):
        box = self.main.query_one("#filter", Input)
        if box.display:
            box.value = ""
            box.display = False
            self.main.query_one(ConnectionsTable).focus()
        self.action_view("main")

    def action_sort(self):
        self.main.query_one(ConnectionsTable).cycle_sort()
        self._table_title()

    def action_reverse_sort(self):
        self.main.query_one(ConnectionsTable).reverse_sort()
        self._table_title()

    @on(DataTable.HeaderSelected, "#connections")
    def _header_clicked(self, event):
        self.main.query_one(ConnectionsTable).sort_by(event.column_key.value)
        self._table_title()

    def action_pause(self):
        self.paused = not self.paused
        if not self.paused and self.pending_streams is not None:
            self.main.query_one(ConnectionsTable).show_streams(self.pending_streams)
            self.pending_streams = None
        if self.snapshot is not None:
            self.main.query_one(StatusHeader).show(self.snapshot, paused=self.paused)
        self._table_title()

    def action_view(self, name):
        views = self.main.query_one(ContentSwitcher)
        views.current = "main" if views.current == name else name
        focus = {"main": "#connections", "users": "#users-table", "logs": "#log-lines"}
        if views.current == "users" and (self.snapshot or {}).get("role") != "server":
            focus["users"] = "#devices-table"
        self.main.query_one(focus[views.current]).focus()

    def action_log_level(self):
        self.main.query_one(LogPanel).cycle_level()

    def action_reconnect(self):
        self.client.retry_now()

    def action_help(self):
        self.push_screen(HelpScreen())


def run(connect=None):
    """Run the dashboard in this terminal; the exit status for ``afb tui``."""
    Dashboard(connect=connect).run()
    return 0
