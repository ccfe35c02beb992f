"""A daemon's live numbers, read from where they already are, when someone asks.

The data path keeps only what it kept anyway (each stream's ``bytes_in`` /
``bytes_out`` for flow control, the session's table of streams) plus two adds
per stream in a :class:`~afb.monitor.counters.Tally`; the :class:`Monitor`
walks the live sessions and streams when a snapshot is asked for (the
control socket, ``/metrics``, the alert loop) and computes rates then, over
the time since *that reader's* previous snapshot.  So nothing is sampled on a
timer and nothing is guessed: a rate is bytes moved over seconds passed.

A snapshot of 10,000 streams takes tens of milliseconds (bench/monitor); a
reader that asks once a second costs the daemon that, and the data path
nothing.  The shape of every dict is docs/control-protocol.rst.
"""

import heapq
import os
import socket
import time

from afb import __version__
from afb.errors import CLOSE_BY_OPERATOR, REP_GENERAL_FAILURE
from afb.monitor.counters import ERROR_KINDS, ERRORS, UDP, UDP_KINDS, Tally
from afb.monitor.log_ring import LogRing
from afb.monitor.stream_rows import stream_row, tunnel_cipher

__all__ = ["Monitor"]


class _Rates:
    """One reader's previous counters: key -> (time, up, down); rates against them."""

    __slots__ = ("seen", "cpu")

    def __init__(self):
        self.seen = {}
        self.cpu = None         # (time, cpu seconds) at the previous snapshot

    def rates(self, fresh, key, now, up, down, since):
        """Bytes per second up and down since this reader last saw ``key`` (or ``since``)."""
        previous = self.seen.get(key)
        fresh[key] = (now, up, down)
        if previous is None:
            then, up0, down0 = since, 0, 0
        else:
            then, up0, down0 = previous
        span = now - then
        if span <= 0:
            return 0.0, 0.0
        return max(0, up - up0) / span, max(0, down - down0) / span


class Monitor:
    """The numbers of one daemon (see the module doc).

    ``sessions()``: the live tunnel sessions; ``tunnel_state(session)``: a
    TUNNEL dict's ``state``/``reconnects``/``user`` for a session, and with
    ``None`` the entry for "no tunnel now" (client) or None (server);
    ``reload()``: what SIGHUP does; ``active_server()``: the client's server that new
    streams go to (:meth:`~afb.transport.server_pool.ServerPool.describe`).  The
    server registers its users' live records in ``live_users`` (the
    :class:`~afb.transport.users.UserRegistry`).  ``node``: the node's name
    (``[server] node_id``, by default the host name); ``draining``: set by a
    server that stopped accepting tunnels (SIGTERM), for ``/health`` and the
    snapshot.
    """

    def __init__(self, role, *, listen="", server_url=None, sessions=lambda: (),
                 tunnel_state=None, reload=None, live_users=None, clock=time.monotonic,
                 wall=time.time, log_size=1000, node="", active_server=None):
        self.role = role
        self.node = node or socket.gethostname()
        self.draining = False
        self.listen = listen
        self.server_url = server_url
        self.sessions = sessions
        self.tunnel_state = tunnel_state or (lambda session: None)
        self.reload = reload
        self.live_users = live_users
        self.active_server = active_server      # client: () -> the server new streams go to
        self.devices = None             # client: the LAN devices' limits (afb.transport.shaper)
        self.clock = clock
        self.wall = wall
        self.started = wall()
        self.started_mono = clock()
        self.errors = ERRORS
        self.tally = Tally()            # the whole process; users' tallies add to it
        self.user_tallies = {}          # server: user -> Tally, for as long as the process runs
        self.alerts = []                # active ALERT dicts (the alert loop sets them)
        self.today = None               # (user, up, down now) -> (up, down) today, from usage
        self.logs = LogRing(log_size)
        self._readers = {}
        self._process = None            # psutil.Process, made at the first snapshot

    # --- what the daemons call ---------------------------------------------------

    def user_tally(self, user):
        """The persistent tally of ``user`` (server): a new tunnel's tally adds to it."""
        tally = self.user_tallies.get(user)
        if tally is None:
            tally = self.user_tallies[user] = Tally(parent=self.tally)
        return tally

    # --- directions -------------------------------------------------------------------

    def up_down(self, bytes_in, bytes_out):
        """(up, down) from a session's (in, out): up is from the app to the destination."""
        return (bytes_in, bytes_out) if self.role == "server" else (bytes_out, bytes_in)

    # --- snapshots ------------------------------------------------------------------------

    def snapshot(self, reader=None, streams=False, limit=None):
        """The SNAPSHOT dict; with ``streams``, its newest ``limit`` STREAM rows too."""
        rates = self._readers.get(reader)
        if rates is None:
            rates = self._readers[reader] = _Rates()
        now, wall = self.clock(), self.wall()
        fresh = {}
        sessions = list(self.sessions())
        tunnels, candidates = [], []
        live_in = live_out = 0
        user_live = {}
        for session in sessions:
            entry, s_in, s_out = self._tunnel(session, rates, fresh, now,
                                              candidates if streams else None)
            tunnels.append(entry)
            live_in += s_in
            live_out += s_out
            name = entry["user"]
            if name is not None:
                u_in, u_out = user_live.get(name, (0, 0))
                user_live[name] = (u_in + s_in, u_out + s_out)
        if not tunnels:
            idle = self.tunnel_state(None)
            if idle is not None:
                tunnels.append(idle)
        up, down = self.up_down(self.tally.bytes_in + live_in, self.tally.bytes_out + live_out)
        rate_up, rate_down = rates.rates(fresh, "*", now, up, down, self.started_mono)
        snap = {
            "v": 1, "type": "snapshot", "time": wall, "role": self.role,
            "version": __version__, "node": self.node,
            "draining": self.draining, "pid": os.getpid(), "started": self.started,
            "uptime": now - self.started_mono, "listen": self.listen,
            "server_url": self.server_url,
            "process": self._process_stats(rates, now),
            "totals": {"tunnels": len(sessions),
                       "streams": sum(len(s.streams) for s in sessions),
                       "streams_total": self.tally.streams,
                       "bytes_up": up, "bytes_down": down,
                       "rate_up": rate_up, "rate_down": rate_down},
            "errors": {kind: self.errors.get(kind, 0) for kind in ERROR_KINDS},
            "udp": {kind: UDP.get(kind, 0) for kind in UDP_KINDS},
            "tunnels": tunnels,
            "users": self._users(user_live, rates, fresh, now) if self.role == "server" else [],
            "alerts": list(self.alerts),
        }
        if self.active_server is not None:
            snap["active_server"] = self.active_server()
        if self.devices is not None:
            snap["devices"] = self._devices(rates, fresh, now)
        if streams:
            # Rows for the newest ``limit`` streams only: a row costs microseconds, and
            # 10,000 of them a second would be the dashboard's whole cost.
            if limit is not None and limit < len(candidates):
                candidates = heapq.nlargest(limit, candidates, key=lambda c: c[1].opened_at)
            else:
                candidates.sort(key=lambda c: c[1].opened_at, reverse=True)
            snap["streams"] = [self._row(rates, fresh, now, wall, *c) for c in candidates]
        rates.seen = fresh if streams else {**_streams_seen(rates.seen), **fresh}
        return snap

    def _tunnel(self, session, rates, fresh, now, candidates):
        """-> (TUNNEL, live bytes in, live bytes out); ``(session, stream, user)`` of each
        stream appended to ``candidates`` unless that is None."""
        live_in = live_out = 0
        info = self.tunnel_state(session) or {}
        user = info.get("user", session.claims.get("sub"))
        for stream in list(session.streams.values()):
            live_in += stream.bytes_in
            live_out += stream.bytes_out
            if candidates is not None:
                candidates.append((session, stream, user))
        up, down = self.up_down(session.tally.bytes_in + live_in,
                                session.tally.bytes_out + live_out)
        rate_up, rate_down = rates.rates(fresh, session.number, now, up, down,
                                         session.started_at)
        entry = {"id": session.number, "peer": session.peer, "user": user,
                 "state": info.get("state", _session_state(session)),
                 "rtt": session.rtt, "reconnects": info.get("reconnects", 0),
                 "streams": len(session.streams), "cipher": tunnel_cipher(session),
                 "bytes_up": up, "bytes_down": down, "rate_up": rate_up, "rate_down": rate_down,
                 "uptime": now - session.started_at}
        return entry, live_in, live_out

    def _row(self, rates, fresh, now, wall, session, stream, user):
        row = stream_row(self, session, stream, user, now, wall)
        row["rate_up"], row["rate_down"] = rates.rates(
            fresh, row["id"], now, row["bytes_up"], row["bytes_down"], stream.opened_at)
        return row

    def _users(self, user_live, rates, fresh, now):
        users = []
        live = self.live_users.users if self.live_users is not None else {}
        qos = getattr(self.live_users, "qos", None)
        for name in sorted(set(self.user_tallies) | set(live)):
            tally = self.user_tallies.get(name) or Tally()
            record = live.get(name)
            s_in, s_out = user_live.get(name, (0, 0))
            up, down = self.up_down(tally.bytes_in + s_in, tally.bytes_out + s_out)
            rate_up, rate_down = rates.rates(fresh, ("user", name), now, up, down,
                                             self.started_mono)
            today = self.today(name, up, down) if self.today is not None else (0, 0)
            users.append({"user": name, "tunnels": record.tunnels if record else 0,
                          "streams": record.streams if record else 0,
                          "peak_streams": max(tally.peak, record.streams if record else 0),
                          "bytes_up": up, "bytes_down": down,
                          "rate_up": rate_up, "rate_down": rate_down,
                          "today_bytes_up": today[0], "today_bytes_down": today[1],
                          **_qos(record), **_throttled_totals(qos, name)})
        return users

    def _devices(self, rates, fresh, now):
        """The client's DEVICE dicts, with their rates for this reader."""
        rows = self.devices.rows()
        for row in rows:
            row["rate_up"], row["rate_down"] = rates.rates(
                fresh, ("device", row["device"]), now, row["bytes_up"], row["bytes_down"],
                self.started_mono)
        return rows

    def _process_stats(self, rates, now):
        # psutil is loaded when someone first asks (2.5 MiB a client that nobody
        # watches does without; bench/footprint).
        import psutil

        if self._process is None:
            self._process = psutil.Process()
        try:
            with self._process.oneshot():
                rss = self._process.memory_info().rss
                fds = self._process.num_fds()
                times = self._process.cpu_times()
        except psutil.Error:
            return {"rss": None, "fds": None, "cpu": None, "cpu_percent": None}
        cpu = times.user + times.system
        then = rates.cpu or (self.started_mono, 0.0)
        rates.cpu = (now, cpu)
        span = now - then[0]
        percent = 100.0 * (cpu - then[1]) / span if span > 0 else 0.0
        return {"rss": rss, "fds": fds, "cpu": cpu, "cpu_percent": percent}

    # --- usage (server) ---------------------------------------------------------------------

    def usage_counters(self):
        """``{user: {bytes_up, bytes_down, streams, tunnel_seconds, peak_streams}}``: totals
        since the start (live streams and tunnels included); ``peak_streams`` since the
        previous call (exact: the tally keeps the peak as streams open)."""
        now = self.clock()
        live = {}
        for session in list(self.sessions()):
            name = session.claims.get("sub")
            s_in = sum(s.bytes_in for s in list(session.streams.values()))
            s_out = sum(s.bytes_out for s in list(session.streams.values()))
            l_in, l_out, seconds = live.get(name, (0, 0, 0.0))
            live[name] = (l_in + s_in, l_out + s_out, seconds + now - session.started_at)
        registry = self.live_users.users if self.live_users is not None else {}
        counters = {}
        for name, tally in self.user_tallies.items():
            l_in, l_out, seconds = live.get(name, (0, 0, 0.0))
            up, down = self.up_down(tally.bytes_in + l_in, tally.bytes_out + l_out)
            record = registry.get(name)
            counters[name] = {"bytes_up": up, "bytes_down": down, "streams": tally.streams,
                              "tunnel_seconds": tally.tunnel_seconds + seconds,
                              "peak_streams": tally.take_peak(record.streams if record else 0)}
        return counters

    # --- acting ---------------------------------------------------------------------------------

    def find_stream(self, stream_id):
        """The live stream named ``"tunnel/stream"``, or None."""
        tunnel, _, number = str(stream_id).partition("/")
        for session in list(self.sessions()):
            if str(session.number) == tunnel:
                try:
                    return session.streams.get(int(number))
                except ValueError:
                    return None
        return None

    def close_stream(self, stream_id):
        """Reset a stream as the operator asked; -> whether there was one."""
        stream = self.find_stream(stream_id)
        if stream is None or stream.reset_error is not None:
            return False
        stream.reset(REP_GENERAL_FAILURE, "closed by the operator")
        return True

    def disconnect_user(self, user):
        """Close every tunnel of ``user`` (4003, not a refusal: its client dials again; to
        keep a user out, revoke the token); -> how many."""
        closing = [s for s in list(self.sessions()) if s.claims.get("sub") == user]
        for session in closing:
            session.close_reason = "disconnected by the operator"
            session.close(CLOSE_BY_OPERATOR, "disconnected by the operator")
        return len(closing)

    def forget_reader(self, reader):
        self._readers.pop(reader, None)


def _qos(record):
    """A live user's limits and what they cost it (issue 13) since its first tunnel
    still open; zeros when it has none."""
    down = getattr(record, "shape_down", None)
    up = getattr(record, "shape_up", None)
    return {"rate_limit_down": round(down.rate) if down is not None else 0,
            "rate_limit_up": round(up.rate) if up is not None else 0,
            "throttled_down": round(down.throttled_seconds(), 3) if down is not None else 0.0,
            "throttled_up": round(up.throttled_seconds(), 3) if up is not None else 0.0,
            "queued_down": record.down.used if down is not None else 0,
            "queued_up": record.up.used if up is not None else 0,
            "refused_streams": record.refused_opens if down is not None else 0}


def _throttled_totals(qos, name):
    """Seconds ``name`` was throttled since the start, its earlier tunnels' too (the
    Prometheus counters; the ``throttled_*`` figures start again with each spell of
    tunnels)."""
    down, up = qos.throttled_totals(name) if qos is not None else (0.0, 0.0)
    return {"throttled_down_total": round(down, 3), "throttled_up_total": round(up, 3)}


def _session_state(session):
    if session.closed:
        return "down"
    if getattr(session, "detached", False):
        return "resuming"       # its WebSocket died; held for a resume (afb/transport/resume.py)
    return "draining" if session.draining else "open"


def _streams_seen(seen):
    """A snapshot without streams keeps the reader's stream baselines as they were."""
    return {key: value for key, value in seen.items() if isinstance(key, str) and "/" in key}

