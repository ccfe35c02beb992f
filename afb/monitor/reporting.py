"""What a daemon reports outwards (issue 11, parts 3-5): /metrics, usage records, alerts.

A daemon makes its :class:`Reporting` in its constructor, once its
``monitor`` (:class:`afb.monitor.stats.Monitor`) and (server) state store
exist: the metrics socket is bound there, so a busy port is one "cannot
start" line.  ``start()`` returns it for the daemon's
:class:`afb.apps.monitoring.Monitoring` parts, whose ``stop()`` runs before
the store closes, so the last usage increments are written.  Everything here reads the Monitor
from outside on a timer or at a scrape; none of it is on the data path.

The alert loop wakes once a second: a snapshot (``reader="alerts"``, its
own rate baseline), :class:`~afb.monitor.alerts.AlertEngine`, one WARNING
line per alert that starts (``alert=NAME [subject=S]: message``) or ends
(``alert=NAME [subject=S] cleared after N s``), ``monitor.alerts`` replaced
by the active list, and ``alert_command`` run for each change.  With every
rule off the loop does not run at all.

Server hook (the one line added to existing code for this): the server's
``_authorize`` adds each failed login to ``app.auth_failures_by_source``
(address -> count, a plain dict add); the loop takes the dict each second
and leaves a new empty one, so its size is bounded by a second's failures.
"""

import logging
import time

import gevent

from afb.config_values import parse_local_listen
from afb.errors import AfbError, listen_failure
from afb.monitor.alert_command import AlertCommand
from afb.monitor.alerts import AlertEngine

log = logging.getLogger(__name__)
#: Seconds between two evaluations of the alert rules.
ALERT_INTERVAL = 1.0
#: Rules whose setting turns them on (0: off).
_RULE_KEYS = ("max_rate_up", "max_rate_down", "max_errors_per_minute", "max_rss", "max_fds",
              "anomaly_factor", "max_auth_failures_per_minute", "max_auth_failures_per_source",
              "tunnel_down_after")


class Reporting:
    """The metrics server, the usage recorder (server) and the alert loop of one daemon."""

    def __init__(self, app, cfg, role):
        self.app = app
        self.role = role
        self.settings = dict(cfg["alerts"])
        self.metrics = None
        self.usage = None
        self._alerts = None
        self._stopped = False
        address = parse_local_listen(cfg[role]["metrics_listen"])
        if address is not None:
            from afb.monitor.metrics import MetricsServer

            try:
                self.metrics = MetricsServer(app.monitor, address)
            except OSError as exc:
                raise AfbError(listen_failure(
                    role, address[0], address[1], exc,
                    fix="stop it or change [%s] metrics_listen" % role)) from None
        if role == "server":
            from afb.monitor.usage import UsageRecorder

            server = cfg["server"]
            self.usage = UsageRecorder(app.monitor.usage_counters, app.state,
                                       keep_days=server["report_days"],
                                       flush_interval=server["report_flush"])
            app.monitor.today = self.usage.today    # the snapshot's today_bytes_* (USER)
        self.engine = AlertEngine(self.settings, role, now=time.time())
        self.command = AlertCommand(self.settings["alert_command"],
                                    self.settings["alert_command_timeout"], role)

    @property
    def alerting(self):
        return any(self.settings.get(key) for key in _RULE_KEYS) or \
            getattr(self.app, "shared", None) is not None      # the state_store rule

    def start(self):
        """Start the parts -> self (a part of the daemon's Monitoring, for its stop())."""
        if self.usage is not None:
            self.usage.start()
        if self.metrics is not None:
            self.metrics.start()
        if self.alerting:
            self._alerts = gevent.spawn(self._alert_loop)
        return self

    def configure(self, settings):
        """New ``[alerts]`` settings (client SIGHUP): active alerts stay active and are
        judged by the new rules from the next second on."""
        self.settings = dict(settings)
        self.engine.settings = self.settings
        self.command = AlertCommand(self.settings["alert_command"],
                                    self.settings["alert_command_timeout"], self.role)
        if self.alerting and self._alerts is None and not self._stopped:
            self._alerts = gevent.spawn(self._alert_loop)

    def _alert_loop(self):
        failed = False
        while True:
            gevent.sleep(ALERT_INTERVAL)
            try:
                self.check()
                failed = False
            except Exception:  # noqa: BLE001 - a bug here must not end the alerts for good
                if not failed:
                    log.exception("alerts: evaluation failed")
                failed = True

    def check(self, now=None):
        """One evaluation of the rules -> (started, cleared)."""
        monitor = self.app.monitor
        now = time.time() if now is None else now
        sources = getattr(self.app, "auth_failures_by_source", None)
        if sources:
            self.app.auth_failures_by_source = {}
        snapshot = monitor.snapshot(reader="alerts")
        shared = getattr(self.app, "shared", None)
        if shared is not None:
            snapshot["state_store"] = shared.state
        started, cleared = self.engine.evaluate(snapshot, now, sources)
        monitor.alerts = self.engine.alerts()
        for alert in started:
            log.warning("alert=%s%s: %s", alert["name"], _subject(alert), alert["message"])
            self.command.run(alert, "active")
        for alert in cleared:
            log.warning("alert=%s%s cleared after %.0f s", alert["name"], _subject(alert),
                        now - alert["since"])
            self.command.run(alert, "cleared")
        return started, cleared

    def stop(self):
        """Stop the loop and the page; last usage flush; wait briefly for alert commands."""
        if self._stopped:
            return
        self._stopped = True
        if self._alerts is not None:
            self._alerts.kill()
        if self.metrics is not None:
            self.metrics.stop()
        if self.usage is not None:
            self.usage.stop()
        self.command.wait(timeout=2.0)


def _subject(alert):
    return " subject=%s" % alert["subject"] if alert.get("subject") is not None else ""

