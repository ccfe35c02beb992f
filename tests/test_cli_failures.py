"""Expected failures of the ``afb`` command end in one line and exit status 1 or 2, never a
traceback.

Real ``afb`` processes (``python -m afb``): daemons that cannot have their
listening socket (a port the test holds, an address of 192.0.2.0/24 that is
on no interface of this host, so nothing is sent, and port 80 without
CAP_NET_BIND_SERVICE), a reader that closes the pipe early, and CLI input
that used to end in a traceback.
"""

import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from tests.support import ROOT, Setup


def afb(*args, prefix=(), env=None, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    if "stdout" not in kwargs:
        kwargs["capture_output"] = True
    return subprocess.run([*prefix, sys.executable, "-m", "afb", *args], text=True, timeout=60,
                          cwd=ROOT, env=env, **kwargs)


def one_line(result, status=1):
    """The single stderr line of a failed run (after checking the status and the rest)."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


def listen_on(setup, role, address):
    """Rewrite ``[role] listen`` of ``setup``'s config file for ``role``."""
    path = setup.server_conf if role == "server" else setup.client_conf
    with open(path) as handle:
        text = handle.read()
    with open(path, "w") as handle:
        handle.write(re.sub(r"(?m)^listen = .*$", "listen = " + address, text, count=1))
    return path


@pytest.mark.parametrize("role", ["server", "client"])
def test_a_port_in_use(setup, role):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        line = one_line(afb(role, "-c", listen_on(setup, role, "127.0.0.1:%d" % port)))
    finally:
        holder.close()
    assert line == ("afb %s: cannot listen on 127.0.0.1:%d: address already in use (another "
                    "afb %s or a web server?); stop it or change [%s] listen"
                    % (role, port, role, role))


@pytest.mark.parametrize("role", ["server", "client"])
def test_an_address_that_is_not_on_this_host(setup, role):
    line = one_line(afb(role, "-c", listen_on(setup, role, "192.0.2.1:8443")))
    assert line == ("afb %s: cannot listen on 192.0.2.1:8443: 192.0.2.1 is not an address of "
                    "this host; change [%s] listen to one of its addresses (0.0.0.0 or [::]: "
                    "all)" % (role, role))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to drop CAP_NET_BIND_SERVICE")
def test_a_low_port_without_the_capability(setup):
    path = listen_on(setup, "server", "127.0.0.1:80")
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-net_bind_service"]
    line = one_line(afb("server", "-c", path, prefix=drop))
    assert line.startswith("afb server: cannot listen on 127.0.0.1:80: permission denied (ports "
                           "below 1024 need root or the CAP_NET_BIND_SERVICE capability); ")
    assert line.endswith("or change [server] listen to a port above 1023")


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_reader_that_leaves_early(tmp_path, unbuffered):
    """``afb keygen --rotate | head -1``: the pipe closes; afb says nothing more."""
    keys = str(tmp_path / "keys")
    assert afb("keygen", "--dir", keys).returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)          # the reader is gone before the first line
    # afb's own status comes back through sh: in this gevent-patched process a child's
    # status can be lost to another waiter and read as 0 (seen once in CI).
    tell_status = ["sh", "-c", '"$@"; echo "status $?" >&2', "sh"]
    try:
        result = afb("keygen", "--rotate", "--dir", keys, stdout=write_end, stderr=subprocess.PIPE,
                     env={"PYTHONUNBUFFERED": unbuffered}, prefix=tell_status)
    finally:
        os.close(write_end)
    assert result.stderr == "status 1\n"
    rotated = [name for name in os.listdir(keys)
               if re.match(r"^jwt-[0-9a-f]{16}\.(key|pub)$", name)]
    assert len(rotated) == 2        # the key was rotated all the same


def test_keygen_days_out_of_range(tmp_path):
    result = afb("keygen", "--dir", str(tmp_path / "k"), "--days", "1000000000")
    assert result.returncode == 2 and "Traceback" not in result.stderr    # argparse: usage, then
    line = result.stderr.strip().splitlines()[-1]                         # one error line
    assert line.endswith("argument --days: a whole number of days from 1 to 36500, "
                         "not '1000000000'")
    assert not os.path.exists(tmp_path / "k")


def test_demo_in_a_folder_it_cannot_make():
    line = one_line(afb("demo", "--dir", "/proc/afb-demo"))
    assert line.endswith("cannot prepare the demo in /proc/afb-demo: [Errno 2] No such file or "
                         "directory: '/proc/afb-demo'; choose another folder with --dir")


def test_a_state_store_that_is_not_one(setup):
    os.makedirs(os.path.join(setup.dir, "state"))
    with open(os.path.join(setup.dir, "state", "afb.sqlite3"), "w") as handle:
        handle.write("not a database\n")
    line = one_line(afb("server", "-c", setup.server_conf), 2)     # found by the start checks
    assert line == ("%s:7: [server] state_dir: state store %s is not an SQLite database; fix: "
                    "move it away (afb makes a new, empty one)"
                    % (setup.server_conf, os.path.join(setup.dir, "state", "afb.sqlite3")))


def test_keys_that_cannot_be_written_and_a_config_that_is_a_folder(tmp_path):
    (tmp_path / "file").write_text("")
    line = one_line(afb("keygen", "--dir", str(tmp_path / "file" / "keys")))
    assert line == "afb keygen: cannot write the keys in %s: not a directory" % (
        tmp_path / "file" / "keys")
    check = afb("config", "check", str(tmp_path))
    assert check.returncode == 1 and check.stdout == (
        "%s: cannot read: it is a folder; name the config file in it\n" % tmp_path)
