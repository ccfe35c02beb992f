"""The dashboard's tests run in a child pytest, in an interpreter gevent never patched.

tests/conftest.py monkey-patches this pytest process (the daemons' tests
need it), and a patched process is no place for the dashboard: Textual runs
on asyncio, whose selector, sockets and threads gevent would have replaced
under it, and ``afb tui`` itself never runs patched (afb/entry.py).  A test
passing there would prove nothing about the real thing, and one failing there
would be gevent's doing.  So each ``tests/test_tui_*.py`` file is collected
here as one item that runs ``python -m pytest --noconftest FILE``: the child
loads no conftest (so nothing patches), runs that file's tests as they are,
and its report is this item's failure text.  Run directly (``pytest
--noconftest tests/test_tui_app.py``, or ``make test-tui-textual21``) the
same files need no child.

``--snapshot-update`` is passed on, so ``pytest tests/test_tui_snapshots.py
--snapshot-update`` updates the SVGs as usual.
"""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHILD_TIMEOUT = 600


class ChildFailed(Exception):
    """The child pytest failed; the message is its report."""


class TuiFile(pytest.File):
    def collect(self):
        yield TuiRun.from_parent(self, name=self.path.name)


class TuiRun(pytest.Item):
    def runtest(self):
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "--noconftest", "--timeout=240", "-rfE", str(self.path)]
        if self.config.getoption("--snapshot-update", default=False):
            command.append("--snapshot-update")
        env = dict(os.environ, TZ="UTC")
        env.pop("PYTEST_ADDOPTS", None)
        try:
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                    timeout=CHILD_TIMEOUT, env=env)
        except subprocess.TimeoutExpired as exc:
            raise ChildFailed("child pytest on %s ran over %d s:\n%s"
                              % (self.path.name, CHILD_TIMEOUT, exc.stdout or "")) from None
        summary = result.stdout.strip().splitlines()
        if result.returncode == 5 and summary and "skipped" in summary[-1]:
            pytest.skip("child pytest: %s" % summary[-1])   # the file skipped itself whole
        if result.returncode != 0:
            raise ChildFailed("child pytest (no gevent) on %s exited %d:\n%s%s"
                              % (self.path.name, result.returncode, result.stdout,
                                 result.stderr))
        self.user_properties.append(("child", summary[-1] if summary else ""))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ChildFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, 0, "%s (child pytest, without gevent)" % self.path.name
