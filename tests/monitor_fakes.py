"""Fixed SNAPSHOT dicts (docs/control-protocol.rst) and a stand-in Monitor, for the tests of
afb/monitor/{metrics,usage,alerts,monitoring}.py (tests only: the daemons use afb.monitor.stats)."""

import collections
import copy

SNAPSHOT = {
    "v": 1, "type": "snapshot", "time": 1796170000.5, "role": "server", "version": "0.4.0",
    "pid": 1234, "started": 1796160000.0, "uptime": 10000.5, "listen": "0.0.0.0:8443",
    "server_url": None,
    "process": {"rss": 43122688, "fds": 31, "cpu": 12.5, "cpu_percent": 3.1},
    "totals": {"tunnels": 2, "streams": 14, "streams_total": 5012, "bytes_up": 123456789,
               "bytes_down": 987654321, "rate_up": 1250.0, "rate_down": 840000.0},
    "errors": {"auth_failures": 0, "decoy_answers": 3, "acl_refusals": 1, "source_refusals": 0,
               "dns_failures": 2, "connect_timeouts": 0, "connect_refused": 1, "resets": 40,
               "limit_hits": 0, "bans": 0},
    "tunnels": [{"id": 3, "peer": "198.51.100.7:50122", "user": "alice", "state": "open",
                 "rtt": 0.0021, "reconnects": 0, "streams": 7, "cipher": "chacha20-poly1305",
                 "bytes_up": 1000, "bytes_down": 200000, "rate_up": 10.0, "rate_down": 2000.0,
                 "uptime": 512.3},
                {"id": 4, "peer": "198.51.100.8:50123", "user": "bob", "state": "open",
                 "rtt": 0.0101, "reconnects": 0, "streams": 7, "cipher": None,
                 "bytes_up": 5, "bytes_down": 7, "rate_up": 0.0, "rate_down": 0.0,
                 "uptime": 5.0}],
    "users": [{"user": "alice", "tunnels": 1, "streams": 7, "peak_streams": 31,
               "bytes_up": 1000, "bytes_down": 200000, "rate_up": 10.0, "rate_down": 2000.0,
               "today_bytes_up": 5000, "today_bytes_down": 900000},
              {"user": "bob", "tunnels": 1, "streams": 7, "peak_streams": 7,
               "bytes_up": 5, "bytes_down": 7, "rate_up": 0.0, "rate_down": 0.0,
               "today_bytes_up": 5, "today_bytes_down": 7}],
    "alerts": [],
}


def snapshot(**changes):
    """A copy of SNAPSHOT; ``totals={"rate_down": 5.0}`` updates that sub-dict, others replace."""
    out = copy.deepcopy(SNAPSHOT)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


class FakeMonitor:
    """The Monitor interface the monitoring modules use, over fixed data."""

    def __init__(self, snap=None, role="server"):
        self.snap = snap or snapshot(role=role)
        self.role = role
        self.errors = collections.Counter()
        self.alerts = []
        self.counters = {}
        self.readers = []

    def snapshot(self, reader=None):
        self.readers.append(reader)
        return dict(self.snap, alerts=list(self.alerts))

    def usage_counters(self):
        return copy.deepcopy(self.counters)
