"""Qos and Devices of afb.transport.shaper: limits applied, overrides, reloads (issue 13)."""

from afb.transport.devices import Devices
from afb.transport.shaper import Qos


class FakeStream:
    bytes_in = bytes_out = buffered = 0


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_defaults_overrides_and_a_reload_reach_live_users():
    clock = Clock()
    qos = Qos({"user_rate_down": 1e6}, {"alice": {"rate_down": 5e6, "rate_up": None,
                                                  "weight": None}}, clock=clock)
    alice_down, alice_up = qos.shapers_for("alice")
    bob_down, bob_up = qos.shapers_for("bob")
    assert (alice_down.rate, alice_up.rate, bob_down.rate, bob_up.rate) == (5e6, 0, 1e6, 0)
    assert alice_down.limited and not alice_up.limited
    qos.configure({"user_rate_down": 0, "user_rate_up": 2e6}, {})
    assert (alice_down.rate, alice_up.rate, bob_down.rate) == (0, 2e6, 0)
    assert not alice_down.limited and alice_up.limited


def test_the_ready_bytes_follow_the_bucket():
    clock = Clock()
    qos = Qos({"user_rate_down": 1e6, "burst": 100_000}, {}, clock=clock)
    down, _up = qos.shapers_for("alice")
    assert down.ready(256 * 1024) == 100_000
    down.spend(100_000)
    assert down.ready(256 * 1024) == 0
    clock.now += 0.0625
    assert down.ready(256 * 1024) == 62_500
    assert down.moved == 100_000


def test_a_newcomer_under_a_cap_gets_its_weighted_share_at_once():
    qos = Qos({"max_down": 3e6}, {"alice": {"rate_down": None, "rate_up": None, "weight": 2}},
              clock=Clock())
    qos.shapers_for("bob")
    alice_down, _ = qos.shapers_for("alice")
    assert alice_down.rate == 2e6
    qos.close()


def test_new_streams_a_second_per_device():
    clock = Clock()
    devices = Devices({"max_new_streams_per_second": 2, "user_rate_up": 1e6}, clock=clock)
    assert devices.limited
    assert [devices.admit("10.0.0.5") for _ in range(3)] == [True, True, False]
    assert devices.admit("10.0.0.6")
    stream = FakeStream()
    read, credit = devices.acquire("10.0.0.5", stream)
    assert read.rate == 1e6 and credit.rate == 0      # the client reads the device's upload
    devices.release("10.0.0.5", stream)
    clock.now += 0.5
    assert devices.admit("10.0.0.5") and not devices.admit("10.0.0.5")
    row = next(r for r in devices.rows() if r["device"] == "10.0.0.5")
    assert row["refused_streams"] == 2 and row["rate_limit_up"] == 1_000_000
    assert not Devices({}).limited


def test_the_server_reads_qos_again_on_reload(tmp_path):
    """SIGHUP (reload): [qos] of the file and the store's rows reach a live user; a
    file that is not valid any more changes nothing."""
    from afb.apps.server import TunnelServer
    from tests.support import Setup

    setup = Setup(tmp_path, server_extra="[qos]\nuser_rate_down = 1M\n")
    server = TunnelServer(setup.server_cfg())
    try:
        user = server.users.enter("alice")
        assert user.shape_down.rate == 1e6 and not user.shape_up.limited
        with open(setup.server_conf, "a") as handle:
            handle.write("user_rate_up = 2M\n")
        server.state.set_user_limits("alice", rate_down=5e6)
        assert server.reload_qos()
        assert (user.shape_down.rate, user.shape_up.rate) == (5e6, 2e6)
        with open(setup.server_conf, "a") as handle:
            handle.write("max_down = lots\n")
        assert not server.reload_qos()
        assert (user.shape_down.rate, user.shape_up.rate) == (5e6, 2e6)
    finally:
        server.wsgi.close()
        server.qos.close()
        server.state.close()


def test_devices_and_users_on_metrics():
    from afb.monitor.metrics import SnapshotCollector

    class Monitor:
        role = "client"

        def snapshot(self, **_kwargs):
            return {"role": self.role, "totals": {}, "tunnels": [], "errors": {}, "alerts": [],
                    "users": [{"user": "alice", "throttled_down": 2.5, "rate_limit_down": 10,
                               "queued_down": 7}],
                    "devices": [{"device": "10.0.0.5", "rate_limit_down": 1000000,
                                 "rate_limit_up": 0, "throttled_down": 1.5,
                                 "throttled_up": 0.0, "refused_streams": 3}]}

    monitor = Monitor()
    names = {}
    for family in SnapshotCollector(monitor).collect():
        for sample in family.samples:
            names[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert names[("afb_device_throttled_seconds_total",
                  (("device", "10.0.0.5"), ("direction", "down")))] == 1.5
    assert names[("afb_device_streams_refused_total", (("device", "10.0.0.5"),))] == 3
    monitor.role = "server"
    names = {}
    for family in SnapshotCollector(monitor).collect():
        for sample in family.samples:
            names[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert names[("afb_user_throttled_seconds_total",
                  (("direction", "down"), ("user", "alice")))] == 2.5
    assert names[("afb_user_rate_limit_bytes_per_second",
                  (("direction", "down"), ("user", "alice")))] == 10
    assert names[("afb_user_queued_bytes", (("direction", "down"), ("user", "alice")))] == 7
