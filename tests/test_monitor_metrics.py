"""/metrics (afb/monitor/metrics.py): the collector's families, parsed back, and the server."""

import socket
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from afb.errors import AfbError
from afb.monitor.metrics import MetricsServer, SnapshotCollector, make_registry
from tests.monitor_fakes import FakeMonitor, snapshot
from tests.support import free_port


def scrape(monitor, **kwargs):
    """{(name, labels as a sorted tuple): value} of one scrape, parsed back."""
    text = generate_latest(make_registry(monitor, process=False, **kwargs)).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_server_snapshot_as_metrics():
    monitor = FakeMonitor()
    monitor.alerts = [{"name": "bandwidth_down", "since": 1.0, "subject": None, "value": 2.0,
                       "threshold": 1.0, "message": "m"}]
    got = scrape(monitor)
    assert monitor.readers == ["metrics"]
    assert got[("afb_info", (("role", "server"), ("version", "0.4.0")))] == 1
    assert got[("afb_streams_open", ())] == 14
    assert got[("afb_streams_total", ())] == 5012
    assert got[("afb_tunnels_open", ())] == 2
    assert got[("afb_bytes_total", (("direction", "up"),))] == 123456789
    assert got[("afb_bytes_total", (("direction", "down"),))] == 987654321
    assert got[("afb_user_bytes_total", (("direction", "down"), ("user", "alice")))] == 200000
    assert got[("afb_user_streams_open", (("user", "bob"),))] == 7
    assert got[("afb_errors_total", (("kind", "resets"),))] == 40
    assert got[("afb_errors_total", (("kind", "bans"),))] == 0
    assert got[("afb_tunnel_rtt_seconds", (("stat", "min"),))] == 0.0021
    assert got[("afb_tunnel_rtt_seconds", (("stat", "max"),))] == 0.0101
    assert got[("afb_alerts_active", (("name", "bandwidth_down"),))] == 1
    assert got[("afb_alerts_active", (("name", "rss"),))] == 0
    assert not [key for key in got if key[0] == "afb_user_bytes_total"
                and ("user", "_other") in key[1]]


def test_user_labels_are_capped():
    users = [{"user": "u%04d" % i, "tunnels": 1, "streams": 1, "bytes_up": i, "bytes_down": 10 * i}
             for i in range(1000)]
    got = scrape(FakeMonitor(snapshot(users=users)), top_users=50)
    named = {dict(labels)["user"] for name, labels in got if name == "afb_user_bytes_total"}
    assert len(named) == 51 and "_other" in named and "u0999" in named and "u0949" not in named
    assert got[("afb_user_bytes_total", (("direction", "down"), ("user", "_other")))] == \
        10 * sum(range(950))
    assert got[("afb_user_streams_open", (("user", "_other"),))] == 950


def test_client_has_no_user_series_and_keeps_its_reconnects():
    monitor = FakeMonitor(snapshot(role="client", users=[], tunnels=[
        {"id": 9, "state": "open", "rtt": 0.05, "reconnects": 3}]), role="client")
    collector = SnapshotCollector(monitor)
    got = scrape(monitor)
    assert got[("afb_reconnects_total", ())] == 3
    assert not [key for key in got if key[0].startswith("afb_user")]

    def reconnects(snap):
        family = [f for f in collector.families(snap) if f.name == "afb_reconnects"][0]
        return family.samples[0].value

    assert reconnects(monitor.snap) == 3
    assert reconnects(snapshot(role="client", tunnels=[])) == 3    # down: the counter stays


def test_metrics_server_serves_metrics_and_nothing_else():
    port = free_port()
    server = MetricsServer(FakeMonitor(), ("127.0.0.1", port))
    server.start()
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as answer:
            text = answer.read().decode()
        assert "afb_bytes_total{direction=\"down\"} 9.87654321e+08" in text
        assert "process_open_fds" in text and "process_resident_memory_bytes" in text
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=5)
        assert info.value.code == 404
    finally:
        server.stop()


def test_a_busy_port_is_one_line():
    from afb.monitor.reporting import Reporting

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]

    class App:
        monitor = FakeMonitor(role="client")

    cfg = {"client": {"metrics_listen": str(port)},
           "alerts": {"alert_command": "", "alert_command_timeout": 1.0}}
    try:
        with pytest.raises(AfbError) as info:
            Reporting(App(), cfg, "client")
    finally:
        holder.close()
    assert str(info.value) == (
        "cannot listen on 127.0.0.1:%d: address already in use (another afb client or a web "
        "server?); stop it or change [client] metrics_listen" % port)


def test_the_node_is_an_info_metric_and_draining_a_gauge():
    monitor = FakeMonitor(snapshot(node="vps-2", draining=True))
    got = scrape(monitor)
    assert got[("afb_node_info", (("node", "vps-2"),))] == 1
    assert got[("afb_draining", ())] == 1
    assert ("afb_draining", ()) not in scrape(FakeMonitor(role="client"))


def test_health_says_ok_while_accepting_and_503_while_draining():
    """HAProxy's check (option httpchk GET /health, check port): on the metrics
    listener only, so the tunnel port's decoy gives nothing away."""
    port = free_port()
    monitor = FakeMonitor()
    server = MetricsServer(monitor, ("127.0.0.1", port))
    server.start()
    url = "http://127.0.0.1:%d/health" % port
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            assert (answer.status, answer.read()) == (200, b"ok\n")
        monitor.draining = True
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url, timeout=5)
        assert info.value.code == 503 and info.value.read() == b"draining\n"
    finally:
        server.stop()


def test_udp_counters_are_exported():
    monitor = FakeMonitor()
    monitor.snap["udp"] = {"datagrams_up": 12, "datagrams_down": 10, "dropped_fragment": 2,
                           "dropped_acl": 1, "send_errors": 3, "associations": 4}
    got = scrape(monitor)
    assert got[("afb_udp_datagrams_total", (("direction", "up"),))] == 12
    assert got[("afb_udp_datagrams_total", (("direction", "down"),))] == 10
    assert got[("afb_udp_dropped_total", (("reason", "fragment"),))] == 2
    assert got[("afb_udp_dropped_total", (("reason", "acl"),))] == 1
    assert got[("afb_udp_dropped_total", (("reason", "queue_full"),))] == 0
    assert got[("afb_udp_send_errors_total", ())] == 3
    assert got[("afb_udp_associations_total", ())] == 4
