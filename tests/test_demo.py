"""`afb demo` set-up: fixed loopback defaults, reusable files, loopback allowed only there."""

import os
import stat

from afb.apps import demo
from afb.config import check_config, load_config


def test_demo_writes_reusable_valid_configs_with_fixed_loopback_defaults(tmp_path):
    paths, pin = demo.prepare(str(tmp_path))
    assert check_config(paths["server"], "server") == []
    assert check_config(paths["client"], "client") == []
    server = load_config(paths["server"], "server")
    client = load_config(paths["client"], "client")
    assert server["server"]["listen"] == "127.0.0.1:8443" and server["server"]["tls"]
    assert client["client"]["server"] == "wss://127.0.0.1:8443/"
    assert client["client"]["listen"] == "127.0.0.1:1080"
    assert client["client"]["pin"] == pin
    assert server["acl"]["allow_private"] is True          # the demo only
    # End-to-end encryption on: the client pins the server's E2E key.
    from afb import keys
    from afb.codec import aead
    assert server["e2e"]["mode"] == "required"
    assert client["e2e"]["server_key"] == aead.public_key_b64(
        keys.load_static_key(server["e2e"]["key"]))
    mode = stat.S_IMODE(os.stat(tmp_path / "client.token").st_mode)
    assert mode == 0o600
    # A second run reuses the keys (same pin) and issues a fresh token.
    token = (tmp_path / "client.token").read_text()
    _paths, pin_again = demo.prepare(str(tmp_path))
    assert pin_again == pin
    assert load_config(paths["client"], "client")["e2e"]["server_key"] == \
        client["e2e"]["server_key"]                          # same E2E key too
    assert (tmp_path / "client.token").read_text() != token     # new jti


def test_shipped_server_config_refuses_private_destinations():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "conf", "afb-server.conf"), "server")
    assert cfg["acl"]["allow_private"] is False
