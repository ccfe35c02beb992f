"""``[acl] allow`` lists the only destinations; ``allow_private_to`` opens private ones
(issue 10, item 3).

Real ``afb server`` and ``afb client`` processes on loopback, the client with
``fast_open = false`` so that the SOCKS5 reply code is the server's verdict:
0x00 for a destination let through (two echo targets on 127.0.0.1), 0x02
("not allowed by ruleset") for one refused.  Nothing is dialled outside
127.0.0.1: the public entries in these configs are never asked for.
"""

import subprocess
import sys

import pytest

from tests.netns import namespace_or_skip
from tests.support import ROOT, EchoTarget, Setup, running, socks_open


@pytest.fixture
def targets():
    pair = [EchoTarget(), EchoTarget()]
    yield [target.port for target in pair]
    for target in pair:
        target.close()


def replies(setup, tmp_path, ports):
    with running("server", setup, tmp_path / "server.log") as server, \
            running("client", setup, tmp_path / "client.log"):
        codes = []
        for port in ports:
            sock, code = socks_open(("127.0.0.1", setup.proxy_port), port)
            sock.close()
            codes.append(code)
    return codes, server.output()


def test_a_non_empty_allow_is_all_users_may_reach(tmp_path, targets):
    listed, other = targets
    setup = Setup(tmp_path, allow_private=True, fast_open=False,
                  server_extra="allow = 127.0.0.1:%d\n" % listed)
    codes, log = replies(setup, tmp_path, [listed, other])
    assert codes == [0x00, 0x02], log
    assert "127.0.0.1:%d is not allowed (not in [acl] allow)" % other in log


def test_allow_private_to_opens_a_private_destination_that_allow_does_not_list(tmp_path,
                                                                                targets):
    opened, other = targets
    setup = Setup(tmp_path, allow_private=False, fast_open=False,
                  server_extra="allow = example.com:443\nallow_private_to = 127.0.0.1:%d\n"
                               % opened)
    codes, log = replies(setup, tmp_path, [opened, other])
    assert codes == [0x00, 0x02], log
    assert "127.0.0.1:%d is not allowed (not in [acl] allow)" % other in log


def test_an_allow_that_only_names_private_addresses_is_refused_with_the_key_to_use(tmp_path):
    setup = Setup(tmp_path, allow_private=False, server_extra="allow = 127.0.0.1:8080\n")
    result = subprocess.run([sys.executable, "-m", "afb", "server", "-c", setup.server_conf],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    number = open(setup.server_conf).read().splitlines().index("allow = 127.0.0.1:8080") + 1
    assert line.startswith("%s:%d: [acl] allow: 127.0.0.1:8080 only names loopback addresses"
                           % (setup.server_conf, number))
    assert "move it to allow_private_to" in line


@pytest.fixture(scope="module")
def ns():
    """A namespace whose interface has a public address (nothing is routed out of it)."""
    yield from namespace_or_skip("127.0.0.1 localhost\n", prefix="afb-own-", commands=[
        ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
        ["ip", "addr", "add", "11.0.0.1/32", "dev", "v0"], ["ip", "link", "set", "v0", "up"]])


def test_an_allow_that_names_this_hosts_address_is_refused_with_the_key_to_use(ns, tmp_path):
    """allow used to open the host's own address on other ports; now it would refuse all."""
    setup = Setup(tmp_path, allow_private=False, server_extra="allow = 11.0.0.1:8080\n")
    for argv in (["config", "check", setup.server_conf], ["server", "-c", setup.server_conf]):
        result = ns.run([sys.executable, "-m", "afb", *argv], cwd=ROOT, text=True, timeout=60)
        assert result.returncode in (1, 2) and "Traceback" not in result.stderr
        [line] = (result.stdout + result.stderr).strip().splitlines()
        number = open(setup.server_conf).read().splitlines().index("allow = 11.0.0.1:8080") + 1
        assert line == ("%s:%d: [acl] allow: 11.0.0.1:8080 is an address of this host, which allow "
                        "never opens: allow now lists the only destinations users may reach; to "
                        "let users reach this host's other ports, move it to allow_private_to"
                        % (setup.server_conf, number))
