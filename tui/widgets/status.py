"""One line under the header for what is wrong: no daemon, a lost one, a bad message.

Hidden while all is well; the text is always a sentence for a person (the
daemon's path and the next step), never an exception's repr.
"""

from textual.widgets import Static


class StatusLine(Static):
    """Shows a problem in one line, or nothing."""

    DEFAULT_CSS = """
    StatusLine { height: auto; padding: 0 1; background: $error 30%; display: none; }
    StatusLine.-warning { background: $warning 30%; }
    """

    def problem(self, text, warning=False):
        self.set_class(warning, "-warning")
        self.update(text)
        self.display = True

    def clear_problem(self):
        self.display = False
        self.update("")
