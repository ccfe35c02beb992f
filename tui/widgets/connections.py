"""The live table of streams: updated in place, sorted and filtered here.

A snapshot arrives every second with up to 5,000 streams.  Rebuilding the
table each time (``clear()`` then ``add_row`` for all) would throw away the
cursor and the scroll position and redo every cell; instead each stream is a
row keyed by its id (``"3/17"``), and an update touches only what changed:
``update_cell`` for the cells whose text differs, ``add_row`` for new
streams, ``remove_row`` for gone ones, then one ``sort`` when the order can
have changed.  The cursor follows its stream, not its row number.

``remove_row`` costs a pass over every row (it renumbers them), so when more
than :data:`BULK` rows go at once (a new filter, a daemon restart) the table
is refilled in one go instead; it happens between two frames, so nobody sees
it, and the cursor is put back on its stream as always.

Sorting and filtering are the dashboard's own, on the raw numbers the daemon
sent (not on the formatted text), so "1.2 MB" sorts after "999 kB".
"""

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey

from tui.format import human_bytes, human_duration, human_rate

#: (column key, label, the stream's field sorted on, right-aligned)
COLUMNS = (
    ("id", "stream", "tunnel", False),
    ("dest", "destination", "dest", False),
    ("who", "user/app", "who", False),
    ("state", "state", "state", False),
    ("age", "age", "age", True),
    ("up", "up", "bytes_up", True),
    ("down", "down", "bytes_down", True),
    ("rate_up", "↑/s", "rate_up", True),
    ("rate_down", "↓/s", "rate_down", True),
)
SORTABLE = [key for key, *_ in COLUMNS]
BULK = 200


def destination(stream):
    host = stream.get("host") or "?"
    if ":" in host:
        host = "[%s]" % host
    return "%s:%s" % (host, stream.get("port", "?"))


def who(stream):
    """Server: the user; client: the local app's address (and SOCKS user, if any)."""
    user, app = stream.get("user"), stream.get("app")
    if user and app:
        return "%s %s" % (user, app)
    return user or app or "-"


#: Widths of the figures' columns: fixed, so the columns never need re-measuring.
WIDTHS = {"age": 6, "up": 8, "down": 8, "rate_up": 10, "rate_down": 10}


def texts(stream):
    """The plain text of each column for one stream, in COLUMNS order (figures padded)."""
    return (
        str(stream.get("id", "?")),
        destination(stream),
        who(stream),
        str(stream.get("state") or "-"),
        human_duration(stream.get("age")).rjust(6),
        human_bytes(stream.get("bytes_up")).rjust(8),
        human_bytes(stream.get("bytes_down")).rjust(8),
        human_rate(stream.get("rate_up")).rjust(10),
        human_rate(stream.get("rate_down")).rjust(10),
    )


#: Columns whose text comes from the daemon: shown as Text, never parsed as markup
#: (an IPv6 destination is "[fe80::1]:443"); the figures are plain, markup-free.
VERBATIM = frozenset((0, 1, 2, 3))


def cell(index, text):
    return Text(text) if index in VERBATIM else text


def sort_value(stream, column):
    """What column ``column`` sorts ``stream`` on: the raw figure, never its text."""
    if column == "id":
        tunnel, _, number = str(stream.get("id", "")).partition("/")
        return (int(tunnel) if tunnel.isdigit() else 0, int(number) if number.isdigit() else 0)
    if column == "dest":
        return destination(stream).lower()
    if column == "who":
        return who(stream).lower()
    field = dict((key, f) for key, _l, f, _r in COLUMNS)[column]
    value = stream.get(field)
    if isinstance(value, (int, float)):
        return value
    return str(value or "")


def matches(stream, needle):
    """The protocol's filter: a case-insensitive substring of destination, user/app or state."""
    if not needle:
        return True
    haystack = " ".join((destination(stream), who(stream), str(stream.get("state") or ""),
                         str(stream.get("resolved") or ""), str(stream.get("id", ""))))
    return needle.lower() in haystack.lower()


class ConnectionsTable(DataTable):
    """One row per stream, keyed by the stream id."""

    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.streams = {}           # id -> stream dict, every stream of the last snapshot
        self.shown = {}             # id -> cells currently in the table
        self.filter_text = ""
        self.sort_column = "age"
        self.sort_reverse = False

    def on_mount(self):
        for key, label, _field, right in COLUMNS:
            self.add_column(Text(label, justify="right") if right else label, key=key)

    # --- the data --------------------------------------------------------------------

    def show_streams(self, streams):
        """Bring the table to ``streams`` (a snapshot's list) without rebuilding it."""
        self.streams = {s["id"]: s for s in streams if isinstance(s, dict) and "id" in s}
        self._apply()

    def set_filter(self, text):
        self.filter_text = text.strip()
        self._apply()

    def cycle_sort(self):
        """Next column; after the last one, back to the first."""
        index = (SORTABLE.index(self.sort_column) + 1) % len(SORTABLE)
        self.sort_column = SORTABLE[index]
        self._resort(self.selected_id())

    def reverse_sort(self):
        self.sort_reverse = not self.sort_reverse
        self._resort(self.selected_id())

    def sort_by(self, column):
        """A click on a header: that column, or the other way round when it already is."""
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, False
        self._resort(self.selected_id())

    def selected_id(self):
        """The id of the stream under the cursor, or None."""
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:   # noqa: BLE001  (a cursor past the end while rows go)
            return None

    def selected_stream(self):
        sid = self.selected_id()
        return None if sid is None else self.streams.get(sid)

    def sort_label(self):
        label = dict((key, label) for key, label, _f, _r in COLUMNS)[self.sort_column]
        return "%s %s" % (label, "↓" if self.sort_reverse else "↑")

    # --- in place --------------------------------------------------------------------

    def _apply(self):
        selected = self.selected_id()
        wanted = {sid: s for sid, s in self.streams.items() if matches(s, self.filter_text)}
        gone = [sid for sid in self.shown if sid not in wanted]
        if len(gone) > BULK:
            self._refill(wanted, selected)
            return
        for sid in gone:
            self.remove_row(sid)
            del self.shown[sid]
        changed_order = bool(gone)
        keys = [key for key, *_ in COLUMNS]
        sort_index = keys.index(self.sort_column)
        changes = []
        for sid, stream in wanted.items():
            new = texts(stream)
            old = self.shown.get(sid)
            if old is None:
                self.add_row(*(cell(i, t) for i, t in enumerate(new)), key=sid)
                changed_order = True
            elif old != new:
                for index, (before, after) in enumerate(zip(old, new, strict=True)):
                    if before != after:
                        changes.append((sid, keys[index], cell(index, after)))
                        changed_order = changed_order or index == sort_index
            self.shown[sid] = new
        self._update_cells(changes)
        if changed_order:
            self._resort(selected)

    def _refill(self, wanted, selected):
        self.clear()            # the columns stay
        self.shown = {}
        for sid, stream in wanted.items():
            row = texts(stream)
            self.add_row(*(cell(i, t) for i, t in enumerate(row)), key=sid)
            self.shown[sid] = row
        self._resort(selected)

    def _update_cells(self, changes):
        """``update_cell`` for each (row, column, value), with one refresh for them all.

        ``update_cell`` refreshes the widget at every call, and with 2,000
        rows of five moving figures that was two thirds of the time an update
        took (measured: 465 of 710 ms for three updates, bench/tui).  So
        beyond a few cells this does what ``update_cell(update_width=False)``
        does, identically in Textual 2.1 and 8 (the test runs on both
        check it), for all of them and then refreshes once.  The figures'
        columns have fixed widths (WIDTHS), so no width needs updating.
        """
        if len(changes) < 16 or not hasattr(self, "_data") \
                or not hasattr(self, "_update_count"):
            for row, column, value in changes:
                self.update_cell(row, column, value)
            return
        data = self._data
        for row, column, value in changes:
            data[RowKey(row)][ColumnKey(column)] = value
        self._update_count += 1
        self.refresh()

    def _resort(self, selected):
        column = self.sort_column
        streams = self.streams
        self.sort("id", key=lambda sid: sort_value(streams.get(str(sid), {}), column),
                  reverse=self.sort_reverse)
        self._follow(selected)

    def _follow(self, selected):
        """Put the cursor back on the stream it was on (if it is still shown)."""
        if selected is None or selected not in self.shown:
            return
        index = self.get_row_index(selected)
        if index != self.cursor_row:
            self.move_cursor(row=index, scroll=False)
