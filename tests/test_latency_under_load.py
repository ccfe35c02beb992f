"""Latency under load (issue 13): an echo stream beside a full-speed download, same tunnel.

Real processes (tests/latency_load.py): on loopback, and across a veth pair
between two namespaces this test makes, shaped to 20 Mbit/s (netem with 20 ms
each way where the kernel has netem; otherwise HTB at the same rate, no delay).

On the link afb's writer paces (afb/transport/frame_writer.py): measured
(bench/latency_under_load, two runs, HTB, no netem here) loaded p99 +13 ms
over idle at 2.36-2.37 MB/s (95 % of the link), against +112-117 ms for the
code before issue 13 part 3, +15-58 ms for trojan and +16-19 ms for v2ray
wss (one TCP connection per stream: they share only the link's queue).
"""

import subprocess

import pytest

from tests.latency_load import Rig, summary, tools_missing

LINK_RATE = 20e6 / 8          # bytes a second


def _figures(result):
    s = summary(result)
    return "idle p50 %.1f p99 %.1f ms, loaded p50 %.1f p99 %.1f ms, download %.2f MB/s" % (
        s["idle_p50"], s["idle_p99"], s["loaded_p50"], s["loaded_p99"], s["rate"] / 1e6)


@pytest.mark.timeout(90)
@pytest.mark.xfail(strict=False, reason="on a shared 2-core machine the loaded p99 is +15-28 ms "
                   "for every tunnel, trojan (+27-28) and v2ray wss (+16-19) too: five "
                   "processes are CPU-bound beside a 270-360 MB/s download "
                   "(bench/latency_under_load)")
def test_echo_p99_beside_a_bulk_download_on_loopback(tmp_path):
    with Rig(tmp_path) as rig:
        result = rig.measure(samples=400, interval=0.005, warmup=1.0)
    s = summary(result)
    assert s["loaded_p99"] <= s["idle_p99"] + 5.0, _figures(result)


@pytest.mark.timeout(120)
def test_echo_p99_beside_a_bulk_download_on_a_slow_link(tmp_path):
    reason = tools_missing(netem=True)
    if reason:
        pytest.skip(reason)
    try:
        rig = Rig(tmp_path, netem=("20mbit", "20ms")).__enter__()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.skip("cannot make the shaped link: %s" % exc)
    try:
        result = rig.measure(samples=150, interval=0.01, warmup=2.0)
    finally:
        rig.close()
    s = summary(result)
    assert s["loaded_p99"] <= s["idle_p99"] + 40.0, _figures(result) + " " + rig.shaper
    assert s["rate"] >= 0.9 * LINK_RATE, _figures(result) + " " + rig.shaper
