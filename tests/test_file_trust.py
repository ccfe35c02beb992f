"""Issue 9, item 8: key rings, public keys, key folders, users files and inline tokens
that other users could change (or read) are refused, by the daemons and by `afb config check`.

The attack of the issue, for real: a running server whose ``jwt-keys.json`` is
writable by others; "another user" adds their own key (a public key outside
the key folder) and upgrades with a token signed by it.
"""

import json
import logging
import os
import subprocess
import sys

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from afb.config import check_config
from afb.errors import AuthError, ConfigError
from afb.file_trust import check_trusted_file
from afb.keys import KEYRING_FILE, key_id, make_jwt_keys, read_keyring, write_keyring
from afb.policy.keyring import KeyRing
from tests.support import ROOT, Setup

NOBODY = 65534


def afb(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "afb", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def inject_key(index, directory):
    """What the local attacker does: a key pair of their own, its public half in
    ``directory``, named by a new (retired, in grace) entry of the ring."""
    private, public = make_jwt_keys()
    pub_path = os.path.join(directory, "evil.pub")
    with open(pub_path, "wb") as handle:
        handle.write(public)
    kid = key_id(serialization.load_pem_public_key(public))
    entries = read_keyring(index)
    entries.append(dict(kid=kid, alg="EdDSA", created=0, retired_at=4000000000, grace=None,
                        public=pub_path))
    with open(index, "w") as handle:          # in place: the file keeps its mode
        handle.write(json.dumps({"format": 1, "keys": entries}))
    return serialization.load_pem_private_key(private, None), kid


def forged_token(key, kid):
    import time

    now = int(time.time())
    claims = {"sub": "mallory", "aud": "afb", "iss": "afb", "iat": now, "nbf": now,
              "exp": now + 600, "jti": os.urandom(8).hex()}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


def test_running_server_refuses_a_key_injected_into_a_writable_ring(tmp_path, caplog):
    """Before: the server reloaded the 0666 ring and let mallory in (101)."""
    from afb.apps.server import TunnelServer
    from afb.transport import wsclient

    setup = Setup(tmp_path, e2e=False)
    index = os.path.join(setup.dir, KEYRING_FILE)
    server = TunnelServer(setup.server_cfg())
    server.start()
    try:
        os.chmod(index, 0o666)                 # the mistake
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        key, kid = inject_key(index, str(outside))
        with caplog.at_level(logging.ERROR, logger="afb.policy.keyring"):
            for _ in range(3):                 # each unknown kid forces a reload (<= 1/s)
                with pytest.raises(AuthError, match="refused the WebSocket upgrade"):
                    wsclient.connect(setup.url, headers={
                        "Authorization": "Bearer " + forged_token(key, kid)},
                        pin=setup.pin, timeout=5)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == ["keeping the loaded JWT keys: JWT key ring %s has mode 0666: group or "
                          "others can write it; fix: chmod go-w %s" % (index, index)]
        # the real user still gets in with the keys loaded before
        ws = wsclient.connect(setup.url, headers={"Authorization": "Bearer " + setup.token},
                              pin=setup.pin, timeout=5)
        ws.close()
    finally:
        server.stop(timeout=0)


def test_ring_entries_name_plain_files_in_the_key_folder(tmp_path):
    setup = Setup(tmp_path)
    index = os.path.join(setup.dir, KEYRING_FILE)
    [entry] = read_keyring(index)
    for bad in ("/etc/ssl/evil.pub", "../evil.pub", "keys/jwt.pub", ".."):
        write_keyring(index, [dict(entry, public=bad)])
        with pytest.raises(ValueError) as info:
            read_keyring(index)
        assert str(info.value) == ("%s: key %s: public file %r must be a plain file name in the "
                                   "key folder (no '/', no '..')" % (index, entry["kid"], bad))
    write_keyring(index, [dict(entry, public="/tmp/x.pub")])
    result = afb("server", "-c", setup.server_conf, timeout=30)
    assert result.returncode == 2           # refused by the start-up checks of its config
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "must be a plain file name" in lines[0] and entry["kid"] in lines[0]
    [error] = check_config(setup.server_conf)
    assert "[auth] keyring: JWT key ring" in error and entry["kid"] in error


# (what is changed, how, the start of the refusal after the path)
UNTRUSTED = [
    ("jwt-keys.json", 0o664, "JWT key ring", "has mode 0664: group or others can write it; "
                                            "fix: chmod go-w"),
    ("jwt.pub", 0o646, "JWT public key", "has mode 0646: group or others can write it"),
    (".", 0o770, "JWT key ring", "its folder"),
]


@pytest.mark.parametrize("name,mode,what,problem", UNTRUSTED, ids=[u[0] for u in UNTRUSTED])
def test_server_and_config_check_refuse_writable_trust_anchors(tmp_path, name, mode, what,
                                                               problem):
    setup = Setup(tmp_path)
    os.chmod(os.path.join(setup.dir, name), mode)
    result = afb("server", "-c", setup.server_conf, timeout=30)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2 and len(output.splitlines()) == 1, output
    assert what in output and problem in output and "Traceback" not in output
    [error] = check_config(setup.server_conf)
    assert what in error and problem in error
    os.chmod(os.path.join(setup.dir, name), 0o700 if name == "." else 0o644)
    assert check_config(setup.server_conf) == []


def test_single_key_mode_public_key_and_owner(tmp_path):
    setup = Setup(tmp_path)
    os.unlink(os.path.join(setup.dir, KEYRING_FILE))          # single-key mode
    pub = os.path.join(setup.dir, "jwt.pub")
    os.chmod(pub, 0o666)
    [error] = check_config(setup.server_conf)
    assert error.endswith("JWT public key ([auth] jwt_public_key) %s has mode 0666: group or "
                          "others can write it; fix: chmod go-w %s" % (pub, pub))
    os.chmod(pub, 0o644)
    os.chown(pub, NOBODY, NOBODY)
    [error] = check_config(setup.server_conf)
    assert "%s is owned by nobody, not by root; fix: chown root %s" % (pub, pub) in error
    with pytest.raises(ConfigError, match="is owned by nobody"):
        from afb.apps.server import TunnelServer
        TunnelServer(setup.server_cfg())


def test_folders_above(tmp_path):
    top = tmp_path / "open"
    keys = top / "keys"
    keys.mkdir(parents=True)
    path = keys / "ring.json"
    path.write_text("{}")
    os.chmod(top, 0o777)
    with pytest.raises(ConfigError) as info:
        check_trusted_file(str(path), "JWT key ring")
    assert str(info.value) == ("JWT key ring %s: folder %s has mode 0777: anyone can replace what "
                               "is inside it; fix: chmod o-w %s" % (path, top, top))
    os.chmod(top, 0o1777)                      # sticky, like /tmp: others cannot rename keys/
    check_trusted_file(str(path), "JWT key ring")
    os.chmod(top, 0o775)                       # group-writable further up: let through
    check_trusted_file(str(path), "JWT key ring")
    os.chown(keys, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match="its folder %s is owned by nobody" % keys):
        check_trusted_file(str(path), "JWT key ring")


def test_symlink_target_folder_checked_too(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "ring.json").write_text("{}")
    os.chmod(real, 0o777)
    safe = tmp_path / "safe"
    safe.mkdir()
    os.symlink(real / "ring.json", safe / "ring.json")
    with pytest.raises(ConfigError, match="its folder %s has mode 0777" % real):
        check_trusted_file(str(safe / "ring.json"), "JWT key ring")


def test_symlink_into_a_folder_above_gets_the_strict_check(tmp_path):
    """keys/ring.json -> ../ring.json: the folder above is the real file's own folder."""
    top = tmp_path / "top"
    (top / "keys").mkdir(parents=True)
    (top / "ring.json").write_text("{}")
    os.chmod(top, 0o775)                      # fine above a file, not as its own folder
    os.symlink("../ring.json", top / "keys" / "ring.json")
    with pytest.raises(ConfigError, match="its folder %s has mode 0775" % top):
        check_trusted_file(str(top / "keys" / "ring.json"), "JWT key ring")


def test_a_failed_reload_logs_once_per_change(tmp_path, caplog):
    setup = Setup(tmp_path)
    index = os.path.join(setup.dir, KEYRING_FILE)
    ring = KeyRing(index, reload_interval=0)
    kid = ring.kid
    os.chmod(index, 0o666)
    with caplog.at_level(logging.ERROR, logger="afb.policy.keyring"):
        for _ in range(5):
            assert ring.reload_if_changed() is False
        assert ring.kid == kid
        os.chmod(index, 0o600)
        assert ring.reload_if_changed() is True      # trusted again: loaded
    assert [r.getMessage() for r in caplog.records] == [
        "keeping the loaded JWT keys: JWT key ring %s has mode 0666: group or others can write "
        "it; fix: chmod go-w %s" % (index, index)]


def _client_refusal(setup):
    result = afb("client", "-c", setup.client_conf, timeout=30)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2 and len(output.splitlines()) == 1 and "Traceback" not in output
    return output


def test_client_refuses_a_readable_users_file(tmp_path):
    setup = Setup(tmp_path)
    users = tmp_path / "users"
    users.write_text("alice:s3cret\n")
    os.chmod(users, 0o644)
    text = open(setup.client_conf).read().replace("log_level = debug\n",
                                                  "log_level = debug\nusers_file = users\n")
    with open(setup.client_conf, "w") as handle:
        handle.write(text)
    expected = ("users file %s has mode 0644: group or others can access it; fix: chmod 600 %s"
                % (users, users))
    assert _client_refusal(setup).endswith(expected)
    assert check_config(setup.client_conf)[0].endswith("[client] users_file: " + expected)
    os.chmod(users, 0o600)
    assert check_config(setup.client_conf) == []


def test_client_refuses_a_readable_config_holding_the_token(tmp_path):
    setup = Setup(tmp_path)
    text = open(setup.client_conf).read().replace("token_file = client.token",
                                                  "token = %s" % setup.token)
    with open(setup.client_conf, "w") as handle:
        handle.write(text)
    os.chmod(setup.client_conf, 0o644)
    expected = ("client config %s holds the token inline ([client] token) and has mode 0644: "
                "group or others can read it; fix: use token_file, or chmod 600 %s"
                % (setup.client_conf, setup.client_conf))
    assert _client_refusal(setup).endswith(expected)
    [error] = check_config(setup.client_conf)
    assert error == "%s:4: [client] token: %s" % (setup.client_conf, expected)
    os.chmod(setup.client_conf, 0o600)
    assert check_config(setup.client_conf) == []


def test_client_refuses_a_writable_ca_file(tmp_path):
    setup = Setup(tmp_path)
    ca = tmp_path / "ca.pem"
    ca.write_text(open(os.path.join(setup.dir, "server.crt")).read())
    os.chmod(ca, 0o666)
    text = open(setup.client_conf).read().replace("log_level = debug\n",
                                                  "log_level = debug\nca_file = ca.pem\n")
    with open(setup.client_conf, "w") as handle:
        handle.write(text)
    assert "CA file %s has mode 0666: group or others can write it" % ca in _client_refusal(setup)


def test_what_afb_writes_passes(tmp_path):
    """afb keygen, afb demo's folder and the test set-ups pass the checks."""
    from afb.apps.demo import prepare

    result = afb("keygen", "--dir", str(tmp_path / "keys"))
    assert result.returncode == 0, result.stderr
    assert afb("keygen", "--rotate", "--dir", str(tmp_path / "keys")).returncode == 0
    ring = KeyRing(str(tmp_path / "keys" / KEYRING_FILE), check_secrets=True)
    assert len(ring.keys) == 2
    paths, _pin = prepare(str(tmp_path / "demo"))
    assert check_config(paths["server"]) == [] and check_config(paths["client"]) == []
    setup = Setup(tmp_path / "setup")
    assert check_config(setup.server_conf) == [] and check_config(setup.client_conf) == []


def test_forged_entry_refused_at_start(tmp_path):
    """A ring that already names an outside key when the server starts: refused, one line."""
    setup = Setup(tmp_path)
    index = os.path.join(setup.dir, KEYRING_FILE)
    outside = tmp_path / "x"
    outside.mkdir()
    inject_key(index, str(outside))
    with pytest.raises(ConfigError, match="must be a plain file name"):
        KeyRing(index)
