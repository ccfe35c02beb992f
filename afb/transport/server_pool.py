"""Several servers, several WebSockets to each: which tunnel a new stream takes.

A :class:`ServerPool` holds one :class:`Endpoint` per server of the config
(``[servers]``, or the single ``[client] server``), and each endpoint
``tunnels`` :class:`~afb.transport.tunnel_client.TunnelClient` objects: one
WebSocket each, with its own connector, backoff, make-before-break on GOAWAY
and renewal.  The pool only chooses; it dials nothing itself.

**Hot standby.**  Every listed server is kept connected, not only the active
one.  A failover then costs no dial: when the active server's tunnels close
(a ``kill -9`` of it closes them within a millisecond on loopback; a silent
peer is found by the ping timeout), the very next stream takes the next
server's tunnel, which is already up: a curl through the client succeeded
26 ms (median; max 75 ms) after a ``kill -9`` of the active server, over 20
kills on loopback, a curl's own start-up included (bench/failover), where
dialling then would add a TCP + TLS + upgrade + E2E
handshake (four round trips: about a second on a 250 ms mobile link).  The
standby's PING round trip (at its start and every ``ping_interval``) is both
its health check and what ``lowest-rtt`` compares; a failed dial shows as no
live tunnel.  The cost: one idle WebSocket per standby server and a PING
every ``ping_interval``.  Each TunnelClient keeps its own backoff, so a dead
server is retried on its own schedule while the others serve, and moving to
another server never waits for a backoff.

**Choice** (:meth:`ServerPool.live_session`, on every new stream):

* ``failover``: the active server while it has a live tunnel; when it has
  none, the first server of the list that has one (the next one after it
  without ``return_to_preferred``).  With ``return_to_preferred`` an
  earlier server of the list becomes active again once its tunnel has been
  up for :data:`RETURN_AFTER` s -- make before break: its tunnel is up
  before any stream goes there, and the streams on the other server finish
  where they are.
* ``lowest-rtt``: the server with the lowest PING round trip (the lowest of
  its tunnels'); the active one is kept unless another's is below
  :data:`RTT_MARGIN` times its own, so that jitter does not flap.

Within the server, a new stream takes the live tunnel with the fewest open
streams; a tunnel that said GOAWAY is not live (its streams finish on it),
and one that closes takes only its own streams with it.

**How many WebSockets per server** (``[tunnel] tunnels``, default 1).
bench/pool, wss + E2E on this 2-core machine, 256 MiB per run, N = 1 / 2 / 4,
two runs of 3 and 5 interleaved rounds (medians): one stream 340 / 325 / 429
and 295 / 269 / 171 MB/s; 16 streams 286 / 308 / 342 and 223 / 173 / 185
MB/s; a page of 48 x 20 KiB 38 / 48 / 48 and 45 / 67 / 50 ms.  The spread
between runs (the machine was shared) is larger than any difference N
makes: more WebSockets bring no second core -- the client is one gevent
process, so TLS and the AEAD of every tunnel run on the same core -- and a
page's 48 streams spread over N tunnels leave the writer smaller batches.
So one WebSocket is the default; more may pay on a lossy link, where one
lost segment stalls every stream of its TCP connection (head-of-line
blocking), which loopback cannot show.

Streams that find no live tunnel on any server wait (``get_session``, up to
``open_timeout``) for the first that comes up, wherever it is.
"""

import logging
import time

import gevent

from afb.errors import TunnelUnavailable

log = logging.getLogger(__name__)

#: A preferred server's tunnel must be up this long before new streams go back to
#: it: a server that accepts and then drops tunnels (a crash loop, a limit) does
#: so within milliseconds of HELLO (the connector's HEALTHY_AFTER, for the same reason).
RETURN_AFTER = 3.0
#: lowest-rtt moves to another server only when its RTT is below this fraction of
#: the active one's (loopback RTTs jitter by 2x from one PING to the next).
RTT_MARGIN = 0.7


class Endpoint:
    """One server: its name, what its tunnels are dialled with, and the tunnels."""

    def __init__(self, name, entry, clients):
        self.name = name
        self.entry = entry          # (settings, token source): see ServerPool
        self.clients = list(clients)

    def __repr__(self):
        return "<Endpoint %s %s>" % (self.name, self.url)

    @property
    def url(self):
        return self.clients[0].url

    def live(self):
        """The live sessions of its tunnels (each client's ``live_session``)."""
        return [s for s in (c.live_session() for c in self.clients) if s is not None]

    def sessions(self):
        return [s for c in self.clients for s in list(c.sessions)]

    def last_error(self):
        return next((c.last_error for c in self.clients if c.last_error), "")


def _rtt(live):
    rtts = [s.rtt for s in live if s.rtt is not None]
    return min(rtts) if rtts else None


class ServerPool:
    """The tunnels of every server; hands new streams the one to use (see module doc).

    ``make_client(settings, token_source)`` -> a new, unstarted TunnelClient;
    ``entries``: ``[(name, settings, token_source)]`` in the order of preference.
    """

    def __init__(self, make_client, entries, *, tunnels=1, strategy="failover",
                 return_to_preferred=True):
        self.make_client = make_client
        self.tunnels = tunnels
        self.strategy = strategy
        self.return_to_preferred = return_to_preferred
        self.endpoints = [Endpoint(name, (settings, token),
                                   [make_client(settings, token) for _ in range(tunnels)])
                          for name, settings, token in entries]
        self.active = None          # the Endpoint new streams go to (None: none yet)
        self.switches = 0
        self.on_switch = None       # called with the new active Endpoint
        self._tally = None
        self._started = False
        self._stopping = False

    # --- what the client app uses --------------------------------------------------------

    @property
    def clients(self):
        return [c for e in self.endpoints for c in e.clients]

    @property
    def sessions(self):
        """Every session of every tunnel (the monitor's tunnels)."""
        return [s for e in self.endpoints for s in e.sessions()]

    @property
    def tally(self):
        return self._tally

    @tally.setter
    def tally(self, tally):
        self._tally = tally
        for client in self.clients:
            client.tally = tally

    @property
    def url(self):
        endpoint = self.active or self.endpoints[0]
        return endpoint.url

    def endpoint_of(self, session):
        """``(endpoint, client)`` whose tunnel ``session`` is, or ``(None, None)``."""
        for endpoint in self.endpoints:
            for client in endpoint.clients:
                if session in client.sessions:
                    return endpoint, client
        return None, None

    def start(self):
        self._started = True
        for client in self.clients:
            client.start()

    def stop(self, drain_timeout=0.0):
        """Every tunnel: open streams finish up to ``drain_timeout`` s, then close."""
        self._stopping = True
        gevent.joinall([gevent.spawn(c.stop, drain_timeout) for c in self.clients])

    def live_session(self):
        """The session a new stream takes now, or None (never waits)."""
        live = self._choose()
        if not live:
            return None
        return min(live, key=lambda s: len(s.streams)) if len(live) > 1 else live[0]

    def get_session(self, timeout):
        """The session for a new stream, waiting up to ``timeout`` s for one on any
        server; else TunnelUnavailable naming each server's last error."""
        deadline = time.monotonic() + timeout
        while not self._stopping:
            session = self.live_session()
            if session is not None:
                return session
            left = deadline - time.monotonic()
            if left <= 0:
                raise TunnelUnavailable(self._unavailable(timeout))
            gevent.wait([c.ready for c in self.clients], timeout=left, count=1)
        raise TunnelUnavailable("client is stopping")

    def _unavailable(self, timeout):
        if len(self.endpoints) == 1:
            endpoint = self.endpoints[0]
            error = endpoint.last_error()
            return "no tunnel to %s within %.1f s%s" % (endpoint.url, timeout,
                                                        (": " + error) if error else "")
        return "no tunnel to any of %d servers within %.1f s (%s)" % (
            len(self.endpoints), timeout, "; ".join(
                "%s: %s" % (e.name, e.last_error() or "connecting") for e in self.endpoints))

    def describe(self):
        """The active server for the monitor: ``{name, url, up, strategy, switches,
        servers}``.  The choice is made again first: it is made when a stream asks, and
        a return to the preferred server should show without waiting for one."""
        up = bool(self._choose())
        endpoint = self.active or self.endpoints[0]
        return {"name": endpoint.name, "url": endpoint.url, "up": up,
                "strategy": self.strategy, "switches": self.switches,
                "servers": len(self.endpoints)}

    # --- the choice ---------------------------------------------------------------------

    def _choose(self):
        """The live sessions of the server new streams go to (empty: none is up)."""
        if len(self.endpoints) == 1:
            endpoint = self.endpoints[0]
            self.active = endpoint
            return endpoint.live()
        up = [(e, live) for e, live in ((e, e.live()) for e in self.endpoints) if live]
        if not up:
            return ()
        current = next((pair for pair in up if pair[0] is self.active), None)
        if self.strategy == "lowest-rtt":
            best = min(up, key=lambda pair: (_rtt(pair[1]) is None, _rtt(pair[1]) or 0.0))
            if current is not None and not self._clearly_faster(best, current):
                best = current
        elif current is None:
            best = up[0] if self.return_to_preferred or self.active is None \
                else self._next_after(up)
        elif self.return_to_preferred and up[0] is not current and \
                time.monotonic() - min(s.started_at for s in up[0][1]) >= RETURN_AFTER:
            best = up[0]
        else:
            best = current
        if best[0] is not self.active:
            self._switch(best, current)
        return best[1]

    @staticmethod
    def _clearly_faster(best, current):
        new, old = _rtt(best[1]), _rtt(current[1])
        return best is not current and new is not None and (old is None or new < old * RTT_MARGIN)

    def _next_after(self, up):
        """The first live server after the (dead) active one in the list, wrapping."""
        order = self.endpoints
        start = order.index(self.active) + 1 if self.active in order else 0
        ranked = {e: (i - start) % len(order) for i, e in enumerate(order)}
        return min(up, key=lambda pair: ranked[pair[0]])

    def _switch(self, best, current):
        old, new = self.active, best[0]
        self.active = new
        if old is not None:
            self.switches += 1
            if current is None:
                log.warning("server %s is down (%s): new streams go to server %s (%s)",
                            old.name, old.last_error() or "no live tunnel", new.name, new.url)
            elif self.strategy == "lowest-rtt":
                log.info("server %s answers faster (RTT %.1f ms, %s: %.1f ms): new streams go "
                         "there", new.name, _rtt(best[1]) * 1000, old.name,
                         (_rtt(current[1]) or 0.0) * 1000)
            else:
                log.info("server %s is up again: new streams go back to it (those on %s "
                         "finish there)", new.name, old.name)
        else:
            log.info("new streams go to server %s (%s)", new.name, new.url)
        if self.on_switch is not None:
            self.on_switch(new)

    # --- SIGHUP ----------------------------------------------------------------------------

    def reconfigure(self, entries, tunnels, strategy, return_to_preferred, same):
        """The servers of a new config; -> names of the servers whose tunnels are renewed.

        ``same(old_entry, new_entry)``: whether a server is dialled as before (settings
        and token).  A changed server renews its tunnels (make before break); a new one
        is dialled; a removed one, and tunnels beyond ``tunnels``, drain and close.
        """
        self.strategy = strategy
        self.return_to_preferred = return_to_preferred
        self.tunnels = tunnels
        old = {e.name: e for e in self.endpoints}
        endpoints, renewed, retired = [], [], []
        for name, settings, token in entries:
            endpoint = old.pop(name, None)
            if endpoint is None:
                endpoint = Endpoint(name, (settings, token), [])
            elif not same(endpoint.entry, (settings, token)):
                renewed.append(name)
                for client in endpoint.clients:
                    client.token_source = token
                    client.configure(**settings)
                    client.renew()
            else:
                for client in endpoint.clients:
                    client.token_source = token
            endpoint.entry = (settings, token)
            while len(endpoint.clients) < tunnels:
                endpoint.clients.append(self._new_client(settings, token))
            retired += endpoint.clients[tunnels:]
            del endpoint.clients[tunnels:]
            endpoints.append(endpoint)
        for endpoint in old.values():
            retired += endpoint.clients
            log.info("server %s is no longer listed: its tunnels close once their streams "
                     "are done", endpoint.name)
        self.endpoints = endpoints
        if self.active not in endpoints:
            self.active = None
        for client in retired:
            gevent.spawn(client.stop, client.drain_timeout)
        return renewed

    def _new_client(self, settings, token):
        client = self.make_client(settings, token)
        client.tally = self._tally
        if self._started:
            client.start()
        return client
