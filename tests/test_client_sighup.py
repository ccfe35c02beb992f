"""``kill -HUP`` an ``afb client`` (issue 10, item 6): config and token read again, make
before break.  Real processes on loopback."""

import os
import re
import signal

from afb.keys import write_secret
from afb.policy.auth import issue_token
from tests.support import (
    Daemon,
    free_port,
    recv_exact,
    socks_connect,
    wait_log,
    wait_port,
    wait_until,
)


def _echo(proxy, port, data=b"ping"):
    sock = socks_connect(proxy, "127.0.0.1", port, timeout=5)
    try:
        sock.sendall(data)
        return recv_exact(sock, len(data))
    finally:
        sock.close()


def _hup_and_wait(client, text):
    before = client.output().count(text)
    client.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: client.output().count(text) > before, 10, 0.02), \
        "no new %r after SIGHUP: %s" % (text, client.output()[-1500:])


def _edit(path, pattern, replacement):
    with open(path) as handle:
        text = handle.read()
    new = re.sub(pattern, replacement, text, flags=re.M)
    assert new != text
    with open(path, "w") as handle:
        handle.write(new)


def test_sighup_rereads_config_and_token_and_moves_the_tunnel_without_a_break(
        setup, echo, tmp_path):
    proxy = ("127.0.0.1", setup.proxy_port)
    first = Daemon("server", setup.server_conf, str(tmp_path / "first.log"))
    second_conf = str(tmp_path / "second.conf")
    second_port = free_port()
    with open(setup.server_conf) as handle:
        text = handle.read()
    with open(second_conf, "w") as handle:     # same keys, another port and state
        handle.write(text.replace(":%d\n" % setup.server_port, ":%d\n" % second_port)
                     .replace("state_dir = state", "state_dir = state2"))
    second = Daemon("server", second_conf, str(tmp_path / "second.log"))
    client = None
    try:
        wait_port(setup.server_port)
        wait_port(second_port)
        client = Daemon("client", setup.client_conf, str(tmp_path / "client.log"))
        wait_port(setup.proxy_port)
        wait_log(client, "tunnel up to")
        assert _echo(proxy, echo.port) == b"ping"

        # nothing changed: said so, still running (before: exit 129, no word)
        _hup_and_wait(client, "SIGHUP: config and token read again; nothing changed")
        assert client.proc.poll() is None and _echo(proxy, echo.port) == b"ping"

        # a broken config: one error line, running as before
        _edit(setup.client_conf, r"^fast_open = .*$", "fast_open = maybe")
        _hup_and_wait(client, "is not valid, nothing changed")
        assert re.search(r"ERROR afb\.apps\.client: SIGHUP: .*client\.conf is not valid, "
                         r"nothing changed: .*client\.conf:\d+: \[client\] fast_open: ",
                         client.output())
        assert _echo(proxy, echo.port) == b"ping"
        _edit(setup.client_conf, r"^fast_open = .*$", "fast_open = True")

        # another server: a stream open on the first tunnel goes on, new ones go to the second
        held = socks_connect(proxy, "127.0.0.1", echo.port, timeout=5)
        held.sendall(b"old")
        assert recv_exact(held, 3) == b"old"
        _edit(setup.client_conf, r"^server = .*$",
              "server = wss://127.0.0.1:%d/tunnel" % second_port)
        _hup_and_wait(client, "tunnel up to wss://127.0.0.1:%d/tunnel" % second_port)
        assert "SIGHUP: [client] server changed: opening a new tunnel" in client.output()
        assert _echo(proxy, echo.port, b"new") == b"new"
        wait_log(second, "tunnel open")
        held.sendall(b"still")                                # make before break
        assert recv_exact(held, 5) == b"still"
        held.close()
        wait_log(first, "closed by peer (1000 client reconfigured)")

        # a new token in the token file
        write_secret(os.path.join(setup.dir, "client.token"),
                     issue_token(setup.jwt_key, "tester", 3600) + "\n")
        _hup_and_wait(client, "SIGHUP: the token changed: opening a new tunnel")
        wait_log(second, "closed by peer (1000 client reconfigured)")
        assert _echo(proxy, echo.port) == b"ping"
        assert client.proc.poll() is None
        assert "Traceback" not in client.output()
    finally:
        if client is not None:
            client.stop()
        first.stop()
        second.stop()


def test_reload_plan_sorts_what_changed(setup):
    from afb.apps.client_reload import keep_running_values, reload_plan

    old, new = setup.client_cfg(), setup.client_cfg()
    assert reload_plan(old, new).tunnel == reload_plan(old, new).applied == []
    new["client"]["server"] = "wss://127.0.0.1:1/other"
    new["e2e"]["cipher"] = "chacha20-poly1305"
    new["client"]["listen"] = "127.0.0.1:1"
    new["tunnel"]["open_timeout"] = 3.0
    new["client"]["token_file"] = "/elsewhere"          # compared by the caller, as tokens
    plan = reload_plan(old, new)
    assert plan.tunnel == ["[client] server", "[e2e] cipher"]
    assert plan.restart == ["[client] listen"]
    assert plan.applied == ["[tunnel] open_timeout"]
    kept = keep_running_values(old, new)
    assert kept["client"]["listen"] == old["client"]["listen"]
    assert reload_plan(old, kept).restart == []
