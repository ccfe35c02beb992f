"""Bandwidth limits and fair shares, with real ``afb server`` / ``afb client`` processes (issue 13).

curl (or a SOCKS reader in this process) moves data through the tunnel on
loopback; the server's ``[qos]`` limits it.  Figures are over seconds, with
the margins the issue sets (the machine is shared: each test stays < 20 s).
"""

import os
import signal
import subprocess
import sys
import time

import gevent
import pytest

from tests.abuse import rss
from tests.qos_support import EndlessSource, HttpTarget, Reader, curl, second_client, wait_proxy
from tests.support import ROOT, Daemon, Setup, running, socks_open, wait_until

MIB = 1024 * 1024
pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/curl"), reason="needs curl")


def afb(*args):
    return subprocess.run([sys.executable, "-m", "afb", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


def test_one_mib_down_for_ten_seconds_and_the_server_stays_flat(tmp_path):
    setup = Setup(tmp_path, server_extra="[qos]\nuser_rate_down = %d\n" % MIB)
    target = HttpTarget()
    try:
        with running("server", setup, tmp_path / "server.log") as server, \
                running("client", setup, tmp_path / "client.log"):
            curl(setup.proxy_port, "http://127.0.0.1:%d/1000" % target.port)   # warm up
            memory = []
            job = gevent.spawn(curl, setup.proxy_port,
                               "http://127.0.0.1:%d/%d" % (target.port, 10 * MIB))
            for _ in range(9):
                gevent.sleep(1)
                memory.append(rss(server.proc.pid))
            result = job.get(timeout=30)
    finally:
        target.close()
    rate = result["size_download"] / result["time_total"]
    print("down: %.0f B/s (%.3f of 1 MiB/s); server RSS %s MiB" % (
        rate, rate / MIB, [round(m / MIB, 1) for m in memory]))
    assert result["size_download"] == 10 * MIB
    assert abs(rate - MIB) <= 0.10 * MIB
    # Throttled, the server holds nothing more: RSS flat from the second second on.
    assert max(memory[1:]) - min(memory[1:]) < 4 * MIB


def test_512_kib_up_for_ten_seconds(tmp_path):
    setup = Setup(tmp_path, server_extra="[qos]\nuser_rate_up = %d\n" % (512 * 1024))
    target = HttpTarget()
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(5 * MIB))
    try:
        with running("server", setup, tmp_path / "server.log"), \
                running("client", setup, tmp_path / "client.log"):
            curl(setup.proxy_port, "http://127.0.0.1:%d/1000" % target.port)   # warm up
            result = curl(setup.proxy_port, "http://127.0.0.1:%d/up" % target.port,
                          "-T", str(upload), "-H", "Expect:")
    finally:
        target.close()
    rate = result["size_upload"] / result["time_total"]
    print("up: %.0f B/s (%.3f of 512 KiB/s)" % (rate, rate / (512 * 1024)))
    assert result["size_upload"] == 5 * MIB
    assert abs(rate - 512 * 1024) <= 0.10 * 512 * 1024


def _two_users(tmp_path, cap, weights=None):
    """A server capped at ``cap`` down, two clients (users tester and second)."""
    setup = Setup(tmp_path, server_extra="[qos]\nmax_down = %d\n" % cap)
    for user, weight in (weights or {}).items():
        out = afb("user", "limit", user, "--weight", str(weight), "-c", setup.server_conf)
        assert out.returncode == 0, out.stderr
    conf, port = second_client(setup, "second")
    return setup, conf, port


def test_two_users_share_a_cap_and_one_takes_it_all_when_the_other_stops(tmp_path):
    cap = 2 * MIB
    setup, conf, port = _two_users(tmp_path, cap)
    source = EndlessSource()
    second = None
    try:
        with running("server", setup, tmp_path / "server.log"), \
                running("client", setup, tmp_path / "client.log"):
            second = Daemon("client", conf, str(tmp_path / "second.log"))
            wait_proxy(port)
            a, b = Reader(setup.proxy_port, source.port), Reader(port, source.port)
            start = time.monotonic()
            gevent.sleep(6)
            rate_a, rate_b = a.rate(start + 2, start + 6), b.rate(start + 2, start + 6)
            b.stop()
            stopped = time.monotonic()
            gevent.sleep(3.5)
            alone = a.rate(stopped + 1.5, stopped + 3.5)
            first_full = next((t - stopped for t in (stopped + i / 10 for i in range(5, 31))
                               if a.rate(t - 0.5, t) >= 0.85 * cap), None)
            a.stop()
    finally:
        if second is not None:
            second.stop()
        source.close()
    print("equal weights: %.0f / %.0f B/s (%.2f / %.2f of half the cap); alone %.0f (%.2f of "
          "the cap), full after %s s" % (rate_a, rate_b, rate_a / (cap / 2), rate_b / (cap / 2),
                                         alone, alone / cap, first_full))
    for rate in (rate_a, rate_b):
        assert abs(rate - cap / 2) <= 0.15 * cap / 2
    assert first_full is not None and first_full <= 2.0
    assert alone >= 0.85 * cap


def test_weights_two_to_one(tmp_path):
    cap = 3 * MIB // 2
    setup, conf, port = _two_users(tmp_path, cap, weights={"tester": 2})
    source = EndlessSource()
    second = None
    try:
        with running("server", setup, tmp_path / "server.log"), \
                running("client", setup, tmp_path / "client.log"):
            second = Daemon("client", conf, str(tmp_path / "second.log"))
            wait_proxy(port)
            a, b = Reader(setup.proxy_port, source.port), Reader(port, source.port)
            start = time.monotonic()
            gevent.sleep(6)
            rate_a, rate_b = a.rate(start + 2, start + 6), b.rate(start + 2, start + 6)
            a.stop()
            b.stop()
    finally:
        if second is not None:
            second.stop()
        source.close()
    print("weights 2:1: %.0f / %.0f B/s, ratio %.2f" % (rate_a, rate_b, rate_a / rate_b))
    assert abs(rate_a / rate_b - 2.0) <= 0.15 * 2.0
    assert abs(rate_a + rate_b - cap) <= 0.15 * cap


def test_a_limit_changed_with_sighup_applies_to_a_transfer_in_flight(tmp_path):
    setup = Setup(tmp_path, server_extra="[qos]\nuser_rate_down = %d\n" % MIB)
    source = EndlessSource()
    try:
        with running("server", setup, tmp_path / "server.log") as server, \
                running("client", setup, tmp_path / "client.log"):
            reader = Reader(setup.proxy_port, source.port)
            start = time.monotonic()
            gevent.sleep(4)
            out = afb("user", "limit", "tester", "--down", str(MIB // 2), "-c",
                      setup.server_conf)
            assert out.returncode == 0, out.stderr
            server.proc.send_signal(signal.SIGHUP)
            changed = time.monotonic()
            gevent.sleep(4.5)
            before, after = reader.rate(start + 1, start + 4), reader.rate(changed + 1,
                                                                             changed + 4.5)
            snapshot = _snapshot(str(tmp_path / "server.sock"))
            reader.stop()
    finally:
        source.close()
    print("before SIGHUP %.0f B/s, after %.0f B/s" % (before, after))
    assert abs(before - MIB) <= 0.10 * MIB
    assert abs(after - MIB / 2) <= 0.10 * MIB / 2
    user = next(u for u in snapshot["users"] if u["user"] == "tester")
    assert user["rate_limit_down"] == MIB // 2
    assert user["throttled_down"] > 5


def _snapshot(path):
    from tests.test_monitor_process import ask

    return ask(path, {"v": 1, "cmd": "snapshot"})


def test_new_streams_per_second_are_limited(tmp_path):
    """The 6th stream within a second gets SOCKS5 reply 0x01 (the client waits for
    OPEN_OK: fast_open off), is counted, and a second later streams open again."""
    setup = Setup(tmp_path, fast_open=False,
                  server_extra="[qos]\nmax_new_streams_per_second = 5\n")
    source = EndlessSource()
    proxy = ("127.0.0.1", setup.proxy_port)
    try:
        with running("server", setup, tmp_path / "server.log"), \
                running("client", setup, tmp_path / "client.log"):
            wait_until(lambda: socks_open(proxy, source.port)[1] == 0, 20)
            gevent.sleep(1.2)
            replies = []
            for _ in range(12):
                sock, reply = socks_open(proxy, source.port)
                sock.close()
                replies.append(reply)
            snapshot = _snapshot(str(tmp_path / "server.sock"))
            gevent.sleep(1.2)
            sock, again = socks_open(proxy, source.port)
            sock.close()
    finally:
        source.close()
    print(replies)
    assert replies[:5] == [0] * 5
    assert replies.count(1) >= 5
    assert snapshot["errors"]["limit_hits"] >= 5
    user = next(u for u in snapshot["users"] if u["user"] == "tester")
    assert user["refused_streams"] == replies.count(1)
    assert again == 0


def test_a_lan_device_limited_on_the_client(tmp_path):
    """[qos] on the client: 1 MB/s down per device, 3 new streams a second (HTTP 429)."""
    setup = Setup(tmp_path, fast_open=False, client_extra="[qos]\ndevice_rate_down = 1M\n"
                                                          "max_new_streams_per_second = 3\n")
    target = HttpTarget()
    try:
        with running("server", setup, tmp_path / "server.log"), \
                running("client", setup, tmp_path / "client.log"):
            wait_until(lambda: curl(setup.proxy_port, "http://127.0.0.1:%d/10" % target.port,
                                    timeout=5)["size_download"] == 10, 20)
            gevent.sleep(1.2)
            result = curl(setup.proxy_port, "http://127.0.0.1:%d/%d" % (target.port, 8_000_000))
            codes = []
            for _ in range(6):
                out = subprocess.run(
                    ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                     "--proxy", "http://127.0.0.1:%d" % setup.proxy_port,
                     "http://127.0.0.1:%d/10" % target.port],
                    capture_output=True, text=True, timeout=20)
                codes.append(out.stdout)
            snapshot = _snapshot(str(tmp_path / "client.sock"))
    finally:
        target.close()
    rate = result["size_download"] / result["time_total"]
    print("device down: %.0f B/s (%.3f of 1 MB/s); HTTP codes %s" % (rate, rate / 1e6, codes))
    assert abs(rate - 1e6) <= 0.10 * 1e6
    assert codes[:3] == ["200"] * 3 and codes.count("429") >= 2
    device = snapshot["devices"][0]
    assert device["device"] == "127.0.0.1" and device["rate_limit_down"] == 1_000_000
    assert device["throttled_down_total"] > 3 and device["refused_streams"] >= 2
    # Its streams are over: the current figure starts again (the total goes on).
    assert device["streams"] == 0 and device["throttled_down"] == 0
