"""``make test`` (issue 10, item 7): a test path in PYTEST_ARGS runs only those tests.

``make -n`` prints the pytest command without running it (``-o`` keeps the
venv and the apt packages from being looked at).
"""

import shlex
import shutil
import subprocess

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def pytest_argv(pytest_args):
    result = subprocess.run(["make", "-s", "-n", "-o", "venv", "-o", "apt-deps", "test",
                             "PYTEST_ARGS=" + pytest_args], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout.strip().splitlines()[-1])
    assert argv[1:3] == ["-m", "pytest"]
    return argv[argv.index("--durations=25") + 1:]


@pytest.mark.parametrize("args,argv", [
    ("", ["tests"]),
    ("-k socks -x", ["-k", "socks", "-x", "tests"]),
    ("tests/test_cli.py", ["tests/test_cli.py"]),
    ("-x tests/test_cli.py::test_version", ["-x", "tests/test_cli.py::test_version"]),
    ("./tests/test_demo.py tests/test_cli.py", ["./tests/test_demo.py", "tests/test_cli.py"]),
])
def test_a_path_in_pytest_args_replaces_the_whole_suite(args, argv):
    assert pytest_argv(args) == argv
