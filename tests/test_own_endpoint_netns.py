"""Issue 9, item 9: the server refuses every address of its host on its listening port, and
any address of its host on other ports unless allowed; an address added later too.

Real ``afb server`` and ``afb client`` processes in a network namespace made
for this test, whose interface ``v0`` (one end of a veth pair, both ends in
the namespace) has 198.18.0.1/32, the namespace's "public" address; nothing
is routed out of it.  The server listens on 0.0.0.0.  Before, only 127/8,
::1 and the addresses of the host name were refused on the listening port:
198.18.0.1 on that port reached the server itself (a nested tunnel worked),
and its other ports were open with ``allow_private``.

The namespace's /etc/hosts maps ``self.test`` to 198.18.0.1.  The clients
run with ``fast_open = false``: the SOCKS reply code is the server's answer.
"""

import json
import os
import sys
import time

import pytest

from tests.netns import PROBE, NsDaemon, namespace_or_skip
from tests.support import ROOT, Setup, free_port, wait_until

OWN = "198.18.0.1"
ADDED = "198.18.0.2"
REFRESH = 0.3
HOSTS = "127.0.0.1 localhost\n%s self.test\n" % OWN


@pytest.fixture(scope="module")
def ns():
    yield from namespace_or_skip(HOSTS, prefix="afb-own-", commands=[
        ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
        ["ip", "addr", "add", OWN + "/32", "dev", "v0"],
        ["ip", "link", "set", "v0", "up"], ["ip", "link", "set", "v1", "up"]])


class Site:
    """Server + client (+ optionally a nested client) running inside the namespace."""

    def __init__(self, space, tmp_path, allow_private, acl=""):
        self.space = space
        self.setup = Setup(tmp_path, allow_private=allow_private, fast_open=False,
                           open_timeout=3, listen_host="0.0.0.0",
                           server_extra="own_address_refresh = %s\n%s\n" % (REFRESH, acl))
        self.echo_port = free_port()
        self.daemons = []

    def start(self, role, conf, name):
        self.daemons.append(NsDaemon(self.space, role, conf, os.path.join(self.setup.dir, name)))

    def probe(self, cases, proxy_port=None):
        args = {"echo_port": self.echo_port, "server_port": self.setup.server_port,
                "proxy_port": proxy_port or self.setup.proxy_port, "cases": cases}
        result = self.space.run([sys.executable, "-c", PROBE, json.dumps(args)], cwd=ROOT,
                                timeout=60)
        assert result.returncode == 0, "prober failed: %s\n%s" % (
            result.stderr.decode(errors="replace"), self.logs())
        return json.loads(result.stdout)["replies"]

    def logs(self):
        return "\n".join("--- %s\n%s" % (os.path.basename(d.log_path), d.output()[-4000:])
                         for d in self.daemons)

    def __enter__(self):
        self.start("server", self.setup.server_conf, "server.log")
        self.start("client", self.setup.client_conf, "client.log")
        return self

    def __exit__(self, *exc):
        for daemon in self.daemons:
            daemon.stop()


def nested_client(site):
    """A second client whose tunnel goes through the first one's proxy to OWN:port."""
    setup = site.setup
    port = free_port()
    conf = os.path.join(setup.dir, "nested.conf")
    with open(setup.client_conf) as handle:
        text = handle.read()
    text = text.replace("127.0.0.1:%d/tunnel" % setup.server_port,
                        "%s:%d/tunnel" % (OWN, setup.server_port))
    text = text.replace("listen = 127.0.0.1:%d" % setup.proxy_port,
                        "listen = 127.0.0.1:%d\nupstream_proxy = socks5://127.0.0.1:%d"
                        % (port, setup.proxy_port))
    with open(conf, "w") as handle:
        handle.write(text)
    site.start("client", conf, "nested.log")
    return port


def test_own_addresses_refused_on_the_listening_port_and_unless_allowed_elsewhere(ns, tmp_path):
    with Site(ns, tmp_path, allow_private=True) as site:
        server = site.setup.server_port
        replies = site.probe([
            ["own address, listening port", 1, OWN, server],
            ["own name, listening port", 3, "self.test", server],
            ["own address, other port", 1, OWN, site.echo_port],
            ["own name, other port", 3, "self.test", site.echo_port],
            ["loopback, listening port", 1, "127.0.0.1", server],
            ["loopback, other port (allow_private)", 1, "127.0.0.1", site.echo_port],
        ])
        assert replies == {
            "own address, listening port": 0x02, "own name, listening port": 0x02,
            "own address, other port": 0x02, "own name, other port": 0x02,
            "loopback, listening port": 0x02, "loopback, other port (allow_private)": 0x00,
        }, site.logs()
        logs = site.logs()
        assert "198.18.0.1:%d is not allowed (the server's own endpoint)" % server in logs
        assert "198.18.0.1:%d is not allowed (server's own address)" % site.echo_port in logs

        # a tunnel nested through the server into itself
        nested = nested_client(site)
        replies = site.probe([["through the nested tunnel", 1, "127.0.0.1", site.echo_port]],
                             proxy_port=nested)
        assert replies == {"through the nested tunnel": 0x01}, site.logs()
        assert "not allowed by ruleset" in site.daemons[-1].output(), site.logs()

        # an address the host gets while the server runs
        started = time.monotonic()
        ns.run(["ip", "addr", "add", ADDED + "/32", "dev", "v0"], check=True)
        assert wait_until(lambda: "this host's addresses changed (+%s)" % ADDED in site.logs(),
                          10), site.logs()
        replies = site.probe([["added address, other port", 1, ADDED, site.echo_port],
                              ["added address, listening port", 1, ADDED, server]])
        assert replies == {"added address, other port": 0x02,
                           "added address, listening port": 0x02}, site.logs()
        assert time.monotonic() - started < 10
        assert "this host's addresses changed (+%s)" % ADDED in site.logs()
        ns.run(["ip", "addr", "del", ADDED + "/32", "dev", "v0"])


def test_an_allow_rule_opens_other_ports_of_an_own_address_never_the_listening_one(ns, tmp_path):
    with Site(ns, tmp_path, allow_private=False, acl="allow_private_to = %s/32" % OWN) as site:
        server = site.setup.server_port
        replies = site.probe([
            ["own address, other port, allowed", 1, OWN, site.echo_port],
            ["own address, listening port, allowed", 1, OWN, server],
            ["own name, listening port, allowed", 3, "self.test", server],
            ["loopback, other port (no allow_private)", 1, "127.0.0.1", site.echo_port],
        ])
        assert replies == {
            "own address, other port, allowed": 0x00,
            "own address, listening port, allowed": 0x02,
            "own name, listening port, allowed": 0x02,
            "loopback, other port (no allow_private)": 0x02,
        }, site.logs()
