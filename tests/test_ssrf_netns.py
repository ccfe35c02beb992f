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
import subprocess
import sys

import pytest

from tests import netns as netns_mod
from tests.support import ROOT, Setup, free_port

HOSTS = """\
127.0.0.1 evil.test localhost
::1 evil6.test
169.254.169.254 metadata.test
10.0.0.1 internal.test
"""

# Runs inside the namespace: an optional echo target, SOCKS5 requests through
# the proxy, direct connects; prints one JSON object.
PROBE = r'''
import errno, json, socket, struct, sys, threading, time

args = json.loads(sys.argv[1])
out = {"replies": {}, "direct": {}, "echo": None}


def wait_port(port, deadline):
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("nothing listening on 127.0.0.1:%d" % port)
            time.sleep(0.05)


def echo_target(port):
    lsock = socket.socket(socket.AF_INET6)
    lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)   # 127.0.0.1 and ::1
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("::", port))
    lsock.listen(16)

    def serve(conn):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)

    def accept():
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise EOFError("closed after %d of %d bytes" % (len(buf), n))
        buf += data
    return buf


def socks_open(atyp, host, port):
    """(reply code, socket) for a SOCKS5 CONNECT through the proxy."""
    sock = socket.create_connection(("127.0.0.1", args["proxy_port"]), timeout=10)
    if atyp == 1:
        addr = b"\x01" + socket.inet_pton(socket.AF_INET, host)
    elif atyp == 4:
        addr = b"\x04" + socket.inet_pton(socket.AF_INET6, host)
    else:
        name = host.encode()
        addr = b"\x03" + bytes([len(name)]) + name
    sock.sendall(b"\x05\x01\x00" + b"\x05\x01\x00" + addr + struct.pack("!H", port))
    try:
        if recv_exact(sock, 2) != b"\x05\x00":
            raise ValueError("bad method reply")
        head = recv_exact(sock, 4)
        rest = {1: 4, 4: 16}.get(head[3])
        if rest is None:
            rest = recv_exact(sock, 1)[0]
        recv_exact(sock, rest + 2)
    except (OSError, EOFError, ValueError) as exc:
        sock.close()
        return "error: %s" % exc, None
    return head[1], sock


deadline = time.monotonic() + 15
if args.get("echo_port"):
    echo_target(args["echo_port"])
wait_port(args["server_port"], deadline)
wait_port(args["proxy_port"], deadline)

for label, atyp, host, port in args["cases"]:
    code, sock = socks_open(atyp, host, port)
    if sock is not None:
        sock.close()
    out["replies"][label] = code

if args.get("round_trip"):
    atyp, host, port = args["round_trip"]
    code, sock = socks_open(atyp, host, port)
    if sock is None or code != 0:
        out["echo"] = "reply %r" % (code,)
    else:
        payload = b"ssrf-netns " * 1000
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            got += data
        sock.close()
        out["echo"] = got == payload

for label, host, port in args.get("direct", []):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family)
    sock.settimeout(5)
    try:
        sock.connect((host, port))
        out["direct"][label] = "connected"
    except OSError as exc:
        out["direct"][label] = errno.errorcode.get(exc.errno, str(exc))
    finally:
        sock.close()

print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def ns():
    reason = netns_mod.unavailable()
    if reason:
        pytest.skip(reason)
    space = netns_mod.Netns()
    try:
        space.create()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.skip("cannot create a network namespace: %s" % exc)
    try:
        space.write_etc("hosts", HOSTS)
        yield space
    finally:
        space.destroy()


class _NsDaemon:
    """``afb server|client -c FILE`` inside the namespace, logging to a file."""

    def __init__(self, space, role, conf, log_path):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = space.popen([sys.executable, "-m", "afb", role, "-c", conf], cwd=ROOT,
                                stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def output(self):
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")


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
        daemons.append(_NsDaemon(space, "server", setup.server_conf,
                                 os.path.join(setup.dir, "server.log")))
        daemons.append(_NsDaemon(space, "client", setup.client_conf,
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


def test_an_explicit_allow_rule_opens_one_loopback_port_only(ns, tmp_path):
    setup, echo_port = _setup(tmp_path)
    # The own endpoint is listed too: it stays refused even when allowed.
    setup.server_extra = "allow = 127.0.0.1/32:%d, 127.0.0.1/32:%d\n" % (echo_port, setup.server_port)
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
