"""``afb demo`` as users run it (issue 10, item 7): its help, its banner, how fast it stops.

The demo listens on fixed ports (8443, 1080), so it runs in a network
namespace of its own (only ``lo``), where they are always free and nothing
else on this machine is disturbed; a script inside starts it with a PATH
that does not lead to the venv (as ``make demo`` does), opens one SOCKS5
stream through it and leaves it idle, then sends SIGTERM.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.netns import namespace_or_skip
from tests.support import ROOT

RUN = r'''
import json, os, signal, socket, struct, subprocess, sys, time

args = json.loads(sys.argv[1])
holder = None
if args["hold"]:                          # something else on the server's port
    holder = socket.socket()
    holder.bind(("127.0.0.1", args["hold"]))
    holder.listen()
env = dict(os.environ, PATH="/usr/bin:/bin", PYTHONPATH=args["root"])
demo = subprocess.Popen([sys.executable, "-m", "afb", "demo", "--dir", args["dir"]],
                        cwd=args["root"], env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
out, up = [], False
for line in demo.stdout:                  # ends when the demo ends
    out.append(line)
    up = "tunnel up" in line
    if up:
        break
result = {"seconds": None}
if up:
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen()
    app = socket.create_connection(("127.0.0.1", 1080), timeout=10)
    app.sendall(b"\x05\x01\x00")
    app.recv(2)
    app.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", target.getsockname()[1]))
    result["reply"] = app.recv(10)[1]
    peer, _ = target.accept()
    app.sendall(b"x")
    result["echo"] = peer.recv(1).decode()            # one idle stream, left open
    while not any("refused stream" in line for line in out):   # the banner's last line
        line = demo.stdout.readline()
        if not line:
            break
        out.append(line)
    named = [w for line in out for w in line.split() if w.endswith("client.sock")]
    if named:                                          # what `afb tui` would read
        control = socket.socket(socket.AF_UNIX)
        control.settimeout(10)
        control.connect(named[0])
        control.sendall(b'{"v": 1, "cmd": "streams"}\n')
        answer = b""
        while not answer.endswith(b"\n"):
            answer += control.recv(65536)
        result["dashboard_streams"] = json.loads(answer)["total"]
    started = time.monotonic()
    demo.send_signal(signal.SIGTERM)
    demo.wait(30)
    result["seconds"] = time.monotonic() - started
out.append(demo.stdout.read())
demo.wait(30)
result.update(status=demo.returncode, output="".join(out))
print(json.dumps(result))
'''


@pytest.fixture(scope="module")
def ns():
    yield from namespace_or_skip("127.0.0.1 localhost\n", prefix="afb-demo-")


def run_demo(ns, tmp_path, hold=0):
    args = {"root": ROOT, "dir": str(tmp_path / "demo"), "hold": hold}
    result = ns.run([sys.executable, "-c", RUN, json.dumps(args)], cwd=ROOT, timeout=90)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


def test_help_names_the_folder_the_demo_uses():
    result = subprocess.run([sys.executable, "-m", "afb", "demo", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert "(default ~/.local/share/afb/demo)" in " ".join(result.stdout.split())


def test_the_banner_commands_work_and_sigterm_stops_at_once(ns, tmp_path):
    out = run_demo(ns, tmp_path)
    assert (out["reply"], out["echo"], out["status"]) == (0, "x", 0), out["output"]
    own = os.path.join(os.path.dirname(sys.executable), "afb")      # not on that PATH
    conf = tmp_path / "demo" / "server.conf"
    if os.path.exists(own):         # the dev venv
        assert "reuse them:  %s server -c %s" % (own, conf) in out["output"]
        assert "(or first `. %s`, then plain afb)" % os.path.join(os.path.dirname(own),
                                                                  "activate") in out["output"]
        argv = [own]
    else:       # no afb script beside python3 (Debian's python3 on a source tree)
        assert "reuse them:  %s -m afb server -c %s" % (sys.executable, conf) in out["output"]
        argv = [sys.executable, "-m", "afb"]
    assert subprocess.run(argv + ["config", "check", str(conf)], capture_output=True,
                          cwd=ROOT, timeout=60).returncode == 0
    assert out["seconds"] < 1.0, out["output"]          # was 2.0: the client drained 2 s
    assert "%s tui --connect %s" % (" ".join(argv), tmp_path / "demo" / "client.sock") \
        in out["output"]
    assert out["dashboard_streams"] == 1                # the socket it names shows the stream


def test_a_port_in_use_is_one_line(ns, tmp_path):
    out = run_demo(ns, tmp_path, hold=8443)
    assert out["status"] == 1 and "Traceback" not in out["output"]
    [line] = [text for text in out["output"].splitlines() if "cannot start" in text]
    assert line.endswith("cannot start the demo: cannot listen on 127.0.0.1:8443: address "
                         "already in use (another afb server or a web server?); the demo's "
                         "ports are fixed: stop what holds it (another afb demo?)")
