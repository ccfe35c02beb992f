"""Prometheus ``/metrics`` (``metrics_listen``): the daemon's snapshot, read at scrape time.

prometheus-client renders the page; :class:`SnapshotCollector` is a custom
collector that turns one ``monitor.snapshot(reader="metrics")`` into metric
families when Prometheus asks, so the data path carries nothing for it (no
client-library counter is bumped per byte: the stats model's plain integer
adds are all there is).  ``reader="metrics"`` keeps the scrapes' own rate
baseline, apart from the dashboard's and the alerts'.  prometheus-client's
ProcessCollector adds the usual ``process_*`` figures (memory, descriptors,
CPU) from /proc.

Names follow the Prometheus conventions: counters end in ``_total``, units
in the name (``_bytes``, ``_seconds``).  Label cardinality is bounded: the
per-user series exist on the server only, for the :data:`TOP_USERS` users
with the most bytes; the rest are summed under ``user="_other"`` (a user
moving into the top list makes ``_other`` drop, which ``rate()`` takes for a
counter reset: close enough for a chart, and Prometheus' memory stays
bounded whatever the number of users).  RTT is given as min / median / max
over the open tunnels (``stat`` label), not per tunnel: a server may hold
thousands.

The node (``[server] node_id``, by default the host name) is an info
metric of its own, ``afb_node_info{node="..."} 1``, not a label on every
series nor on ``afb_info``: adding a label to a series changes its
identity, which would break the queries and alerts already written against
``afb_info``; an info metric joins in where wanted (``* on(instance)
group_left(node) afb_node_info``), as Prometheus' own ``*_info`` do.

The page is served by gevent's WSGIServer (the daemons are one gevent
loop; prometheus-client's own server would need a thread), on 127.0.0.1
when ``metrics_listen`` is a bare port.  ``/metrics`` answers, and
``/health`` for a load balancer's checks (HAProxy ``option httpchk`` with
``check port``): 200 ``ok`` while the daemon takes new tunnels, 503
``draining`` once a server's SIGTERM has closed its listener, so HAProxy
sends new tunnels elsewhere while the old ones drain.  It lives here and
not on the tunnel port because there any request without a token must get
the decoy site: a health page would tell a prober what runs behind it.
Any other path is a 404.  The socket is bound when :class:`MetricsServer` is
made, so a busy port stops the daemon at start with one line.

Measured (bench/monitoring, a 2-core VM): with 1,000 users, a scrape takes
2.6 ms of the loop (median; p99 3.0 ms): the Monitor's snapshot 1.3 ms, the
collector and prometheus-client's rendering of the 14 KB page 1.2 ms (the
50-user cap keeps the page small); a whole scrape with curl, curl's start-up
included, 7.5 ms.
"""

import logging
import statistics

from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from afb.monitor.alerts import RULE_NAMES
from afb.monitor.counters import ERROR_KINDS, UDP_KINDS

log = logging.getLogger(__name__)
#: Users with series of their own; the others are summed as user="_other".
TOP_USERS = 50
OTHER = "_other"


class SnapshotCollector:
    """A prometheus-client collector over ``monitor.snapshot(reader="metrics")``."""

    def __init__(self, monitor, top_users=TOP_USERS):
        self.monitor = monitor
        self.top_users = top_users
        self._reconnects = 0        # the largest seen: tunnels come and go, the counter not

    def collect(self):
        snapshot = self.monitor.snapshot(reader="metrics")
        return self.families(snapshot)

    def families(self, snapshot):
        """The metric families of one snapshot (a list, for tests)."""
        role = snapshot.get("role", "?")
        totals = snapshot.get("totals") or {}
        out = []
        info = GaugeMetricFamily("afb_info", "afb daemon; the value is always 1",
                                 labels=["role", "version"])
        info.add_metric([role, str(snapshot.get("version", ""))], 1)
        out.append(info)
        node = GaugeMetricFamily("afb_node_info", "The node this daemon is ([server] "
                                 "node_id, or the host name); the value is always 1",
                                 labels=["node"])
        node.add_metric([str(snapshot.get("node", ""))], 1)
        out.append(node)
        if role == "server":
            out.append(_gauge("afb_draining", "1 once the server stopped taking new tunnels "
                              "(SIGTERM: draining), else 0", int(bool(snapshot.get("draining")))))
        out.append(_gauge("afb_tunnels_open", "Tunnels (WebSockets) open now",
                          totals.get("tunnels", 0)))
        out.append(_gauge("afb_streams_open", "Streams open now", totals.get("streams", 0)))
        out.append(_counter("afb_streams_total", "Streams opened since the start",
                            totals.get("streams_total", 0)))
        traffic = CounterMetricFamily(
            "afb_bytes_total", "Bytes carried since the start; up: from the apps to the "
            "destinations", labels=["direction"])
        traffic.add_metric(["up"], totals.get("bytes_up", 0))
        traffic.add_metric(["down"], totals.get("bytes_down", 0))
        out.append(traffic)
        out.extend(self._tunnels(snapshot.get("tunnels") or ()))
        if role == "server":
            out.extend(self._users(snapshot.get("users") or ()))
        if snapshot.get("devices"):
            out.extend(self._devices(snapshot["devices"]))
        errors = CounterMetricFamily("afb_errors_total", "Errors since the start, by kind",
                                     labels=["kind"])
        found = snapshot.get("errors") or {}
        for kind in sorted(set(ERROR_KINDS) | set(found)):
            errors.add_metric([kind], found.get(kind, 0))
        out.append(errors)
        out.extend(_udp(snapshot.get("udp") or {}))
        alerts = GaugeMetricFamily("afb_alerts_active", "Alerts active now ([alerts] rules)",
                                   labels=["name"])
        active = {}
        for alert in snapshot.get("alerts") or ():
            active[alert["name"]] = active.get(alert["name"], 0) + 1
        for name in sorted(set(RULE_NAMES) | set(active)):
            alerts.add_metric([name], active.get(name, 0))
        out.append(alerts)
        return out

    def _tunnels(self, tunnels):
        rtts = sorted(t["rtt"] for t in tunnels
                      if t.get("rtt") is not None and t.get("state") == "open")
        rtt = GaugeMetricFamily("afb_tunnel_rtt_seconds", "Round-trip time of the open "
                                "tunnels' PINGs: min, median, max", labels=["stat"])
        if rtts:
            rtt.add_metric(["min"], rtts[0])
            rtt.add_metric(["median"], statistics.median(rtts))
            rtt.add_metric(["max"], rtts[-1])
        reconnects = max([t.get("reconnects") or 0 for t in tunnels] + [self._reconnects])
        self._reconnects = reconnects
        return [rtt, _counter("afb_reconnects_total", "Tunnels dialled after the first "
                              "(client)", reconnects)]

    def _users(self, users):
        ranked = sorted(users, key=lambda u: (-(u.get("bytes_up", 0) + u.get("bytes_down", 0)),
                                              u["user"]))
        shown, rest = ranked[:self.top_users], ranked[self.top_users:]
        traffic = CounterMetricFamily(
            "afb_user_bytes_total", "Bytes of a user since the start (the %d busiest users; "
            "the others summed as user=\"%s\")" % (self.top_users, OTHER),
            labels=["user", "direction"])
        streams = GaugeMetricFamily("afb_user_streams_open", "Streams a user has open now",
                                    labels=["user"])
        tunnels = GaugeMetricFamily("afb_user_tunnels_open", "Tunnels a user has open now",
                                    labels=["user"])
        throttled = CounterMetricFamily(
            "afb_user_throttled_seconds_total", "Seconds a user's transfers waited for its "
            "rate limit ([qos]) since the start", labels=["user", "direction"])
        queued = GaugeMetricFamily("afb_user_queued_bytes", "Bytes afb holds for a user now",
                                   labels=["user", "direction"])
        limit = GaugeMetricFamily("afb_user_rate_limit_bytes_per_second", "A user's rate "
                                  "limit in force (0: none)", labels=["user", "direction"])
        rows = [(u["user"], u) for u in shown]
        if rest:
            rows.append((OTHER, {field: sum(u.get(field, 0) for u in rest)
                                 for field in ("bytes_up", "bytes_down", "streams",
                                               "tunnels", "throttled_up_total",
                                               "throttled_down_total", "queued_up",
                                               "queued_down")}))
        for name, user in rows:
            traffic.add_metric([name, "up"], user.get("bytes_up", 0))
            traffic.add_metric([name, "down"], user.get("bytes_down", 0))
            streams.add_metric([name], user.get("streams", 0))
            tunnels.add_metric([name], user.get("tunnels", 0))
            for direction in ("up", "down"):
                throttled.add_metric([name, direction], _total(user, "throttled_" + direction))
                queued.add_metric([name, direction], user.get("queued_" + direction, 0))
                if name != OTHER:
                    limit.add_metric([name, direction], user.get("rate_limit_" + direction, 0))
        return [_gauge("afb_users", "Users listed by the server (connected, or seen since "
                       "the start)", len(users)), traffic, streams, tunnels, throttled, queued,
                limit]


    def _devices(self, devices):
        """The client's LAN devices with [qos] rules: the ``top_users`` busiest (a
        client's records are capped at MAX_IDLE_DEVICES idle ones anyway)."""
        throttled = CounterMetricFamily(
            "afb_device_throttled_seconds_total", "Seconds a LAN device's transfers waited "
            "for its rate limit ([qos]) since the start", labels=["device", "direction"])
        limit = GaugeMetricFamily("afb_device_rate_limit_bytes_per_second", "A LAN device's "
                                  "rate limit in force (0: none)", labels=["device", "direction"])
        refused = CounterMetricFamily("afb_device_streams_refused_total", "Streams of a LAN "
                                      "device refused by max_new_streams_per_second",
                                      labels=["device"])
        traffic = CounterMetricFamily("afb_device_bytes_total", "Bytes of a LAN device since "
                                      "it was first seen", labels=["device", "direction"])
        streams = GaugeMetricFamily("afb_device_streams_open", "Streams a LAN device has open "
                                    "now", labels=["device"])
        priority = GaugeMetricFamily("afb_device_priority_streams_open", "Streams of a LAN "
                                     "device to [qos] priority destinations open now",
                                     labels=["device"])
        priority_total = CounterMetricFamily(
            "afb_device_priority_streams_total", "Streams of a LAN device to [qos] priority "
            "destinations since it was first seen", labels=["device"])
        ranked = sorted(devices, key=lambda d: (-(d.get("bytes_up", 0) + d.get("bytes_down", 0)),
                                                d["device"]))
        for device in ranked[:self.top_users]:
            name = device["device"]
            for direction in ("up", "down"):
                throttled.add_metric([name, direction], _total(device, "throttled_" + direction))
                limit.add_metric([name, direction], device.get("rate_limit_" + direction, 0))
                traffic.add_metric([name, direction], device.get("bytes_" + direction, 0))
            refused.add_metric([name], device.get("refused_streams", 0))
            streams.add_metric([name], device.get("streams", 0))
            priority.add_metric([name], device.get("priority_streams", 0))
            priority_total.add_metric([name], device.get("priority_streams_total", 0))
        return [throttled, limit, refused, traffic, streams, priority, priority_total]


def _total(row, field):
    """A counter's value: the row's ``FIELD_total`` (since the start), else ``FIELD``."""
    value = row.get(field + "_total")
    return row.get(field, 0) if value is None else value


def _udp(udp):
    """SOCKS5 UDP associations: datagrams carried each way, dropped by reason, opened."""
    datagrams = CounterMetricFamily("afb_udp_datagrams_total", "UDP datagrams carried since "
                                    "the start; up: from the apps", labels=["direction"])
    dropped = CounterMetricFamily("afb_udp_dropped_total", "UDP datagrams dropped since the "
                                  "start, by reason (UDP may drop: not errors)",
                                  labels=["reason"])
    for direction in ("up", "down"):
        datagrams.add_metric([direction], udp.get("datagrams_" + direction, 0))
    for kind in UDP_KINDS:
        if kind.startswith("dropped_"):
            dropped.add_metric([kind[len("dropped_"):]], udp.get(kind, 0))
    return [datagrams, dropped,
            _counter("afb_udp_send_errors_total", "UDP sends the kernel refused",
                     udp.get("send_errors", 0)),
            _counter("afb_udp_associations_total", "SOCKS5 UDP associations opened",
                     udp.get("associations", 0))]


def _gauge(name, doc, value):
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name, doc, value):
    return CounterMetricFamily(name, doc, value=value)


def make_registry(monitor, top_users=TOP_USERS, process=True):
    """A registry holding the snapshot collector (and the process collector)."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(monitor, top_users))
    if process:
        ProcessCollector(registry=registry)
    return registry


def health(monitor):
    """-> (HTTP status line, body) of ``/health``: 200 while taking tunnels, 503 draining."""
    if getattr(monitor, "draining", False):
        return "503 Service Unavailable", b"draining\n"
    return "200 OK", b"ok\n"


def _routes(app, monitor):
    def serve(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/health":
            status, body = health(monitor)
            start_response(status, [("Content-Type", "text/plain"),
                                    ("Content-Length", str(len(body))),
                                    ("Cache-Control", "no-store")])
            return [body]
        if path not in ("/metrics", "/metrics/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: the metrics are at /metrics\n"]
        return app(environ, start_response)
    return serve


class MetricsServer:
    """``/metrics`` and ``/health`` on ``address`` (host, port); bound at once, served
    after start()."""

    def __init__(self, monitor, address):
        self.registry = make_registry(monitor)
        self.server = WSGIServer(address, _routes(make_wsgi_app(self.registry), monitor),
                                 log=None, error_log=log)
        self.server.init_socket()       # OSError now, at start, not later

    @property
    def address(self):
        return self.server.server_host, self.server.server_port

    def start(self):
        self.server.start()
        log.info("metrics on http://%s:%d/metrics", *self.address)

    def stop(self):
        self.server.stop(timeout=1)
