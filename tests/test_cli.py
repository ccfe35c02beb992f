"""The ``afb`` command line, run as ``python -m afb`` in subprocesses."""

import base64
import os
import stat
import subprocess
import sys

import pytest

from afb.policy.auth import TokenVerifier
from tests.support import Setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def afb(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "afb", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cli") / "keys")
    result = afb("keygen", "--dir", path, "--name", "vpn.test", "--name", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    return path, result.stdout


def test_version():
    result = afb("--version")
    assert result.returncode == 0 and result.stdout.startswith("afb ")


def test_keygen_output_and_refusal(keydir):
    path, out = keydir
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert lines["cert"] == os.path.join(path, "server.crt")
    assert lines["jwt_public_key"] == os.path.join(path, "jwt.pub")
    assert lines["pin"].startswith("sha256//") and len(lines["pin"]) == 52
    assert stat.S_IMODE(os.stat(lines["key"]).st_mode) == 0o600
    assert lines["e2e_key"] == os.path.join(path, "e2e.key")
    assert stat.S_IMODE(os.stat(lines["e2e_key"]).st_mode) == 0o600
    assert len(base64.b64decode(lines["e2e public key"], validate=True)) == 32
    again = afb("keygen", "--dir", path)
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr and "--force" in again.stderr


def test_keygen_show_prints_the_pin_and_e2e_key_again(keydir, tmp_path):
    path, out = keydir
    made = dict(line.split(": ", 1) for line in out.strip().splitlines())
    result = afb("keygen", "--show", "--dir", path)
    assert result.returncode == 0, result.stderr
    shown = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    assert {k: shown[k] for k in ("cert", "names", "pin", "e2e public key")} == {
        k: made[k] for k in ("cert", "names", "pin", "e2e public key")}
    assert shown["expires"].endswith(" UTC")
    missing = afb("keygen", "--show", "--dir", str(tmp_path))
    assert (missing.returncode, missing.stderr) == (
        1, "afb keygen --show: no server.crt in %s (afb keygen --dir %s makes it)\n"
        % (tmp_path, tmp_path))
    mixed = afb("keygen", "--show", "--rotate", "--dir", path)
    assert mixed.returncode == 1 and "--rotate does not apply" in mixed.stderr


def test_token_issue_with_key(keydir, tmp_path):
    path, _ = keydir
    result = afb("token", "issue", "--sub", "alice", "--ttl", "1h",
                 "--key", os.path.join(path, "jwt.key"))
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    with open(os.path.join(path, "jwt.pub"), "rb") as fh:
        claims = TokenVerifier(fh.read()).verify(token)
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 3600


def test_token_issue_from_server_config_to_file(keydir, tmp_path):
    path, _ = keydir
    conf = tmp_path / "server.conf"
    conf.write_text("[server]\nstate_dir = state\n[auth]\njwt_private_key = %s/jwt.key\n"
                    "audience = aud1\nissuer = me\n" % path)
    out = tmp_path / "alice.token"
    result = afb("token", "issue", "--sub", "bob", "--ttl", "30d", "-c", str(conf),
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and "eyJ" not in result.stdout
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    with open(os.path.join(path, "jwt.pub"), "rb") as fh:
        verifier = TokenVerifier(fh.read(), audience="aud1", issuer="me")
        claims = verifier.verify(out.read_text().strip())
    assert claims["sub"] == "bob"


def test_token_issue_errors(keydir, tmp_path):
    path, _ = keydir
    bad_ttl = afb("token", "issue", "--sub", "a", "--ttl", "soon",
                  "--key", os.path.join(path, "jwt.key"))
    assert bad_ttl.returncode == 1 and "bad lifetime" in bad_ttl.stderr
    no_key = afb("token", "issue", "--sub", "a", "--key", str(tmp_path / "missing.key"))
    assert no_key.returncode == 1 and "missing.key" in no_key.stderr
    conf = tmp_path / "bad.conf"
    conf.write_text("[server]\nbogus = 1\n")
    bad_conf = afb("token", "issue", "--sub", "a", "-c", str(conf))
    assert bad_conf.returncode == 2
    assert "%s:2: [server] bogus: unknown key" % conf in bad_conf.stderr


def test_config_check(tmp_path):
    setup = Setup(tmp_path / "ok")
    for path in (setup.server_conf, setup.client_conf):
        result = afb("config", "check", path, cwd=ROOT)
        assert result.returncode == 0 and result.stdout.strip() == "%s: OK" % path
    conf = tmp_path / "client.conf"
    conf.write_text("[client]\nserver = https://x/\ntoken = t\n[tunnel]\nping_timeout = 0\n")
    result = afb("config", "check", str(conf), "--role", "client")
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("%s:2: [client] server: URL scheme must be ws:// or wss://" % conf)
    assert lines[1] == '%s:5: [tunnel] ping_timeout: value "0" is too small (min 0.1)' % conf


def test_server_with_bad_config_exits_2(tmp_path):
    conf = tmp_path / "server.conf"
    conf.write_text("[server]\nlisten = nowhere\n")
    result = afb("server", "-c", str(conf))
    assert result.returncode == 2
    assert result.stderr.startswith("%s:2: [server] listen: expected host:port" % conf)


def test_no_command_prints_usage():
    result = afb()
    assert result.returncode == 2 and "usage: afb" in result.stderr
