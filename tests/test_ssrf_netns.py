"""Issue 4: the server refuses SSRF destinations, checked with real processes in a sealed namespace.

``afb server``, ``afb client``, a loopback echo target and the SOCKS5 prober
all run inside a network namespace made for this test with only ``lo`` up (no
veth, no routes).  If the destination ACL ever let 10.0.0.1 or
169.254.169.254 through, the connect would end in ENETUNREACH (SOCKS 0x03)
and no packet would leave the machine; a loopback destination let through
would reach the echo target (0x00).  Either way the expected 0x02 ("not
allowed by ruleset") can only come from the ACL.

The client runs with ``fast_open = false``, so the SOCKS reply code is the
server's answer.  ``/etc/netns/NAME/hosts`` (bind-mounted over /etc/hosts by
``ip netns exec``) maps test names to loopback and metadata addresses.
"""

import json
import os
import sys

import pytest

from tests.netns import PROBE, NsDaemon, namespace_or_skip
from tests.support import ROOT, Setup, free_port

HOSTS = """\
127.0.0.1 evil.test localhost
::1 evil6.test
169.254.169.254 metadata.test
10.0.0.1 internal.test
"""


@pytest.fixture(scope="module")
def ns():
    yield from namespace_or_skip(HOSTS)


def _setup(tmp_path):
    setup = Setup(tmp_path, allow_private=False, fast_open=False, open_timeout=5)
    echo_port = free_port()
    while echo_port in (setup.server_port, setup.proxy_port):
        echo_port = free_port()
    return setup, echo_port


def _run(space, setup, probe_args):
    """Start server + client in the namespace, run the prober there; (its JSON, daemon logs)."""
    probe_args = dict(probe_args, server_port=setup.server_port, proxy_port=setup.proxy_port)
    daemons = []
    try:
        daemons.append(NsDaemon(space, "server", setup.server_conf,
                                 os.path.join(setup.dir, "server.log")))
        daemons.append(NsDaemon(space, "client", setup.client_conf,
                                 os.path.join(setup.dir, "client.log")))
        result = space.run([sys.executable, "-c", PROBE, json.dumps(probe_args)], cwd=ROOT,
                           timeout=60)
    finally:
        for daemon in daemons:
            daemon.stop()
    logs = "\n".join("--- %s\n%s" % (os.path.basename(d.log_path), d.output()[-6000:])
                     for d in daemons)
    assert result.returncode == 0, "prober failed: %s\n%s" % (
        result.stderr.decode(errors="replace"), logs)
    return json.loads(result.stdout), logs


# (label, SOCKS ATYP, host): 1 = IPv4, 4 = IPv6, 3 = a name (IP literals as names too)
SSRF_TARGETS = [
    ("127.0.0.1", 1, "127.0.0.1"),
    ("127.0.0.1 as a name", 3, "127.0.0.1"),
    ("::1", 4, "::1"),
    ("::1 as a name", 3, "::1"),
    ("10.0.0.1", 1, "10.0.0.1"),
    ("169.254.169.254", 1, "169.254.169.254"),
    ("169.254.169.254 as a name", 3, "169.254.169.254"),
    ("[::ffff:127.0.0.1]", 4, "::ffff:127.0.0.1"),
    ("[::ffff:127.0.0.1] as a name", 3, "[::ffff:127.0.0.1]"),
    ("[::ffff:169.254.169.254]", 4, "::ffff:169.254.169.254"),
    ("evil.test -> 127.0.0.1", 3, "evil.test"),
    ("localhost", 3, "localhost"),
    ("EVIL.Test (case) -> 127.0.0.1", 3, "EVIL.Test"),
    ("evil6.test -> ::1", 3, "evil6.test"),
    ("metadata.test -> 169.254.169.254", 3, "metadata.test"),
    ("internal.test -> 10.0.0.1", 3, "internal.test"),
    ("0.0.0.0", 1, "0.0.0.0"),
    ("[::]", 4, "::"),
    ("127.1 (short form)", 3, "127.1"),
    ("2130706433 (decimal)", 3, "2130706433"),
    ("0x7f000001 (hex)", 3, "0x7f000001"),
    ("[::127.0.0.1] (IPv4-compatible)", 4, "::127.0.0.1"),
    ("[64:ff9b::a9fe:a9fe] (NAT64 of metadata)", 4, "64:ff9b::a9fe:a9fe"),
    ("[2002:7f00:1::1] (6to4 of loopback)", 4, "2002:7f00:1::1"),
    ("[fd00:ec2::254] (IPv6 metadata)", 4, "fd00:ec2::254"),
    ("[fe80::1] (link-local)", 4, "fe80::1"),
]


def test_ssrf_destinations_are_refused_inside_a_sealed_namespace(ns, tmp_path):
    setup, echo_port = _setup(tmp_path)
    # Every case asks for the port the echo target listens on (127.0.0.1 and
    # ::1), so a loopback destination let through would answer 0x00, and a
    # non-loopback one 0x03: only the ACL answers 0x02.
    cases = [[label, atyp, host, echo_port] for label, atyp, host in SSRF_TARGETS]
    cases += [["own port 127.0.0.1", 1, "127.0.0.1", setup.server_port],
              ["own port [::ffff:127.0.0.1]", 4, "::ffff:127.0.0.1", setup.server_port],
              ["own port evil.test", 3, "evil.test", setup.server_port]]
    out, logs = _run(ns, setup, {"echo_port": echo_port, "cases": cases, "direct": [
        ("10.0.0.1:80", "10.0.0.1", 80),
        ("169.254.169.254:80", "169.254.169.254", 80),
        ("[2001:db8::1]:80", "2001:db8::1", 80),
        ("127.0.0.1:echo", "127.0.0.1", echo_port),
    ]})

    # The safety net: nothing is routed out of the namespace; loopback works.
    assert out["direct"] == {"10.0.0.1:80": "ENETUNREACH",
                             "169.254.169.254:80": "ENETUNREACH",
                             "[2001:db8::1]:80": "ENETUNREACH",
                             "127.0.0.1:echo": "connected"}, out["direct"]
    assert set(out["replies"]) == {case[0] for case in cases}
    wrong = {label: code for label, code in out["replies"].items() if code != 0x02}
    assert not wrong, "not refused with SOCKS 0x02: %r\n%s" % (wrong, logs)
    assert logs.count("not allowed") >= len(cases), logs


def test_an_allow_private_to_rule_opens_one_loopback_port_only(ns, tmp_path):
    setup, echo_port = _setup(tmp_path)
    # The own endpoint is listed too: it stays refused even when allowed.
    setup.server_extra = "allow_private_to = 127.0.0.1/32:%d, 127.0.0.1/32:%d\n" % (
        echo_port, setup.server_port)
    setup.write()
    cases = [["127.0.0.1:echo", 1, "127.0.0.1", echo_port],
             ["evil.test:echo (resolves to the allowed address)", 3, "evil.test", echo_port],
             ["127.0.0.1:own port (allowed, still refused)", 1, "127.0.0.1", setup.server_port],
             ["127.0.0.1:proxy port (not in the rule)", 1, "127.0.0.1", setup.proxy_port],
             ["::1:echo (the rule is IPv4 only)", 4, "::1", echo_port],
             ["127.0.0.2:echo (outside the /32)", 1, "127.0.0.2", echo_port],
             ["10.0.0.1:echo", 1, "10.0.0.1", echo_port],
             ["169.254.169.254:echo", 1, "169.254.169.254", echo_port]]
    out, logs = _run(ns, setup, {"echo_port": echo_port, "cases": cases,
                                 "round_trip": [1, "127.0.0.1", echo_port]})

    assert out["echo"] is True, "%r\n%s" % (out["echo"], logs)
    expected = {case[0]: 0x02 for case in cases}
    expected["127.0.0.1:echo"] = 0x00
    expected["evil.test:echo (resolves to the allowed address)"] = 0x00   # allow is by address
    assert out["replies"] == expected, logs
