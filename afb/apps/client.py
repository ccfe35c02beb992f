"""``afb client``: the local SOCKS5/HTTP proxy and its tunnel to the server.

The tunnels are a :class:`~afb.transport.server_pool.ServerPool`: one
server (``[client] server``) or several (``[servers]``), ``[tunnel] tunnels``
WebSockets to each; :attr:`ProxyClient.tunnel` is the preferred server's
first one (the only one in the usual single-server config).

Signals: SIGTERM and SIGINT stop it gracefully (open streams get
``drain_timeout`` seconds).  SIGHUP reads the config file and the token file
again (:mod:`afb.apps.client_reload`): a new server URL, pin, CA file, token
or E2E key opens a new tunnel while the current one goes on serving (make
before break), a server added to or removed from the list is dialled or
drained, other settings apply in place, and a config that is now invalid
changes nothing -- each case one log line.
"""

import logging
import signal
import time

import gevent
from gevent.event import Event

from afb import logsetup, sd_notify
from afb.apps.client_reload import (
    keep_running_values,
    reload_plan,
    server_names,
    token_place,
    tunnel_parameters,
    tunnel_settings,
)
from afb.apps.local_proxy import LocalProxy
from afb.apps.monitoring import start_monitoring
from afb.apps.socks_handshake import pending_limit
from afb.config import load_config
from afb.config_values import parse_hostport
from afb.errors import AfbError, ConfigError
from afb.file_checks import client_file_checks, run_file_checks
from afb.monitor.reporting import Reporting
from afb.monitor.stats import Monitor
from afb.policy import token_check
from afb.policy.access import AuthThrottle, SourceAcl
from afb.policy.client_token import ClientToken
from afb.policy.proxy_users import ProxyUsers
from afb.transport import tls
from afb.transport.devices import Devices, client_qos
from afb.transport.server_pool import ServerPool
from afb.transport.tunnel_client import TunnelClient
from afb.transport.udp_common import udp_settings

log = logging.getLogger(__name__)


class ProxyClient:
    """The whole client: tunnel + local listener, with a graceful stop."""

    def __init__(self, cfg):
        self.cfg = cfg
        client, tunnel = cfg["client"], cfg["tunnel"]
        run_file_checks(client_file_checks(cfg))     # as `afb config check` does
        self.parameters = tunnel_parameters(cfg)
        self.pool = ServerPool(self._make_tunnel, _entries(cfg), tunnels=tunnel["tunnels"],
                               strategy=client["strategy"],
                               return_to_preferred=client["return_to_preferred"])
        _warn_without_e2e(self.pool)
        users = ProxyUsers.from_file(client["users_file"]) if client["users_file"] else None
        self.proxy = LocalProxy(parse_hostport(client["listen"]), self.pool,
                                fast_open=client["fast_open"], open_timeout=tunnel["open_timeout"],
                                handshake_timeout=client["handshake_timeout"],
                                max_pending_handshakes=client["max_pending_handshakes"],
                                authenticate=users,
                                sources=SourceAcl(allow=client["allow_sources"]),
                                throttle=AuthThrottle(client["max_auth_failures"],
                                                      client["auth_failure_window"],
                                                      client["ban_time"]),
                                devices=self._devices(cfg), udp=udp_settings(cfg.get("udp")))
        self.monitor = Monitor("client", listen=client["listen"], server_url=self.pool.url,
                               sessions=lambda: self.pool.sessions,
                               tunnel_state=self._tunnel_state, reload=self.reload,
                               active_server=self.pool.describe)
        self.monitor.devices = self.proxy.devices
        self.pool.tally = self.monitor.tally
        self.pool.on_switch = lambda endpoint: setattr(self.monitor, "server_url", endpoint.url)
        self.monitoring = None
        # /metrics (bound now: a busy port stops the start) and alerts.
        self.reporting = Reporting(self, cfg, "client")

    @property
    def tunnel(self):
        """The preferred server's first tunnel (the only one with one server, one tunnel)."""
        return self.pool.endpoints[0].clients[0]

    def _make_tunnel(self, settings, token):
        return TunnelClient(token_source=token, **settings, **self.parameters)

    def start(self):
        self.proxy.start()
        host, port = self.proxy.address[:2]
        self.monitor.listen = "%s:%d" % ("[%s]" % host if ":" in host else host, port)
        self.monitoring = start_monitoring(self.monitor, self.cfg, "client")
        self.monitoring.parts.append(self.reporting.start())
        self.pool.start()
        sd_notify.notify("READY=1")

    def _tunnel_state(self, session):
        """The client's side of a TUNNEL dict (see :class:`~afb.monitor.stats.Monitor`)."""
        if session is None:
            tunnel = (self.pool.active or self.pool.endpoints[0]).clients[0]
        else:
            tunnel = self.pool.endpoint_of(session)[1]
            if tunnel is None:          # closed and forgotten meanwhile: the defaults
                return {}
        reconnects = max(0, tunnel.connects - 1)
        if session is None:
            down_for = (time.monotonic() - tunnel.down_since
                        if tunnel.down_since is not None else 0.0)
            return {"id": None, "peer": tunnel.url, "user": self._user(tunnel.token_source.last()),
                    "state": "down" if tunnel.last_error else "connecting", "rtt": None,
                    "reconnects": reconnects, "streams": 0, "cipher": None, "bytes_up": 0,
                    "bytes_down": 0, "rate_up": 0.0, "rate_down": 0.0, "uptime": 0.0,
                    "down_for": down_for, "error": tunnel.last_error or None}
        state = "down" if session.closed else "resuming" if session.detached else \
            "draining" if session.draining else "open"
        return {"state": state, "reconnects": reconnects,
                "user": self._user(tunnel.token_for(session))}

    @staticmethod
    def _user(token):
        claims = token_check.unverified_claims(token) if token else None
        return claims.get("sub") if isinstance(claims, dict) else None

    def stop(self, timeout=None):
        timeout = self.cfg["client"]["drain_timeout"] if timeout is None else timeout
        sd_notify.notify("STOPPING=1")
        self.proxy.close()
        self.pool.stop(drain_timeout=timeout)
        if self.proxy.devices is not None:
            self.proxy.devices.close()
        if self.monitoring is not None:
            self.monitoring.stop()
        log.info("stopped")

    def reload(self):
        """SIGHUP: the config and token files again; -> the new tunnel's reasons, or None.

        Nothing changes unless the whole new config is good (valid, its files
        pass the checks of a start, the token file readable, the CA file
        loadable).
        """
        path = self.cfg.filename
        try:
            cfg = load_config(path, "client")
            run_file_checks(client_file_checks(cfg))
            entries = _entries(cfg)
            for _name, settings, _token in entries:
                if settings["url"].startswith("wss:"):
                    tls.client_context(ca_file=settings["ca_file"] or None, pin=settings["pin"])
        except ConfigError as exc:
            errors = exc.errors or [str(exc)]
            log.error("SIGHUP: %s is not valid, nothing changed: %s%s", path, errors[0],
                      " (and %d more: afb config check %s)" % (len(errors) - 1, path)
                      if len(errors) > 1 else "")
            return None
        except (OSError, AfbError, ValueError) as exc:
            log.error("SIGHUP: %s cannot be used, nothing changed: %s", path, exc)
            return None
        plan = reload_plan(self.cfg, cfg)
        changed = list(plan.tunnel)
        running = {e.name: e.entry[1].last() for e in self.pool.endpoints}
        if any(name in running and token.last() != running[name]
               for name, _settings, token in entries):
            changed.append("the token")
        self._apply(cfg)
        if plan.restart:
            log.warning("SIGHUP: %s changed: that takes a restart; running as before",
                        ", ".join(plan.restart))
        self.pool.reconfigure(entries, cfg["tunnel"]["tunnels"], cfg["client"]["strategy"],
                              cfg["client"]["return_to_preferred"], _same_entry)
        self.monitor.server_url = self.pool.url
        if changed:
            _warn_without_e2e(self.pool)
            log.info("SIGHUP: %s changed: opening a new tunnel; the current one serves until "
                     "it is up, then drains", ", ".join(changed))
        else:
            log.info("SIGHUP: config and token read again; %s", "applied: " + ", ".join(
                plan.applied) if plan.applied else "nothing changed")
        self.cfg = keep_running_values(self.cfg, cfg)
        return changed or None

    @staticmethod
    def _devices(cfg, devices=None):
        """The LAN devices' limits of ``cfg`` ([qos]): ``devices`` reconfigured (their live
        streams too), or new ones; None while no rule is set (the relays then skip the
        shapers)."""
        settings, overrides, priority = client_qos(cfg["qos"])
        if devices is not None:
            devices.configure(settings, overrides, priority)
            return devices
        devices = Devices(settings, overrides, priority)
        if devices.limited:
            return devices
        devices.close()
        return None

    def _apply(self, cfg):
        """What applies in place: the tunnels' parameters, the proxy's."""
        client = cfg["client"]
        self.proxy.devices = self.monitor.devices = self._devices(cfg, self.proxy.devices)
        self.parameters = tunnel_parameters(cfg)
        for tunnel in self.pool.clients:
            for name, value in self.parameters.items():
                setattr(tunnel, name, value)
        self.proxy.fast_open = client["fast_open"]
        self.proxy.open_timeout = cfg["tunnel"]["open_timeout"]
        self.proxy.handshake_timeout = client["handshake_timeout"]
        self.proxy.udp = udp_settings(cfg["udp"])      # for the next associations
        self.proxy.pending.limit = pending_limit(client["max_pending_handshakes"])
        self.proxy.sources = SourceAcl(allow=client["allow_sources"])
        if client["log_level"] != self.cfg["client"]["log_level"]:
            logsetup.configure(client["log_level"])
        self.reporting.configure(cfg["alerts"])

    def serve_until_signal(self):
        stop = Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, stop.set)
        gevent.signal_handler(signal.SIGHUP, self.reload)
        self.start()
        stop.wait()
        log.info("signal received: letting open streams finish")
        self.stop()


def _entries(cfg):
    """``[(name, settings, token source)]`` of the servers of ``cfg``; servers whose
    token comes from the same place share one source (one refresh, one file)."""
    tokens, entries = {}, []
    for name in server_names(cfg):
        where = token_place(cfg, name)
        if where not in tokens:
            tokens[where] = ClientToken(*where)
        entries.append((name, tunnel_settings(cfg, name), tokens[where]))
    return entries


def _same_entry(old, new):
    """Whether a server is dialled as before: the same settings and token."""
    return old[0] == new[0] and old[1].last() == new[1].last()


def _warn_without_e2e(pool):
    plain = [e.name for e in pool.endpoints if not e.clients[0].e2e_key]
    if plain:
        which = "" if len(pool.endpoints) == 1 else " for server %s" % ", ".join(plain)
        log.warning("E2E is off%s ([e2e] server_key is empty): whatever terminates TLS in "
                    "front of the server sees the tunnel's destinations and data", which)


def run_client(cfg):
    """Entry from the CLI; returns the process exit code."""
    try:
        client = ProxyClient(cfg)
    except (OSError, AfbError, ValueError) as exc:
        log.error("cannot start the client: %s", exc)
        return 1
    client.serve_until_signal()
    return 0
