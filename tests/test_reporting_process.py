"""/metrics, usage reports and alerts of real ``afb server`` and ``afb client`` processes.

curl downloads N bytes through the client's SOCKS5 proxy; both daemons'
``/metrics`` (fetched with curl) count them, the client's alert rule with a
low threshold fires, runs ``alert_command`` (a shell script appending its
stdin to a file) and clears, and ``afb report`` shows the user's bytes
after the server stopped and again once it runs again.
"""

import json
import os
import subprocess
import sys

from gevent import subprocess as gsubprocess
from gevent.server import StreamServer
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    ROOT,
    Daemon,
    Setup,
    free_port,
    read_http_head,
    running,
    wait_log,
    wait_port,
    wait_until,
)
from tests.test_monitor_process import ask
from tests.test_startup_checks import put

BODY = 3_000_000


class BlobTarget:
    """Answers each HTTP request with BODY bytes and closes."""

    def __init__(self):
        self.received = self.sent = 0
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, sock, _address):
        data = read_http_head(sock)
        if data is None:
            return
        head = b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n"
        sock.sendall(head + b"z" * BODY)
        self.received += len(data)
        self.sent += len(head) + BODY
        sock.close()


def curl(*args):
    """Real curl, waited for cooperatively (the target runs in this process's loop)."""
    done = gsubprocess.run(["curl", "-sS", "--max-time", "60", *args], capture_output=True,
                           timeout=90)
    assert done.returncode == 0, done.stderr
    return done.stdout


def metrics(port):
    text = curl("http://127.0.0.1:%d/metrics" % port).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def report(conf, *args):
    done = subprocess.run([sys.executable, "-m", "afb", "report", "-c", conf, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_metrics_report_and_an_alert_of_real_daemons(tmp_path):
    hook = tmp_path / "hook.sh"
    hook.write_text('#!/bin/sh\ncat >> "$1"\n')
    os.chmod(hook, 0o755)
    fired = tmp_path / "alerts.jsonl"
    setup = Setup(tmp_path, client_extra="[alerts]\nmax_rate_down = 100K\nclear_after = 1\n"
                                         "alert_command = %s %s\n" % (hook, fired))
    server_metrics, client_metrics = free_port(), free_port()
    for conf, section, port in ((setup.server_conf, "server", server_metrics),
                                (setup.client_conf, "client", client_metrics)):
        put(conf, open(conf).read(), section, "metrics_listen", str(port))
    put(setup.server_conf, open(setup.server_conf).read(), "server", "report_flush", "1")
    target = BlobTarget()
    url = "http://127.0.0.1:%d/blob" % target.port
    try:
        server = Daemon("server", setup.server_conf, str(tmp_path / "server.log"))
        try:
            wait_port(setup.server_port)
            with running("client", setup, tmp_path / "client.log") as client:
                wait_log(client, "tunnel up to")
                body = curl("--socks5-hostname", "127.0.0.1:%d" % setup.proxy_port, url)
                assert len(body) == BODY
                expected = (target.received, target.sent)
                for port in (server_metrics, client_metrics):
                    got = wait_until(lambda p=port: (m := metrics(p))[
                        ("afb_bytes_total", (("direction", "down"),))] == target.sent and m, 10)
                    assert got, metrics(port)
                    assert got[("afb_bytes_total", (("direction", "up"),))] == target.received
                    assert got[("afb_streams_total", ())] == 1
                    assert got[("process_open_fds", ())] > 0
                got = metrics(server_metrics)
                assert got[("afb_info", (("role", "server"), ("version", got and
                                                              _version())))] == 1
                assert got[("afb_user_bytes_total", (("direction", "down"),
                                                     ("user", "tester")))] == target.sent
                # the client's download rate went over 100 kB/s: the alert fires, then clears
                log = wait_log(client, "alert=bandwidth_down cleared after")
                assert "alert=bandwidth_down: download " in log
                wait_until(lambda: fired.exists() and len(fired.read_text().splitlines()) == 2,
                           10)
                sent = [json.loads(line) for line in fired.read_text().splitlines()]
                assert [(a["name"], a["state"], a["role"]) for a in sent] == [
                    ("bandwidth_down", "active", "client"), ("bandwidth_down", "cleared", "client")]
                assert sent[0]["threshold"] == 100000.0 and sent[0]["value"] > 100000.0
        finally:
            assert server.stop() == 0
        rows = json.loads(report(setup.server_conf, "--format", "json", "--user", "tester"))
        assert [(r["user"], r["bytes_up"], r["bytes_down"], r["streams"]) for r in rows] == [
            ("tester", expected[0], expected[1], 1)]
        assert rows[0]["peak_streams"] == 1 and rows[0]["tunnel_seconds"] > 0
        # a new server process adds to the day and starts from its rows
        with running("server", setup, tmp_path / "server2.log"), \
                running("client", setup, tmp_path / "client2.log") as client:
            wait_log(client, "tunnel up to")
            curl("--socks5-hostname", "127.0.0.1:%d" % setup.proxy_port, url)
            assert wait_until(lambda: json.loads(report(setup.server_conf, "--format", "json"))[0][
                "bytes_down"] == target.sent, 10)
            # the snapshot's today_bytes_*: the day's rows of both runs, from the usage store
            users = ask(str(tmp_path / "server.sock"), {"cmd": "snapshot"})["users"]
            assert [(u["user"], u["today_bytes_up"], u["today_bytes_down"]) for u in users] == [
                ("tester", target.received, target.sent)]
        table = report(setup.server_conf, "--since", "today")
        # DAY USER UP DOWN STREAMS PEAK TUNNEL: two downloads of 3 MB, one at a time
        assert table.splitlines()[1].split()[1:8] == [
            "tester", str(target.received), "B", "6.0", "MB", "2", "1"]
    finally:
        target.server.stop()


def _version():
    import afb

    return afb.__version__
