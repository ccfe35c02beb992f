"""``afb config check`` runs every check the daemon runs at start (issue 10, item 2).

Each case breaks one thing in a working set-up (real keys, real files) and
asks both: ``afb config check FILE`` must print the problem with the file
and line of its key, and ``afb server``/``afb client`` (a real process) must
refuse to start with the very same lines, exit 2.  Before, the check said OK
for all of these and the daemon then refused to start (or started with a
token it could never use).  Without a FILE, ``afb config check`` looks at
/etc/afb/server.conf and /etc/afb/client.conf: tested in a mount namespace
whose /etc is an overlay, so the host's /etc is never touched.
"""

import os
import shutil
import subprocess
import sys

import pytest

from afb.keys import generate_server_keys
from tests.support import ROOT, Setup


def afb(*args, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "afb", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT))


def put(path, original, section, key, value):
    """Write ``original`` to ``path`` with ``key = value`` first in ``[section]`` (replacing the
    key's line there, if any); -> its line number."""
    lines, current = [], None
    for line in original.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        if not (current == section and line.startswith(key + " = ")):
            lines.append(line)
    if "[%s]" % section not in lines:
        lines.append("[%s]" % section)
    number = lines.index("[%s]" % section) + 2
    lines.insert(number - 1, "%s = %s" % (key, value))
    write(path, "\n".join(lines) + "\n")
    return number


def write(path, text, mode=0o600):
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)
    return str(path)


def refused(role, conf, expected):
    """``afb config check`` and ``afb ROLE`` both give exactly ``expected`` lines."""
    check = afb("config", "check", conf)
    assert (check.returncode, check.stdout.splitlines()) == (1, expected), check.stderr
    start = afb(role, "-c", conf)
    assert (start.returncode, start.stderr.splitlines()) == (2, expected), start.stdout


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path / "site")


def server_cases(setup, tmp):
    """(what, key to set or None, value, the problem after ``[section] key: ``)."""
    other = str(tmp / "other")
    generate_server_keys(other)
    write(tmp / "junk.pem", "not a certificate\n", 0o644)
    write(tmp / "e2e-junk.key", "not a key\n")
    write(tmp / "a-file", "")
    return [
        ("server", "cert", os.path.join(other, "server.crt"),
         "TLS certificate %s and key %s are not one pair; fix: point cert and key at the files "
         "of one pair (afb keygen makes one)" % (os.path.join(other, "server.crt"),
                                                 os.path.join(setup.dir, "server.key"))),
        ("server", "cert", str(tmp / "junk.pem"),
         "TLS certificate %s is not a PEM certificate" % (tmp / "junk.pem")),
        ("server", "cert", str(tmp / "gone.crt"),
         "%s does not exist; make it with afb keygen --dir %s, or fix the path" % (
             tmp / "gone.crt", tmp)),
        ("e2e", "key", str(tmp / "e2e-junk.key"), None),
        ("server", "state_dir", str(tmp / "a-file" / "state"),
         "state folder %s cannot be created: %s is not a writable folder; fix: create it for "
         "the user afb runs as, or choose another" % (tmp / "a-file" / "state", tmp / "a-file")),
        ("decoy", "dir", str(tmp / "no-site"),
         "decoy folder %s is not a folder afb can read; fix the path, or leave [decoy] dir empty "
         "for the built-in site" % (tmp / "no-site")),
    ]


def test_server_problems_are_found_by_the_check_and_stop_the_server(setup, tmp_path):
    conf = setup.server_conf
    with open(conf) as handle:
        original = handle.read()
    for section, key, value, problem in server_cases(setup, tmp_path):
        line = put(conf, original, section, key, value)
        check = afb("config", "check", conf)
        [error] = check.stdout.splitlines()
        if problem is not None:
            assert error == "%s:%d: [%s] %s: %s" % (conf, line, section, key, problem)
        else:
            assert error.startswith("%s:%d: [e2e] key: " % (conf, line))
            assert str(tmp_path / "e2e-junk.key") in error
        refused("server", conf, [error])


def test_a_missing_public_key_names_keygen(setup, tmp_path):
    os.unlink(os.path.join(setup.dir, "jwt-keys.json"))         # single-key mode
    os.unlink(os.path.join(setup.dir, "jwt.pub"))
    refused("server", setup.server_conf, [
        "%s:12: [auth] jwt_public_key: %s does not exist; make it with afb keygen --dir %s, or "
        "fix the path" % (setup.server_conf, os.path.join(setup.dir, "jwt.pub"), setup.dir)])


def client_cases(setup, tmp):
    users = write(tmp / "users", "alice:secret\nbob\n")
    ca = write(tmp / "ca.pem", "no certificate here\n", 0o644)
    return [
        ("token_file", write(tmp / "empty.token", "\n"),
         "token file %s is empty; put the user's token in it (afb token issue on the server)"
         % (tmp / "empty.token")),
        ("token_file", write(tmp / "odd.token", "my password\n"),
         "token file %s does not hold a token (expected a JWT: three parts separated by dots, "
         "as afb token issue prints)" % (tmp / "odd.token")),
        ("users_file", users, "%s:2: expected user:password" % users),
        ("ca_file", ca, "CA file %s holds no PEM certificate" % ca),
        ("server", "wss://your.server.example/",
         "wss://your.server.example/ is the example's placeholder: set the URL of your afb "
         "server, wss://HOST[:PORT]/PATH with the PATH of its [server] path"),
    ]


def test_client_problems_are_found_by_the_check_and_stop_the_client(setup, tmp_path):
    conf = setup.client_conf
    with open(conf) as handle:
        original = handle.read()
    for key, value, problem in client_cases(setup, tmp_path):
        line = put(conf, original, "client", key, value)
        refused("client", conf, ["%s:%d: [client] %s: %s" % (conf, line, key, problem)])


def test_a_complete_set_up_passes(setup):
    for conf in (setup.server_conf, setup.client_conf):
        result = afb("config", "check", conf)
        assert (result.returncode, result.stdout) == (0, "%s: OK\n" % conf)


# --- afb config check without a FILE: the daemons' default files -------------------------------

def _overlay_unavailable():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1) for a private /etc"
    return None


def etc_afb(tmp_path, files):
    """``afb config check`` (and ``--role client``) with /etc/afb holding just ``files``."""
    upper, work = tmp_path / "upper", tmp_path / "work"
    (upper / "afb").mkdir(parents=True)
    work.mkdir()
    try:       # the host's own /etc/afb, if any, stays hidden
        os.setxattr(str(upper / "afb"), "trusted.overlay.opaque", b"y")
    except OSError as exc:
        pytest.skip("no overlay opaque folders here: %s" % exc)
    for name, text in files.items():
        write(upper / "afb" / name, text)
    mount = ("mount -t overlay overlay -o lowerdir=/etc,upperdir=%s,workdir=%s /etc && "
             "exec \"$@\"" % (upper, work))
    results = []
    for extra in ([], ["--role", "client"]):
        result = afb("config", "check", *extra, prefix=["unshare", "--mount", "sh", "-c", mount,
                                                        "sh"])
        if "mount:" in result.stderr:
            pytest.skip("cannot mount an overlay here: %s" % result.stderr.strip())
        results.append(result)
    return results


@pytest.mark.skipif(_overlay_unavailable() is not None, reason=str(_overlay_unavailable()))
def test_without_a_file_the_default_files_are_checked(setup, tmp_path):
    both, client = etc_afb(tmp_path / "none", {})
    assert (both.returncode, both.stderr) == (
        2, "afb config check: neither /etc/afb/server.conf nor /etc/afb/client.conf exists; "
           "name the file to check: afb config check FILE\n")
    assert client.stderr == ("afb config check: /etc/afb/client.conf does not exist; name the "
                             "file to check: afb config check FILE\n")
    with open(setup.server_conf) as handle:       # absolute paths: the file moves to /etc/afb
        server = handle.read().replace(" = server.", " = %s/server." % setup.dir).replace(
            " = jwt.", " = %s/jwt." % setup.dir).replace(" = e2e.", " = %s/e2e." % setup.dir)
    server = server.replace("state_dir = state", "state_dir = %s/state" % setup.dir)
    both, client = etc_afb(tmp_path / "server", {"server.conf": server})
    assert (both.returncode, both.stdout) == (0, "/etc/afb/server.conf: OK\n"), both.stderr
    assert client.returncode == 2 and "/etc/afb/client.conf does not exist" in client.stderr
    broken = "[client]\nserver = wss://your.server.example/\ntoken_file = /nowhere/t\n"
    both, client = etc_afb(tmp_path / "both", {"server.conf": server, "client.conf": broken})
    assert both.returncode == 1 and both.stdout.splitlines()[0] == "/etc/afb/server.conf: OK"
    assert [line.split(": ")[:2] for line in both.stdout.splitlines()[1:]] == [
        ["/etc/afb/client.conf:2", "[client] server"],
        ["/etc/afb/client.conf:3", "[client] token_file"]]
    assert client.returncode == 1 and "server.conf" not in client.stdout
