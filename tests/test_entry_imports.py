"""gevent patches first: the entry point imports nothing that patching must precede.

Each check runs in a fresh interpreter, since this test process is patched already.
"""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SENSITIVE = ("threading", "socket", "ssl", "select", "asyncio", "gevent", "logging")


def _run(code):
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_afb_and_its_entry_point_loads_nothing_patching_must_precede():
    out = _run("import sys, afb, afb.entry; "
               "print(','.join(m for m in %r if m in sys.modules))" % (SENSITIVE,))
    assert out == ""


def test_daemon_commands_patch_before_loading_the_code_without_warnings():
    out = _run(
        "import warnings; from gevent.monkey import MonkeyPatchWarning; "
        "warnings.simplefilter('error', MonkeyPatchWarning); "
        "import afb.entry as e; e.patch_gevent(); "
        "import afb.cli, afb.apps.server, afb.apps.client, afb.apps.demo; "
        "from gevent import monkey; import threading, socket, ssl; "
        "print(all(monkey.is_module_patched(m) for m in ('socket', 'ssl', 'threading', 'select')))")
    assert out == "True"


def test_offline_commands_never_load_gevent(tmp_path):
    keys = tmp_path / "keys"
    _run("from afb.keys import generate_server_keys; generate_server_keys(%r)" % str(keys))
    conf = tmp_path / "server.conf"         # every start-up check runs: TLS pair, keys, state
    conf.write_text("[server]\nstate_dir = state\ncert = keys/server.crt\nkey = keys/server.key\n"
                    "[auth]\njwt_public_key = keys/jwt.pub\n[e2e]\nkey = keys/e2e.key\n")
    out = _run("import sys; from afb.entry import main; rc = main(['config', 'check', %r]); "
               "print(rc, 'gevent' in sys.modules, 'asyncio' in sys.modules)" % str(conf))
    assert out.splitlines()[-1] == "0 False False"


def test_only_the_entry_point_monkey_patches():
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "afb").rglob("*.py")
                 if "patch_all" in path.read_text() and path.name != "entry.py"]
    assert offenders == []


def test_patching_leaves_importlib_metadata_unloaded_and_still_importable():
    out = _run("import sys, afb.entry as e; e.patch_gevent(); "
               "print('importlib.metadata' in sys.modules, 'email' in sys.modules); "
               "import importlib.metadata as m; "
               "print(callable(m.version), m.version('gevent') > '')")
    assert out.splitlines() == ["False False", "True True"]


def test_a_patched_daemon_can_still_spawn_a_process_after_the_hub_ran():
    out = _run("import afb.entry as e; e.patch_gevent(); import gevent, subprocess; "
               "gevent.sleep(0); print(subprocess.run(['true'], timeout=10).returncode)")
    assert out == "0"


def test_the_dashboard_never_loads_gevent():
    """``afb tui`` and ``tui.app`` stay gevent-free (the entry point never patches for tui)."""
    out = _run("import sys, contextlib, io; from afb.entry import main\n"
               "with contextlib.redirect_stdout(io.StringIO()) as text:\n"
               "    try:\n"
               "        main(['tui', '--help'])\n"
               "    except SystemExit as exit:\n"
               "        code = exit.code\n"
               "import tui.app, tui.__main__\n"
               "print(code, '--connect SOCKET' in text.getvalue(), 'gevent' in sys.modules)")
    assert out.splitlines()[-1] == "0 True False"
    out = _run("import sys, tui.app; print('gevent' in sys.modules, 'textual' in sys.modules)")
    assert out == "False True"
