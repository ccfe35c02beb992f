"""LAN devices on the client (issue 13, part 4), with real ``afb server`` / ``afb client``.

Two devices are two loopback source addresses (127.0.0.2, 127.0.0.3: the
client's default ``allow_sources`` is 127.0.0.0/8); PySocks streams from
them read an endless source or echo through the tunnel.  Each test stays
under 20 s (the machine is shared).
"""

import signal
import time

import gevent

from tests.qos_support import EndlessSource, Reader, Sink, Writer, echo_rtts, percentile, socks_from
from tests.support import EchoTarget, Setup, running, wait_until
from tests.test_qos_process import _snapshot

MIB = 1024 * 1024
A, B = "127.0.0.2", "127.0.0.3"


def _rates(a, b, start, end):
    return a.rate(start, end), b.rate(start, end)


def test_device_weights_two_to_one_under_max_down_and_sighup_turns_them_round(tmp_path):
    cap = 3 * MIB // 2
    setup = Setup(tmp_path, client_extra="[qos]\nmax_down = %d\ndevice_weights = %s:2\n"
                                         % (cap, A))
    source = EndlessSource()
    try:
        with running("server", setup, tmp_path / "server.log"), \
                running("client", setup, tmp_path / "client.log") as client:
            a, b = Reader(setup.proxy_port, source.port, A), Reader(setup.proxy_port,
                                                                    source.port, B)
            start = time.monotonic()
            gevent.sleep(6)
            rate_a, rate_b = _rates(a, b, start + 2, start + 6)
            with open(setup.client_conf) as handle:
                text = handle.read().replace("device_weights = %s:2" % A,
                                             "device_weights = %s:2" % B)
            with open(setup.client_conf, "w") as handle:
                handle.write(text)
            client.proc.send_signal(signal.SIGHUP)
            changed = time.monotonic()
            gevent.sleep(5)
            after_a, after_b = _rates(a, b, changed + 1.5, changed + 5)
            snapshot = _snapshot(str(tmp_path / "client.sock"))
            a.stop()
            b.stop()
    finally:
        source.close()
    print("weights 2:1: %.0f / %.0f B/s, ratio %.2f, sum %.2f of the cap; after SIGHUP (1:2) "
          "%.0f / %.0f, ratio %.2f" % (rate_a, rate_b, rate_a / rate_b, (rate_a + rate_b) / cap,
                                       after_a, after_b, after_b / after_a))
    assert abs(rate_a / rate_b - 2.0) <= 0.15 * 2.0
    assert abs(rate_a + rate_b - cap) <= 0.15 * cap
    assert abs(after_b / after_a - 2.0) <= 0.15 * 2.0
    devices = {d["device"]: d for d in snapshot["devices"]}
    assert devices[B]["weight"] == 2.0 and devices[A]["weight"] == 1.0
    assert devices[A]["streams"] == 1 and devices[A]["throttled_down"] > 3


def test_a_priority_port_echo_stays_fast_beside_the_devices_throttled_bulk(tmp_path):
    """One device: a bulk upload (1 MB/s limit) and a bulk download (2 MB/s limit)
    keep its buckets empty; an echo to a priority port keeps its idle p99 + 5 ms,
    an echo to another port waits for the device's queue (printed, for contrast)."""
    fast, slow = EchoTarget(), EchoTarget()
    source, sink = EndlessSource(), Sink()
    setup = Setup(tmp_path, client_extra="[qos]\ndevice_rate_up = 1M\ndevice_rate_down = 2M\n"
                                         "priority_ports = %d\n" % fast.port)
    try:
        with running("server", setup, tmp_path / "server.log"), \
                running("client", setup, tmp_path / "client.log"):
            wait_until(lambda: _echo_ready(setup.proxy_port, fast.port), 20)
            quick = socks_from(A, setup.proxy_port, "127.0.0.1", fast.port)
            other = socks_from(A, setup.proxy_port, "127.0.0.1", slow.port)
            echo_rtts(quick, 20)
            echo_rtts(other, 20)
            idle = echo_rtts(quick, 150)
            down = Reader(setup.proxy_port, source.port, A)
            up = Writer(setup.proxy_port, sink.port, A)
            gevent.sleep(1.5)
            loaded = echo_rtts(quick, 250)
            plain = echo_rtts(other, 150)
            snapshot = _snapshot(str(tmp_path / "client.sock"))
            started = time.monotonic()
            gevent.sleep(2)
            rate_down = down.rate(started, started + 2)
            up.stop()
            down.stop()
            quick.close()
            other.close()
    finally:
        for target in (fast, slow, source, sink):
            target.close()
    figures = {name: (percentile(v, 0.5) * 1000, percentile(v, 0.99) * 1000)
               for name, v in (("idle", idle), ("priority", loaded), ("other", plain))}
    print("echo p50/p99 ms: " + ", ".join("%s %.2f/%.2f" % (name, *f)
                                            for name, f in figures.items())
          + "; other max %.1f ms; bulk down %.0f B/s" % (max(plain) * 1000, rate_down))
    assert figures["priority"][1] <= figures["idle"][1] + 5.0
    assert abs(rate_down - 2e6) <= 0.15 * 2e6       # the bulk still gets its rate
    device = next(d for d in snapshot["devices"] if d["device"] == A)
    assert device["priority_streams"] == 1 and device["priority_streams_total"] >= 1
    assert device["throttled_up"] > 0.5 and device["throttled_down"] > 0.5


def _echo_ready(proxy_port, port):
    try:
        sock = socks_from(None, proxy_port, "127.0.0.1", port, timeout=5)
    except OSError:
        return False
    try:
        return len(echo_rtts(sock, 1, gap=0)) == 1
    finally:
        sock.close()
