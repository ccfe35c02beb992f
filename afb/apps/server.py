"""``afb server``: the WebSocket tunnel endpoint that forwards streams to destinations."""

import logging
import os
import signal
import socket
import time

import gevent
from gevent.event import Event

from afb import logsetup, ratelog, sd_notify
from afb.apps.live_tokens import RevocationWatch, TokenRefresher
from afb.apps.monitoring import start_monitoring
from afb.apps.own_addresses import OwnAddressWatch, hostname_addresses
from afb.apps.server_e2e import E2eAcceptor
from afb.apps.server_reload import ServerReload
from afb.codec import frames
from afb.config_values import parse_hostport
from afb.errors import CLOSE_GOING_AWAY, AfbError, AuthError, CommandNotSupported, DestinationError
from afb.keys import check_secret_file
from afb.monitor.counters import count, count_destination_error
from afb.monitor.reporting import Reporting
from afb.monitor.stats import Monitor
from afb.policy.access import AuthThrottle, SourceAcl, client_ip, failure_weight, parse_networks
from afb.policy.acl import DestinationAcl
from afb.policy.auth import token_from_headers
from afb.policy.keyring import make_signer, make_verifier
from afb.ratelog import LogLimiter
from afb.state import STORE_ERRORS, RevocationCache, StateUnavailable, describe_store, open_store
from afb.transport import tls
from afb.transport.dialer import Dialer
from afb.transport.relay import SocketRelay
from afb.transport.resolver import Resolver
from afb.transport.resume_table import ResumeTable, first_message, link_binding
from afb.transport.session import Session
from afb.transport.shaper import Qos, qos_settings
from afb.transport.shared_state import SharedNode, SharedThrottle
from afb.transport.sockets import close_socket
from afb.transport.store_thread import StoreThread
from afb.transport.udp_association import UdpAssociation
from afb.transport.udp_common import udp_settings
from afb.transport.users import UserRegistry
from afb.transport.wsserver import front_door_options, make_server, masked_path

log = logging.getLogger(__name__)
#: Seconds between two rounds of the server's periodic chores.
HOUSEKEEPING_INTERVAL = 5.0
#: Tunnels refused for a user's limits: a few lines per user a minute.
_refusals = LogLimiter(log, interval=60.0, burst=5)
#: Streams whose destination failed: a few lines per tunnel a minute (a
#: client can ask for thousands of unreachable destinations a second).
_dial_failures = LogLimiter(log, interval=60.0, burst=20)


class TunnelServer(ServerReload):
    """Accepts tunnels, authenticates them before the upgrade, serves their streams."""

    def __init__(self, cfg):
        self.cfg = cfg
        server, tunnel = cfg["server"], cfg["tunnel"]
        self.listen = parse_hostport(server["listen"])
        if server["tls"]:
            check_secret_file(server["key"], "TLS private key")
        # Key ring (or single key) + revocations from the state store (answers
        # cached 2 s); refuses group/world-readable JWT private keys / secrets.
        # SQLite in a thread of its own; Redis (several servers) is cooperative
        # sockets, and a SharedNode keeps this node's part of the shared state.
        self.shared = None
        if server["state"]:
            self.state = open_store(cfg, timeout=server["state_timeout"])
            self.shared = SharedNode(self.state, server.get("node_id") or None,
                                     fail_open=server["state_unavailable"] == "fail-open")
        else:
            self.state = StoreThread(open_store(cfg, timeout=5.0))
        self.revocations = RevocationCache(self.state)
        self.verifier = make_verifier(cfg, revocations=self.revocations if self.shared is None
                                      else self.shared.gate(self.revocations))
        # Signs refreshed tokens: the ring's newest key (or the single jwt_private_key).
        self.signer = make_signer(cfg, keyring=self.verifier.keyring)
        # The host's own addresses, looked at again every few seconds (-> a new ACL).
        self.own_watch = OwnAddressWatch(self._own_addresses_changed,
                                         interval=cfg["acl"]["own_address_refresh"],
                                         extra=hostname_addresses())
        self.acl = self._make_acl(self.listen[1])
        access = cfg["access"]
        self.sources = SourceAcl(allow=access["allow"], deny=access["deny"])
        self.trusted_proxies = parse_networks(access["trusted_proxies"])
        throttle = (AuthThrottle,) if self.shared is None else (SharedThrottle, self.state)
        self.throttle = throttle[0](*throttle[1:], access["max_auth_failures"],
                                    access["auth_failure_window"], access["ban_time"])
        dns = cfg["dns"]
        self.resolver = Resolver(cache_ttl=dns["cache_ttl"], negative_ttl=dns["negative_ttl"],
                                 timeout=dns["timeout"])
        self.dialer = Dialer(self.resolver, self.acl, connect_timeout=tunnel["connect_timeout"],
                             recv_buffer=tunnel["socket_buffer"])
        self.udp = udp_settings(cfg.get("udp"))
        self.ssl_context = tls.server_context(server["cert"], server["key"]) \
            if server["tls"] else None
        self.e2e = E2eAcceptor(cfg["e2e"])
        # Bandwidth per user and fair shares ([qos] + the store's user_limits).
        self.qos = Qos(qos_settings(cfg["qos"]), self._user_limits())
        self.users = UserRegistry(
            max_tunnels=tunnel["max_tunnels_per_user"], max_streams=tunnel["max_streams_per_user"],
            buffer_limit=tunnel["max_buffer_per_user"],
            frame_rate=tunnel["max_frame_rate_per_user"], qos=self.qos)
        self.users.shared = self.shared
        self.sessions = set()
        self.resumes = ResumeTable()        # resumable tunnels by session id
        #: This node's name in logs, /metrics and the control socket (several nodes
        #: behind HAProxy): ``node_id``, by default the host name.
        self.node = logsetup.node_name(server["node_id"])
        self.monitor = Monitor("server", listen=server["listen"], sessions=lambda: self.sessions,
                               reload=self.reload, live_users=self.users, node=self.node)
        self.monitoring = None
        #: Failed logins per client address since the alert loop last took them
        #: (afb.monitor.reporting): a plain dict add per failure.
        self.auth_failures_by_source = {}
        # /metrics (bound now: a busy port stops the start), usage records, alerts.
        self.reporting = Reporting(self, cfg, "server")
        self._housekeeper = None
        # Live tunnels' tokens: refreshes within their family; revocations close them.
        self.refresher = TokenRefresher(self.signer, self.verifier, self.state, cfg["auth"])
        self.revocation_watch = RevocationWatch(self.state, self.sessions, self.revocations,
                                                interval=cfg["auth"]["revocation_poll"])
        if self.shared is not None:
            self.shared.users, self.shared.watch = self.users, self.revocation_watch
            self.shared.on_back.append(self._store_back)
        self.stopping = False
        self._stopped = Event()
        self.wsgi = make_server(
            self.listen, self._on_tunnel, authorize=self._authorize, path=server["path"],
            ssl_context=self.ssl_context, max_message=tunnel["max_message"],
            reuse_port=server["reuse_port"], **front_door_options(cfg))

    def _make_acl(self, port):
        """The destination ACL; the host's own addresses are refused on ``port`` always
        (no loops), on other ports unless ``allow_private_to`` names them."""
        acl = self.cfg["acl"]
        return DestinationAcl(allow=acl["allow"], deny=acl["deny"],
                              allow_private=acl["allow_private"],
                              allow_private_to=acl["allow_private_to"],
                              own_addresses=self.own_watch.current, own_port=port)

    def _own_addresses_changed(self, _addresses):
        self.dialer.acl = self.acl = self._make_acl(self.address[1])

    @property
    def address(self):
        """The (host, port) actually bound (useful with port 0 in tests)."""
        return self.wsgi.server_host, self.wsgi.server_port

    # --- per tunnel ---------------------------------------------------------

    def _authorize(self, environ):
        """Claims of an upgrade request allowed in; AuthError (-> decoy, one log line) if not.

        Order: source lists, then a ban in force, then the token; a missing or
        bad token counts towards a ban of the client address, a token this
        server signed but refuses now (expired, revoked) a tenth as much
        (:func:`~afb.policy.access.failure_weight`).  A stopping server lets a
        valid token through: :meth:`_on_tunnel` then closes the tunnel with
        1001, which the client takes for a restart, not for a refusal.
        """
        ip = client_ip(environ.get("REMOTE_ADDR", ""), environ.get("HTTP_X_FORWARDED_FOR"),
                       self.trusted_proxies)
        environ["afb.client_ip"] = ip
        refused = self.sources.check(ip)
        if refused:
            count("source_refusals")
            raise AuthError("client %s %s of [access]" % (ip, refused))
        if self.throttle.is_banned(ip):
            raise AuthError("client %s is banned for %.0f s more after failed logins"
                            % (ip, self.throttle.banned_for(ip)))
        auth = self.cfg["auth"]
        try:
            token = token_from_headers(environ, auth["token_place"], auth["token_cookie"])
            if not token:
                raise AuthError("no token")
            claims = self.verifier.verify(token)
        except StateUnavailable:        # a valid token, the store down: 503, no failure
            raise
        except AuthError as exc:
            count("auth_failures")
            sources = self.auth_failures_by_source      # read and emptied by the alert loop
            sources[ip] = sources.get(ip, 0) + 1
            if self.throttle.failed(ip, failure_weight(exc)):
                count("bans")
                raise AuthError("%s; client %s banned for %.0f s after %d failures" % (
                    exc, ip, self.throttle.ban_time, self.throttle.max_failures)) from None
            raise
        self.throttle.succeeded(ip)
        return claims

    def _on_tunnel(self, ws, claims, environ):
        peer = environ.get("afb.client_ip") or environ.get("REMOTE_ADDR", "?")
        label = "tunnel %s@%s" % (claims.get("sub", "?"), peer)
        if self.stopping:       # accepted just before the listener closed
            ws.close(CLOSE_GOING_AWAY, "server is restarting")
            return
        try:
            user = self.users.enter(claims["sub"])
        except AfbError as exc:
            if not self.resumes.holds(claims["sub"]):
                count("limit_hits")
                _refusals.warning(claims["sub"], "tunnel refused", "%s: refused: %s", label,
                                  exc, extra={"event": "tunnel_refused", "user": claims["sub"],
                                              "peer": peer})
                ws.close(exc.close_code, str(exc))
                return
            user = exc          # at its limit, with a held tunnel: it may resume that one
        counted = [user]        # a resume takes the held tunnel's place: uncounted then
        session = None
        try:
            session = self._tunnel(ws, claims, environ, label, counted)
        finally:
            if not isinstance(counted[0], (AfbError, type(None))):
                self.users.leave(counted[0], session)

    def _tunnel(self, ws, claims, environ, label, counted):
        """E2E, then a resume of a held tunnel or a new session (-> it, once ended)."""
        user = counted[0]
        ws = self._secure(ws, environ, label)
        if ws is None:
            return None
        auth = self.cfg["auth"]
        binding = link_binding(ws, token_from_headers(environ, auth["token_place"],
                                                      auth["token_cookie"]))
        first, refused = None, ""
        if self.cfg["tunnel"]["resume_grace"] > 0:
            # A client whose WebSocket died asks, in its HELLO, to resume its tunnel.
            first = first_message(ws, self.cfg["server"]["handshake_timeout"], label)
            if first is None:
                return None
            request = self.resumes.request_in(first)
            if request is not None:
                refused = self.resumes.resume(ws, request, claims, binding, label,
                                              on_accept=lambda: self._uncount(counted))
                if not refused:
                    return None         # resumed; its link has ended
        if isinstance(user, AfbError):  # over the limit, and not a resume of its own
            ws.close(user.close_code, str(user))
            return None
        session = self._start_session(ws, claims, environ, label, user,
                                      (first, binding, refused))
        if session is not None:
            self._run_session(session, label)
        return session

    def _uncount(self, counted):
        user, counted[0] = counted[0], None
        if not isinstance(user, AfbError):
            self.users.leave(user)

    def _start_session(self, ws, claims, environ, label, user, hello):
        """HELLO and the session's greenlets; None (one log line) if that failed.
        ``hello``: the client's first message if read already, the binding, and why
        the resume it asked for was refused."""
        tunnel = self.cfg["tunnel"]
        first, binding, refused = hello
        session = Session(ws, client=False, window=tunnel["stream_window"],
                          max_message=tunnel["max_message"], max_streams=tunnel["max_streams"],
                          ping_interval=tunnel["ping_interval"], on_open=self._open_stream,
                          on_refresh=self.refresher, admit=self._admit_stream,
                          idle_timeout=tunnel["idle_timeout"], label=label,
                          buffer_limit=tunnel["max_buffer"], frame_rate=tunnel["max_frame_rate"],
                          user=user, tally=self.monitor.user_tally(claims["sub"]),
                          peer=_peer(environ), resume_grace=tunnel["resume_grace"])
        session.claims = claims
        if "exp" in claims:
            session.expire_at(claims["exp"], grace=self.cfg["auth"]["leeway"])
        try:
            session.handshake(timeout=self.cfg["server"]["handshake_timeout"], first=first,
                              binding=binding, refused=refused)
        except AfbError as exc:
            log.warning("%s: handshake failed: %s", label, exc,
                        extra={"event": "handshake_failed", "user": claims.get("sub")})
            ws.close(exc.close_code, str(exc))
            return None
        session.start()
        user.sessions.add(session)
        self.resumes.add(session)
        return session

    def _run_session(self, session, label):
        self.sessions.add(session)
        user = session.claims.get("sub")
        log.info("%s: tunnel open", label, extra={"event": "tunnel_open", "user": user,
                                                   "peer": session.peer})
        self.revocation_watch.admit(session)      # revoked since its upgrade: closed at once
        started = time.monotonic()
        try:
            session.run()
        finally:
            self.sessions.discard(session)
            self.resumes.remove(session)
            session.tasks.kill(block=False)
            tally = session.tally      # its streams are over: their bytes are in it
            log.info("%s: tunnel closed after %.0f s: %s", label, time.monotonic() - started,
                     session.close_reason or "done",
                     extra={"event": "tunnel_close", "user": user, "peer": session.peer,
                            "bytes": {"up": tally.bytes_in, "down": tally.bytes_out}})

    def _secure(self, ws, environ, label):
        """The E2E channel on a new tunnel ([e2e] mode), or None (one log line) if it failed."""
        auth = self.cfg["auth"]
        token = token_from_headers(environ, auth["token_place"], auth["token_cookie"]) or ""
        return self.e2e.secure(ws, token, self.cfg["server"]["handshake_timeout"], label)

    def _admit_stream(self, session, stream):
        """Per-user stream limit, over all of the user's tunnels (dials included)."""
        self.users.check_stream(session.user)

    def _open_stream(self, session, stream, command):
        """OPEN from a client (in the reader greenlet: nothing here may block).

        A destination given as an address is connected from the event loop
        (no greenlet, no extra scheduling before the connect starts); a name
        needs DNS, so a greenlet resolves and dials it.  A UDP association
        (``[udp] enabled``) is accepted at once: its datagrams name their
        destinations (afb/transport/udp_association.py).
        """
        if command == frames.CMD_UDP_ASSOCIATE and self.udp.enabled:
            UdpAssociation(session, stream, self.resolver, lambda: self.acl, self.udp).start()
            session.accept(stream)
            return
        if command != frames.CMD_CONNECT:
            session.refuse(stream, CommandNotSupported("command %d is not supported" % command))
            return
        try:
            cancel = self.dialer.dial_nowait(
                stream.host, stream.port,
                lambda sock, error: self._connected(session, stream, sock, error))
        except DestinationError as exc:
            self._connected(session, stream, None, exc)
            return
        if cancel is False:
            cancel = session.tasks.spawn(self._serve_stream, session, stream, command).kill
        if stream.sink is None and stream.reset_error is None:
            # Still dialling: a reset (the client gave up, the tunnel closed)
            # stops the dial and frees its descriptor at once.
            stream.pending = cancel

    def _connected(self, session, stream, sock, error):
        """A dial ended: OPEN_FAIL with its SOCKS code, or OPEN_OK and relay."""
        stream.pending = None
        if error is not None:
            count_destination_error(error)
            _dial_failures.info(session.label, "stream refused", "%s: open %s refused: %s",
                                session.label, stream.target, error,
                                extra={"event": "stream_refused", "stream": stream.id,
                                       "user": session.claims.get("sub")})
            session.refuse(stream, error)
            return
        if stream.reset_error is not None or session.closed:   # the client gave up meanwhile
            close_socket(sock)
            return
        # The early data goes to the destination before OPEN_OK goes back.
        user = session.user     # its rate limits: reading the destination, credit to the client
        SocketRelay(sock, stream, shapers=(user.shape_down, user.shape_up) if user is not None
                    else (None, None)).start()
        session.accept(stream)

    def _serve_stream(self, session, stream, command):
        """The slow path of :meth:`_open_stream`, in a greenlet: resolve, then dial."""
        try:
            sock = self.dialer.dial(stream.host, stream.port)
        except DestinationError as exc:
            self._connected(session, stream, None, exc)
            return
        self._connected(session, stream, sock, None)

    # --- life cycle ---------------------------------------------------------------

    def start(self):
        self.wsgi.start()
        self.monitoring = start_monitoring(self.monitor, self.cfg, "server")
        self.monitoring.parts.append(self.reporting.start())    # stopped before the store
        self.revocation_watch.start()
        self.own_watch.start()
        if self.shared is not None:
            if self.shared.node is None:        # host:port:pid, unique among the nodes
                self.shared.node = "%s:%d:%d" % (socket.gethostname(), self.address[1],
                                                 os.getpid())
            self.shared.start()
        if self.listen[1] == 0:     # an ephemeral port: refuse the one we got
            self.dialer.acl = self.acl = self._make_acl(self.address[1])
        scheme = "wss" if self.ssl_context else "ws"
        host, port = self.address
        self.monitor.listen = "%s:%d" % ("[%s]" % host if ":" in host else host, port)
        log.info("listening on %s://%s:%d%s", scheme, "[%s]" % host if ":" in host else host,
                 port, masked_path(self.cfg["server"]["path"]))
        self._housekeeper = gevent.spawn(self._housekeeping)
        sd_notify.notify("READY=1")

    def _housekeeping(self, interval=HOUSEKEEPING_INTERVAL):
        """Periodic chores: summaries of rate-limited log lines."""
        while not self.stopping:
            gevent.sleep(interval)
            ratelog.flush_all()

    def stop(self, timeout=None):
        """Graceful stop: no new tunnels, GOAWAY, let streams finish, then close.

        The listener closes first, before anything that could wait: behind
        HAProxy, a connection to a closed port is refused at once and
        HAProxy redispatches it (``option redispatch``) to another node,
        and ``/health`` says 503 from the same moment, so the node is
        marked down within its checks (``inter`` x ``fall``) while the
        old tunnels drain (tests/test_cluster_restart.py).
        """
        if self.stopping:
            self._stopped.wait()
            return
        self.stopping = True
        self.wsgi.close()      # stop accepting
        self.monitor.draining = True        # /health: 503
        sd_notify.notify("STOPPING=1")
        self.revocation_watch.stop()
        self.own_watch.stop()
        timeout = self.cfg["server"]["drain_timeout"] if timeout is None else timeout
        for session in list(self.sessions):
            if session.detached:    # no WebSocket to drain through
                session.close_reason = "server stopping"
                session.close()
            session.goaway("server is restarting")
        deadline = time.monotonic() + timeout
        for session in list(self.sessions):
            session.drained.wait(max(0, deadline - time.monotonic()))
        left = sum(len(s.streams) for s in self.sessions)
        if left:
            log.info("drain timeout: closing %d streams still open", left)
        for session in list(self.sessions):
            session.flush(0.5)
            session.close(CLOSE_GOING_AWAY, "server stopping")
        self.wsgi.stop(timeout=1)
        self.qos.close()
        if self.shared is not None:
            self.shared.stop()
        if self._housekeeper is not None:
            self._housekeeper.kill(block=False)
        ratelog.flush_all(now=float("inf"))
        if self.monitoring is not None:
            self.monitoring.stop()
        self.state.close()
        self._stopped.set()
        log.info("stopped")

    def serve_until_signal(self):
        stop = Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, stop.set)
        gevent.signal_handler(signal.SIGHUP, self.reload)
        self.start()
        stop.wait()
        log.info("signal received: draining (up to %.0f s)", self.cfg["server"]["drain_timeout"])
        self.stop()


def _peer(environ):
    """The client's address (as trusted proxies tell it) and port, for the monitor."""
    ip = environ.get("afb.client_ip") or environ.get("REMOTE_ADDR", "?")
    port = environ.get("REMOTE_PORT")
    host = "[%s]" % ip if ":" in ip else ip
    return "%s:%s" % (host, port) if port else host


def run_server(cfg):
    """Entry from the CLI; returns the process exit code."""
    try:
        server = TunnelServer(cfg)
    except (OSError, AfbError, ValueError) as exc:
        log.error("cannot start the server: %s", exc)
        return 1
    except STORE_ERRORS as exc:      # a state store that is not one, locked, ...
        log.error("cannot start the server: %s: %s", describe_store(cfg), exc)
        return 1

    server.serve_until_signal()
    return 0
