"""`afb keygen --rotate`, `afb token issue/revoke/list` and secret-file refusals, as processes."""

import os
import re
import stat
import subprocess
import sys
import time

import jwt
import pytest

from afb.config import load_config
from afb.errors import AuthError, ConfigError
from afb.keys import read_keyring
from afb.policy.keyring import make_verifier
from afb.state import open_store
from tests.support import Setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def afb(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "afb", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


class Site:
    """Keys from `afb keygen` and a server config with its own state_dir."""

    def __init__(self, directory):
        self.dir = str(directory)
        result = afb("keygen", "--dir", self.dir)
        assert result.returncode == 0, result.stderr
        self.conf = os.path.join(self.dir, "server.conf")
        with open(self.conf, "w") as handle:
            handle.write("[server]\nstate_dir = state\n[auth]\njwt_public_key = jwt.pub\n"
                         "jwt_private_key = jwt.key\n")

    def cfg(self):
        return load_config(self.conf, "server")

    def issue(self, sub="alice", ttl="1h"):
        result = afb("token", "issue", "--sub", sub, "--ttl", ttl, "-c", self.conf)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def verify(self, token):
        store = open_store(self.cfg())
        try:
            return make_verifier(self.cfg(), revocations=store).verify(token)
        finally:
            store.close()

    def refused(self, token):
        with pytest.raises(AuthError) as info:
            self.verify(token)
        return str(info.value)

    def listing(self):
        result = afb("token", "list", "-c", self.conf)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path / "site")


def jti_of(token):
    return jwt.decode(token, options={"verify_signature": False})["jti"]


def test_keygen_writes_keyring(site):
    [entry] = read_keyring(os.path.join(site.dir, "jwt-keys.json"))
    assert entry["alg"] == "EdDSA" and entry["private"] == "jwt.key"


def test_issue_records_and_list_shows(site):
    token = site.issue("alice")
    assert site.verify(token)["sub"] == "alice"
    assert stat.S_IMODE(os.stat(os.path.join(site.dir, "state")).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(site.dir, "state", "afb.sqlite3")).st_mode) == 0o600
    out = site.listing()
    assert out.splitlines()[0].split() == ["JTI", "SUB", "ISSUED", "EXPIRES", "STATUS"]
    line = [row for row in out.splitlines() if jti_of(token) in row][0]
    assert " alice " in line and line.endswith("valid")


def test_issue_with_unusable_state_dir_still_works(tmp_path, site):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    conf = tmp_path / "other.conf"
    conf.write_text("[server]\nstate_dir = %s\n[auth]\njwt_public_key = %s/jwt.pub\n"
                    "jwt_private_key = %s/jwt.key\n" % (blocker / "state", site.dir, site.dir))
    result = afb("token", "issue", "--sub", "x", "-c", str(conf))
    assert result.returncode == 0 and result.stdout.startswith("eyJ")
    assert "state store in %s" % (blocker / "state") in result.stderr
    assert "not in the list of `afb token list`" in result.stderr
    listed = afb("token", "list", "-c", str(conf))
    assert listed.returncode == 0 and "no tokens recorded" in listed.stdout
    revoke = afb("token", "revoke", "--sub", "x", "-c", str(conf))
    assert revoke.returncode == 1 and "state store in" in revoke.stderr


def test_revoke_jti(site):
    token, other = site.issue("alice"), site.issue("alice")
    result = afb("token", "revoke", "--jti", jti_of(token), "-c", site.conf, "--reason", "lost")
    assert result.returncode == 0, result.stderr
    assert "revoked token %s of alice" % jti_of(token) in result.stdout
    assert site.refused(token) == "token revoked (lost)"
    assert site.verify(other)["sub"] == "alice"
    status = {row.split()[0]: row for row in site.listing().splitlines()[1:] if row.strip()}
    assert status[jti_of(token)].endswith("token revoked (lost)")
    assert status[jti_of(other)].endswith("valid")
    unknown = afb("token", "revoke", "--jti", "feedface", "-c", site.conf)
    assert unknown.returncode == 0 and "not in the issued-token list" in unknown.stderr


def test_revoke_subject_then_new_token_works(site):
    old, bobs = site.issue("alice"), site.issue("bob")
    result = afb("token", "revoke", "--sub", "alice", "-c", site.conf, "--reason", "reset")
    assert result.returncode == 0, result.stderr
    assert "revoked every token of alice issued before" in result.stdout
    assert site.refused(old) == "subject revoked (reset)"
    assert site.verify(bobs)["sub"] == "bob"
    time.sleep(1.05)                  # iat has whole seconds: the next second is "later"
    new = site.issue("alice")
    assert site.verify(new)["sub"] == "alice"
    out = site.listing()
    assert "revoked subjects" in out and "alice before" in out and "(reset)" in out


def test_revoke_needs_jti_or_sub(site):
    result = afb("token", "revoke", "-c", site.conf)
    assert result.returncode == 2
    assert "one of the arguments --jti --sub is required" in result.stderr
    both = afb("token", "revoke", "--jti", "a", "--sub", "b", "-c", site.conf)
    assert both.returncode == 2


def test_rotate_with_grace_then_past_grace(site):
    before = site.issue("alice")
    old_kid = jwt.get_unverified_header(before)["kid"]
    result = afb("keygen", "--rotate", "--dir", site.dir, "--grace", "1h")
    assert result.returncode == 0, result.stderr
    lines = dict(row.split(": ", 1) for row in result.stdout.strip().splitlines() if ": " in row)
    new_kid = re.match(r"(\w+) \(EdDSA\)$", lines["new signing key"]).group(1)
    assert lines["retired"].startswith(old_kid + " (verifies tokens until ")
    key_file = os.path.join(site.dir, "jwt-%s.key" % new_kid)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    after = site.issue("alice")
    assert jwt.get_unverified_header(after)["kid"] == new_kid
    assert site.verify(after) and site.verify(before)          # old key inside its grace
    # rotate again with no grace: the key of `after` is out at once, `before` still in its hour
    result = afb("keygen", "--rotate", "--dir", site.dir, "--grace", "0")
    assert result.returncode == 0, result.stderr
    assert site.refused(after) == "key retired"
    assert site.verify(before)
    newest = site.issue("alice")
    assert site.verify(newest)
    kids = [e["kid"] for e in read_keyring(os.path.join(site.dir, "jwt-keys.json"))]
    assert len(kids) == 3 and kids[:2] == [old_kid, new_kid]
    listed = site.listing()
    assert listed.count("alice") == 3


def test_rotate_errors(tmp_path, site):
    empty = afb("keygen", "--rotate", "--dir", str(tmp_path / "empty"))
    assert empty.returncode == 1 and "run afb keygen first" in empty.stderr
    bad = afb("keygen", "--rotate", "--dir", site.dir, "--grace", "soon")
    assert bad.returncode == 1 and "bad lifetime" in bad.stderr
    stray = afb("keygen", "--dir", str(tmp_path / "x"), "--grace", "1h")
    assert stray.returncode == 1 and "--grace only goes with --rotate" in stray.stderr


@pytest.mark.parametrize("algorithm", ["ES256", "HS256"])
def test_other_algorithms_end_to_end(tmp_path, algorithm):
    keydir = str(tmp_path / "k")
    result = afb("keygen", "--dir", keydir, "--algorithm", algorithm)
    assert result.returncode == 0, result.stderr
    conf = tmp_path / "s.conf"
    conf.write_text("[server]\nstate_dir = state\n[auth]\nalgorithm = %s\njwt_public_key = "
                    "k/jwt.pub\njwt_private_key = k/jwt.key\n" % algorithm)
    issued = afb("token", "issue", "--sub", "zoe", "-c", str(conf))
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    cfg = load_config(str(conf), "server")
    assert make_verifier(cfg).verify(token)["sub"] == "zoe"
    rotated = afb("keygen", "--rotate", "--dir", keydir)
    assert rotated.returncode == 0 and "(%s)" % algorithm in rotated.stdout
    assert make_verifier(cfg).verify(token)["sub"] == "zoe"
    # the config must name the same algorithm as the keys
    conf.write_text(conf.read_text().replace(algorithm, "EdDSA"))
    with pytest.raises(ConfigError, match="current key .* is %s" % algorithm):
        make_verifier(load_config(str(conf), "server"))


# --- secret files: daemons refuse group/world-readable ones ----------------------------------

def _start_refused(role, conf):
    result = afb(role, "-c", conf, timeout=30)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("name,what", [("server.key", "TLS private key"),
                                       ("jwt.key", "JWT private key")])
def test_server_refuses_readable_secret(tmp_path, name, what):
    setup = Setup(tmp_path)
    path = os.path.join(setup.dir, name)
    os.chmod(path, 0o644)
    code, output = _start_refused("server", setup.server_conf)
    assert code == 2            # refused by the start-up checks of its config
    assert "%s %s has mode 0644" % (what, path) in output and "chmod 600 %s" % path in output


def test_client_refuses_readable_token_file(tmp_path):
    setup = Setup(tmp_path)
    path = os.path.join(setup.dir, "client.token")
    os.chmod(path, 0o640)
    code, output = _start_refused("client", setup.client_conf)
    assert code == 2
    assert "token file %s has mode 0640" % path in output and "chmod 600 %s" % path in output


def test_in_process_server_refuses(tmp_path):
    from afb.apps.server import TunnelServer

    setup = Setup(tmp_path)
    os.chmod(os.path.join(setup.dir, "server.key"), 0o604)
    with pytest.raises(ConfigError, match="server.key has mode 0604"):
        TunnelServer(setup.server_cfg())


def test_running_server_sees_revocations_and_rotation(tmp_path):
    """The server's upgrade check uses the key ring and the state store of its config."""
    from afb.apps.server import TunnelServer
    from afb.keys import rotate_jwt_keys
    from afb.policy.keyring import make_signer
    from afb.state import StateStore

    setup = Setup(tmp_path)
    server = TunnelServer(setup.server_cfg())
    assert server.verifier.keyring is not None         # keygen wrote jwt-keys.json
    server.revocations.ttl = 0                         # no 2 s cache in this test

    def authorize(token):
        return server._authorize({"HTTP_AUTHORIZATION": "Bearer " + token,
                                  "REMOTE_ADDR": "127.0.0.1"})

    assert authorize(setup.token)["sub"] == "tester"
    store = StateStore(os.path.join(setup.dir, "state", "afb.sqlite3"))   # like the CLI
    store.revoke_jti(jti_of(setup.token), reason="test")
    with pytest.raises(AuthError, match=r"token revoked \(test\)"):
        authorize(setup.token)
    rotate_jwt_keys(setup.dir)                       # a new key while the server runs
    token, claims, kid = make_signer(setup.server_cfg()).issue("tester", 600)
    assert authorize(token)["jti"] == claims["jti"]
    assert server.verifier.keyring.current.kid == kid
    store.revoke_subject("tester", before_ts=time.time() + 5)
    with pytest.raises(AuthError, match="subject revoked"):
        authorize(token)
    store.close()
    server.state.close()
