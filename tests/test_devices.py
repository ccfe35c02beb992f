"""The client's per-device rules (issue 13, part 4): parsers, weights, priority, figures.

Unit tests on the pure parsers and on :class:`~afb.transport.devices.Devices`
with a fake clock; the priority order with real gevent timers; ``afb config
check`` on bad entries as a process.
"""

import subprocess
import sys
import time

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afb.mux.rate import MIN_GRANT
from afb.policy.device_rules import (
    PriorityRules,
    device_key,
    parse_device_rates,
    parse_device_weights,
    parse_ports,
)
from afb.transport.devices import Devices, client_qos
from afb.transport.shaper import Qos, Shaper
from afb.transport.users import UserRegistry
from tests.support import ROOT
from tests.test_shaper import Clock, FakeStream


def test_weights_rates_and_ports_parse():
    assert parse_device_weights(["192.168.1.20:3", "alice:2", "[FD00::5]:0.5"]) == {
        "192.168.1.20": 3.0, "alice": 2.0, "fd00::5": 0.5}
    assert parse_device_weights("10.0.0.1:2") == {"10.0.0.1": 2}
    assert parse_device_rates(["kid:2M/500K", "10.0.0.9:0/80Mbit"]) == {
        "kid": (2e6, 5e5), "10.0.0.9": (0.0, 1e7)}
    assert parse_ports(["22", " 27000-27050 "]) == [(22, 22), (27000, 27050)]
    assert device_key("::ffff:192.168.1.20") == "192.168.1.20" and device_key("::1") == "::1"


@pytest.mark.parametrize("parse,entry,reason", [
    (parse_device_weights, "alice", "is not DEVICE:WEIGHT"),
    (parse_device_weights, "alice:0", "above 0"),
    (parse_device_weights, "alice:x", "above 0"),
    (parse_device_weights, "fd00::5:2", "in brackets"),
    (parse_device_weights, "a b:2", "neither an address"),
    (parse_device_weights, "[fd00::zz]:2", "not an IPv6 address"),
    (parse_device_rates, "kid:2M", "DOWN/UP"),
    (parse_device_rates, "kid:2M/lots", "bad rate"),
    (parse_ports, "70000", "not a port"),
    (parse_ports, "50-40", "not a port"),
])
def test_bad_entries_say_why(parse, entry, reason):
    with pytest.raises(ValueError, match=reason):
        parse([entry])


@settings(max_examples=200)
@given(st.lists(st.text(max_size=40), max_size=4))
def test_any_text_is_parsed_or_refused_with_a_value_error(entries):
    for parse in (parse_device_weights, parse_device_rates, parse_ports,
                  lambda v: PriorityRules(hosts=v)):
        try:
            parse(entries)
        except ValueError:
            pass


@settings(max_examples=100)
@given(st.dictionaries(st.one_of(st.ip_addresses(), st.from_regex(r"[a-z][a-z0-9_.-]{0,20}",
                                                                   fullmatch=True)),
                       st.integers(1, 1000), max_size=5))
def test_written_weights_read_back(weights):
    def entry(name, weight):
        text = str(name)
        if ":" in text:
            text = "[%s]" % text
        return "%s:%d" % (text, weight)
    parsed = parse_device_weights([entry(n, w) for n, w in weights.items()])
    assert parsed == {device_key(str(n)): float(w) for n, w in weights.items()}


def test_a_device_listed_twice_is_refused():
    with pytest.raises(ValueError, match="listed twice"):
        parse_device_weights(["10.0.0.1:2", "10.0.0.1:3"])


def test_priority_rules_match_ports_names_wildcards_and_networks():
    rules = PriorityRules(["22", "27000-27050"], ["*.example-game.net", "ssh.example.org",
                                                  "10.1.0.0/16:3389"])
    assert rules.matches("anything.example", 22) and rules.matches("x", 27010)
    assert rules.matches("EU.Example-Game.net.", 443)
    assert not rules.matches("example-game.net", 443)      # the wildcard is below it
    assert rules.matches("ssh.example.org", 2222)
    assert rules.matches("10.1.2.3", 3389) and not rules.matches("10.1.2.3", 80)
    assert not rules.matches("www.example.org", 443)
    assert not PriorityRules() and not PriorityRules().matches("x", 22)


def test_client_qos_reads_the_section():
    section = {"device_rate_down": 1e6, "max_down": 3e6, "device_weights": ["alice:2"],
               "device_rates": ["kid:500K/100K"], "priority_ports": ["22"],
               "priority_hosts": []}
    settings, overrides, rules = client_qos(section)
    assert settings["user_rate_down"] == 1e6 and settings["max_down"] == 3e6
    assert overrides == {"alice": {"rate_down": None, "rate_up": None, "weight": 2.0},
                         "kid": {"weight": None, "rate_down": 5e5, "rate_up": 1e5}}
    assert rules.matches("h", 22)


def test_weights_share_the_cap_and_a_reload_reaches_live_streams():
    clock = Clock()
    devices = Devices({"max_down": 3e6}, {"a": {"rate_down": None, "rate_up": None,
                                                "weight": 2}}, clock=clock)
    _, a_down = devices.acquire("a", FakeStream())
    _, b_down = devices.acquire("b", FakeStream())
    assert b_down.rate == 1e6       # a newcomer's share at once; a's follows at the next turn
    a_down.wanted_more = b_down.wanted_more = True      # both throttled, as under load
    devices.qos.share(0.2)
    assert (a_down.rate, b_down.rate) == (2e6, 1e6)
    devices.configure({"max_down": 3e6}, {"b": {"rate_down": None, "rate_up": None,
                                                "weight": 2}})
    a_down.wanted_more = b_down.wanted_more = True
    devices.qos.share(0.2)
    assert (a_down.rate, b_down.rate) == (1e6, 2e6)
    devices.configure({}, {"b": {"rate_down": 5e5, "rate_up": None, "weight": None}})
    assert (a_down.rate, b_down.rate) == (0, 5e5)
    devices.close()


def test_priority_streams_are_counted_and_figures_start_again_after_the_last_stream():
    clock = Clock()
    devices = Devices({"user_rate_down": 1e6}, priority=PriorityRules(["22"]), clock=clock)
    assert devices.limited and devices.is_priority("h", 22) and not devices.is_priority("h", 80)
    bulk, ssh = FakeStream(), FakeStream()
    ssh.bytes_in = 100
    devices.acquire("10.0.0.5", bulk)
    devices.acquire("10.0.0.5", ssh, priority=True)
    down = devices.qos.users["10.0.0.5"][0]
    down.throttled = 2.0
    row = devices.rows()[0]
    assert (row["streams"], row["priority_streams"], row["priority_streams_total"]) == (2, 1, 1)
    assert row["throttled_down"] == 2.0 and row["bytes_down"] == 100
    devices.release("10.0.0.5", ssh)
    devices.release("10.0.0.5", ssh)        # twice: counted once
    assert devices.rows()[0]["priority_streams"] == 0
    assert devices.rows()[0]["throttled_down"] == 2.0      # a stream is still open
    devices.release("10.0.0.5", bulk)
    row = devices.rows()[0]
    assert (row["streams"], row["throttled_down"], row["throttled_down_total"]) == (0, 0, 2.0)
    assert row["bytes_down"] == 100 and row["priority_streams_total"] == 1
    devices.close()


def test_only_priority_rules_make_devices_too():
    assert Devices(priority=PriorityRules(hosts=["ssh.example.org"])).limited
    assert Devices(overrides={"kid": {"rate_down": 1e6, "rate_up": 0, "weight": None}}).limited
    assert not Devices().limited


def test_a_priority_reader_goes_first_and_into_debt_where_bulk_waits():
    """Real gevent timers: the bucket emptied by bulk, a priority read still passes;
    once it too must wait, it is woken first, and sooner."""
    qos = Qos({"user_rate_down": 1e6, "burst": 64 * 1024})
    shaper = qos.shapers_for("dev")[0]
    from afb.transport.shaper import Priority

    priority = Priority(shaper)
    shaper.spend(64 * 1024)
    assert shaper.ready(MIN_GRANT) == 0
    assert priority.ready(MIN_GRANT) == MIN_GRANT
    priority.spend(64 * 1024 - MIN_GRANT // 2)     # down to -(burst - MIN_GRANT/2)
    assert priority.ready(MIN_GRANT) == 0
    order = []
    shaper.wait(lambda: order.append("bulk"))
    started = time.monotonic()
    priority.wait(lambda: order.append(("priority", time.monotonic() - started)))
    gevent.sleep(0.03)      # the priority waiter's turn: ~8 ms; bulk's ~72 ms
    print(order)
    assert order[0][0] == "priority" and order[0][1] < 0.02 and order[1] == "bulk"
    assert priority.ready(MIN_GRANT) > 0 and shaper.ready(MIN_GRANT) == 0
    assert shaper.throttled_seconds() > 0
    qos.close()


def test_a_users_figures_start_again_with_its_next_tunnel_and_its_total_goes_on():
    qos = Qos({"user_rate_down": 1e6})
    registry = UserRegistry(qos=qos)
    user = registry.enter("alice")
    user.shape_down.throttled = 3.0
    registry.leave(user)
    again = registry.enter("alice")
    assert again.shape_down.throttled_seconds() == 0
    again.shape_down.throttled = 1.0
    assert qos.throttled_totals("alice") == (4.0, 0.0)
    registry.leave(again)
    assert qos.throttled_totals("alice") == (4.0, 0.0)


def test_shaper_reset_keeps_a_spell_in_progress():
    clock = Clock()
    shaper = Shaper(clock=clock)
    shaper.throttled = 5.0
    shaper.reset_figures()
    assert shaper.throttled_now() == 0 and shaper.throttled_seconds() == 5.0


@pytest.mark.parametrize("line,reason", [
    ("device_weights = 192.168.1.20:3, alice", "'alice' is not DEVICE:WEIGHT"),
    ("device_rates = kid:2M", "give both rates"),
    ("priority_ports = 22, 99999", "'99999' is not a port"),
    ("priority_hosts = *.example-game.net, ex*ample.org", "'*' is only allowed"),
])
def test_afb_config_check_refuses_a_bad_entry_with_one_line(tmp_path, line, reason):
    conf = tmp_path / "client.conf"
    conf.write_text("[client]\nserver = wss://127.0.0.1:8443/t\ntoken = t\n[qos]\n%s\n" % line)
    conf.chmod(0o600)
    result = subprocess.run([sys.executable, "-m", "afb", "config", "check", str(conf)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    print(result.stdout, result.stderr)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    key = line.split(" =")[0]
    assert len(lines) == 1 and lines[0].startswith("%s:5: [qos] %s: " % (conf, key))
    assert reason in lines[0]


def test_device_and_user_counters_on_metrics_are_the_totals():
    from afb.monitor.metrics import SnapshotCollector

    class Monitor:
        role = "client"

        def snapshot(self, **_kwargs):
            return {"role": self.role, "totals": {}, "tunnels": [], "errors": {}, "alerts": [],
                    "users": [{"user": "alice", "throttled_down": 0.0,
                               "throttled_down_total": 7.5}],
                    "devices": [{"device": "10.0.0.5", "throttled_down": 0.0,
                                 "throttled_down_total": 1.5, "bytes_down": 900,
                                 "streams": 2, "priority_streams": 1,
                                 "priority_streams_total": 4}]}

    def samples(monitor):
        out = {}
        for family in SnapshotCollector(monitor).collect():
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    monitor = Monitor()
    found = samples(monitor)
    device = (("device", "10.0.0.5"),)
    assert found[("afb_device_throttled_seconds_total",
                  (("device", "10.0.0.5"), ("direction", "down")))] == 1.5
    assert found[("afb_device_priority_streams_open", device)] == 1
    assert found[("afb_device_priority_streams_total", device)] == 4
    assert found[("afb_device_streams_open", device)] == 2
    assert found[("afb_device_bytes_total", (("device", "10.0.0.5"), ("direction", "down")))] \
        == 900
    monitor.role = "server"
    assert samples(monitor)[("afb_user_throttled_seconds_total",
                             (("direction", "down"), ("user", "alice")))] == 7.5


def test_woken_relays_each_get_their_part_of_the_tokens():
    """Two relays wait: the first one the loop runs may take only half of what there
    is, so the other (an SSH stream beside a bulk one) gets its read too."""
    clock = Clock()
    qos = Qos({"user_rate_down": 1e6, "burst": 64 * 1024}, clock=clock)
    shaper = qos.shapers_for("dev")[0]
    shaper.spend(64 * 1024)
    got = []
    shaper.wait(lambda: got.append("bulk"))
    shaper.wait(lambda: got.append("ssh"))
    clock.now += 0.032                      # 32,000 tokens
    shaper._fire()
    assert got == ["bulk", "ssh"]
    first = shaper.ready(256 * 1024)                # the bulk relay, first
    assert abs(first - 16_000) <= 1
    shaper.spend(first)
    assert abs(shaper.ready(256 * 1024) - 16_000) <= 1     # the other still has its part
    shaper.spend(100)
    clock.now += 1.0                        # full again: no parts any more
    assert shaper.ready(256 * 1024) == 64 * 1024
    shaper.close()


def test_the_servers_snapshot_has_each_users_current_and_total_throttled_seconds():
    from afb.monitor.stats import Monitor

    qos = Qos({"user_rate_down": 1e6})
    registry = UserRegistry(qos=qos)
    monitor = Monitor("server", live_users=registry)
    user = registry.enter("alice")
    monitor.user_tally("alice")
    user.shape_down.throttled = 3.0
    registry.leave(user)
    row = monitor.snapshot()["users"][0]
    assert (row["throttled_down"], row["throttled_down_total"]) == (0.0, 3.0)
    again = registry.enter("alice")
    again.shape_down.throttled = 0.5
    row = monitor.snapshot()["users"][0]
    assert (row["throttled_down"], row["throttled_down_total"]) == (0.5, 3.5)
