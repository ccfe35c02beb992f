"""The dashboard's two modal screens: the key help, and "close this stream?".

Closing a stream resets a user's connection, so it is asked first, with the
stream named (id, destination, user or app); ``y`` or the Close button
confirms; Escape, ``n`` or Enter (the focus starts on Keep) cancel.
"""

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

HELP = """\
[b]afb tui[/b]: the live view of an afb client or server (its control socket).

  [b]q[/b]       quit
  [b]c[/b]       close the selected connection (asks first)
  [b]/[/b]       filter: part of a destination, user/app or state (Esc clears)
  [b]s[/b]       sort by the next column; [b]S[/b] reverses (or click a header)
  [b]p[/b]       pause the table (the header and chart stay live)
  [b]l[/b]       logs (there, [b]v[/b] changes the level); again: back
  [b]u[/b]       users (server), LAN devices (client); again: back
  [b]r[/b]       reconnect now, without waiting
  [b]?[/b]       this help

Figures are the daemon's own, one snapshot a second.  up = from the app
towards the destination, down = back.  kB = 1000 bytes.

Esc or ? closes this help."""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: 76; height: auto; border: round $accent;
                          background: $surface; padding: 1 2; }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP)


class ConfirmScreen(ModalScreen[bool]):
    """A question with yes/no; dismisses with True or False."""

    BINDINGS = [Binding("escape,n", "answer(False)", "no"),
                Binding("y", "answer(True)", "yes")]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 72; height: auto; border: thick $warning;
                               background: $surface; padding: 1 2; }
    ConfirmScreen Horizontal { height: auto; margin-top: 1; align: center middle; }
    ConfirmScreen Button { margin: 0 2; }
    """

    def __init__(self, question, **kwargs):
        super().__init__(**kwargs)
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question)
            with Horizontal():
                yield Button("Close it (y)", variant="error", id="yes")
                yield Button("Keep it (n)", variant="primary", id="no")

    def on_mount(self):
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event):
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer):
        self.dismiss(answer)
