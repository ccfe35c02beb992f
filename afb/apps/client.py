"""``afb client``: the local SOCKS5/HTTP proxy and its tunnel to the server."""

import logging
import signal

import gevent
from gevent.event import Event

from afb.apps.local_proxy import LocalProxy
from afb.config_values import parse_hostport
from afb.errors import AfbError
from afb.file_checks import client_file_checks, run_file_checks
from afb.policy.access import AuthThrottle, SourceAcl
from afb.policy.client_token import ClientToken
from afb.policy.proxy_users import ProxyUsers
from afb.transport.tunnel_client import TunnelClient

log = logging.getLogger(__name__)


class ProxyClient:
    """The whole client: tunnel + local listener, with a graceful stop."""

    def __init__(self, cfg):
        self.cfg = cfg
        client, tunnel = cfg["client"], cfg["tunnel"]
        run_file_checks(client_file_checks(cfg))     # as `afb config check` does
        self.tunnel = TunnelClient(
            client["server"], ClientToken(client["token"], client["token_file"]),
            pin=client["pin"], ca_file=client["ca_file"],
            proxy=client["upstream_proxy"], window=tunnel["stream_window"],
            max_message=tunnel["max_message"], buffer_limit=tunnel["max_buffer"],
            connect_timeout=tunnel["connect_timeout"],
            ping_interval=tunnel["ping_interval"], ping_timeout=tunnel["ping_timeout"],
            reconnect_min=tunnel["reconnect_min"], reconnect_max=tunnel["reconnect_max"],
            token_place=client["token_place"], token_cookie=client["token_cookie"],
            e2e_key=cfg["e2e"]["server_key"] or None,
            e2e_cipher=None if cfg["e2e"]["cipher"] == "auto" else cfg["e2e"]["cipher"])
        if not self.tunnel.e2e_key:
            log.warning("E2E is off ([e2e] server_key is empty): whatever terminates TLS in "
                        "front of the server sees the tunnel's destinations and data")
        users = ProxyUsers.from_file(client["users_file"]) if client["users_file"] else None
        self.proxy = LocalProxy(parse_hostport(client["listen"]), self.tunnel,
                                fast_open=client["fast_open"], open_timeout=tunnel["open_timeout"],
                                handshake_timeout=client["handshake_timeout"],
                                authenticate=users,
                                sources=SourceAcl(allow=client["allow_sources"]),
                                throttle=AuthThrottle(client["max_auth_failures"],
                                                      client["auth_failure_window"],
                                                      client["ban_time"]))

    def start(self):
        self.proxy.start()
        self.tunnel.start()

    def stop(self, timeout=None):
        timeout = self.cfg["client"]["drain_timeout"] if timeout is None else timeout
        self.proxy.close()
        self.tunnel.stop(drain_timeout=timeout)
        log.info("stopped")

    def serve_until_signal(self):
        stop = Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, stop.set)
        self.start()
        stop.wait()
        log.info("signal received: letting open streams finish")
        self.stop()


def run_client(cfg):
    """Entry from the CLI; returns the process exit code."""
    try:
        client = ProxyClient(cfg)
    except (OSError, AfbError, ValueError) as exc:
        log.error("cannot start the client: %s", exc)
        return 1
    client.serve_until_signal()
    return 0
