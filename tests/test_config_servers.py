"""Several servers in a client config (issue 14): what ``afb config check`` accepts and
refuses, one line each, and what each server is dialled with."""

import os
import subprocess
import sys
import textwrap

from afb.apps.client_reload import reload_plan, server_names, token_place, tunnel_settings
from afb.config import check_config, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIN = "sha256//" + "A" * 43 + "="
TOKEN = "abc.def.ghi"

TWO = """\
[client]
token = {token}
pin = {pin}
strategy = lowest-rtt
[tunnel]
tunnels = 2
[servers]
[[home]]
url = wss://127.0.0.1:8443/tunnel
[[backup]]
url = wss://127.0.0.2:8443/tunnel
pin = sha256//{other}=
token_file = backup.token
server_key = {key}
"""


def write(tmp_path, text, name="client.conf"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    os.chmod(path, 0o600)
    return str(path)


def two(tmp_path, **changes):
    values = dict(token=TOKEN, pin=PIN, other="B" * 43, key="A" * 43 + "=")
    values.update(changes)
    return write(tmp_path, TWO.format(**values))


def check(path):
    """`afb config check PATH` as a user runs it: (exit status, output lines)."""
    done = subprocess.run([sys.executable, "-m", "afb", "config", "check", path], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    return done.returncode, (done.stdout + done.stderr).strip().splitlines()


def test_a_list_of_servers_loads_with_each_its_own_settings(tmp_path):
    cfg = load_config(two(tmp_path), "client")
    assert server_names(cfg) == ["home", "backup"]
    home, backup = tunnel_settings(cfg, "home"), tunnel_settings(cfg, "backup")
    assert home["url"] == "wss://127.0.0.1:8443/tunnel" and home["pin"] == PIN
    assert home["e2e_key"] is None
    assert backup["pin"] == "sha256//" + "B" * 43 + "=" and backup["e2e_key"] == "A" * 43 + "="
    assert token_place(cfg, "home") == (TOKEN, "")
    assert token_place(cfg, "backup") == ("", str(tmp_path / "backup.token"))   # resolved
    assert cfg["tunnel"]["tunnels"] == 2 and cfg["client"]["strategy"] == "lowest-rtt"


def test_the_single_server_form_is_one_server_named_server(tmp_path):
    cfg = load_config(write(tmp_path, "[client]\nserver = ws://127.0.0.1:1/t\ntoken = x\n"),
                      "client")
    assert server_names(cfg) == ["server"]
    assert tunnel_settings(cfg)["url"] == "ws://127.0.0.1:1/t"
    assert cfg["tunnel"]["tunnels"] == 1 and cfg["client"]["return_to_preferred"] is True


def test_bad_lists_are_refused_with_one_line_each(tmp_path):
    base = two(tmp_path)
    text = open(base).read()
    cases = {
        "duplicate": (text + "[[home]]\nurl = ws://127.0.0.1:1/\n",
                      ":15: Duplicate section name"),
        "no url": (text.replace("url = wss://127.0.0.2:8443/tunnel\n", ""),
                   ":10: [servers][backup] url: missing required value"),
        "tunnels 0": (text.replace("tunnels = 2", "tunnels = 0"),
                      ':6: [tunnel] tunnels: value "0" is too small (min 1)'),
        "both forms": (text.replace("[client]\n", "[client]\nserver = ws://127.0.0.1:1/\n"),
                       ":2: [client] server: set either this or the servers of [servers] "
                       "(home, backup), not both"),
        "two tokens": (text.replace("token_file = backup.token",
                                    "token_file = backup.token\ntoken = x.y.z"),
                       ":14: [servers][backup] token: set at most one of token and token_file"),
    }
    for name, (body, expected) in cases.items():
        path = write(tmp_path, body, name.replace(" ", "-") + ".conf")
        status, lines = check(path)
        assert status != 0 and len(lines) == 1, (name, lines)
        assert lines[0].startswith(path + expected), (name, lines[0])


def test_a_server_without_a_token_needs_the_clients(tmp_path):
    path = two(tmp_path, token="")
    lines = check_config(path, "client")
    assert lines == ["%s:1: [client] token_file: set exactly one of token and token_file"
                     % path]


def test_each_servers_files_are_checked(tmp_path):
    path = two(tmp_path)
    lines = check_config(path, "client")
    assert len(lines) == 1 and "[servers][backup] token_file: %s does not exist; put the " \
        "user's token there" % (tmp_path / "backup.token") in lines[0], lines
    assert lines[0].startswith(path + ":13: ")


def test_sighup_plan_names_changed_added_and_removed_servers(tmp_path):
    old = load_config(two(tmp_path), "client")
    new = load_config(two(tmp_path, other="C" * 43), "client")
    assert reload_plan(old, new).tunnel == ["[servers] backup"]
    del new["servers"]["home"]
    new["servers"]["third"] = {"url": "ws://127.0.0.1:1/"}
    assert reload_plan(old, new).tunnel == ["[servers] backup", "[servers] third",
                                            "[servers] home (no longer listed)"]
    new["tunnel"]["tunnels"] = 4
    assert "[tunnel] tunnels" in reload_plan(old, new).applied
