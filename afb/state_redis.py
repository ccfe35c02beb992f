"""The state store in Redis, shared by several ``afb server`` nodes (``[server] state = redis://``).

The same methods as :class:`afb.state.StateStore` (see :mod:`afb.state`),
plus what only several nodes need: the revocation push, per-user stream
counts over all nodes, the QoS node count, failed-login bans.  Keys (all
under ``afb:``; one Redis database, not Redis Cluster: the Lua scripts name
keys they compute)::

    afb:rev:jti  hash  jti or family -> {"exp", "reason", "revoked_at"}
    afb:rev:sub  hash  subject       -> {"before", "reason", "revoked_at"}
    afb:rev:log  zset  "jti:V" / "sub:V" by revoked_at   (revocations_since)
    afb:revocations    pub/sub channel: every revocation as it is made
    afb:tok      hash  jti -> the issued-token row;  afb:tokfam  hash fam -> [jti]
    afb:usage:days zset of "YYYY-MM-DD";  afb:usage:DAY  hash "user\\x1ffield" -> n
    afb:limits   hash  user -> {"rate_down", "rate_up", "weight"}
    afb:nodes    zset  node -> last heartbeat;  afb:streams:NODE  hash user -> n (TTL)
    afb:qos:USER zset  node -> last heartbeat (TTL)
    afb:fail:KEY  failures of an address (TTL window);  afb:ban:KEY  a ban (TTL ban_time)

Every write that reads first (a revocation that keeps the later of two
dates, a token refresh that replaces its family's previous one, usage
peaks, a stream admission) is one Lua script, so two nodes or an ``afb
token`` command at the same moment cannot interleave.  ``revoked_at`` is
Redis's clock (``TIME``), one clock for every node; the nodes' poll of
``revocations_since`` compares it with theirs, so their clocks should agree
(NTP) within the poll's 2 s overlap -- the push does not depend on it.

Reachability: redis-py is pure Python over the standard ``socket``, which
the server's gevent monkey-patching makes cooperative, so a call waits in
its own greenlet only; ``timeout`` (``[server] state_timeout``, 0.5 s) bounds
each call, redis-py's own retries are off (its default of 3 with backoff
would hold an upgrade for seconds).  A call that fails marks the store
*down*: the next calls fail at once (:class:`~afb.state.StateUnavailable`),
without waiting for a timeout again, until :meth:`RedisStore.probe` (the
server's reconnect loop) gets an answer.  ``on_change(up)`` callbacks hear
each change.
"""

import json
import logging
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from afb import state_redis_lua as lua
from afb.config_values import masked_url
from afb.policy.lineage import family_of, family_of_jti, with_reason
from afb.state import PURGE_KEEP, USAGE_FIELDS, StateUnavailable

log = logging.getLogger(__name__)

CHANNEL = "afb:revocations"
#: Seconds a node's stream counts and QoS presence live without a heartbeat.
NODE_TTL = 5
_SEP = "\x1f"


class RedisStore:
    """The state store in Redis; see the module doc."""

    def __init__(self, url, timeout=0.5):
        self.url = url
        self.where = masked_url(url)
        self.timeout = timeout
        self.down_since = None
        self.on_change = []
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False, decode_responses=True,
            health_check_interval=0)
        self._scripts = {name: self._client.register_script(getattr(lua, name.upper()))
                         for name in ("revoke_jti", "revoke_sub", "record_issued", "add_usage",
                                      "streams_admit", "streams_publish", "active_nodes",
                                      "auth_failed")}

    def __repr__(self):
        return "<RedisStore %s%s>" % (self.where, " down" if self.down_since else "")

    # --- reachability ---------------------------------------------------------------

    @property
    def available(self):
        return self.down_since is None

    def _call(self, what, *args, **kwargs):
        """``what(*args)`` (a redis-py call): StateUnavailable if the store is down or fails."""
        if self.down_since is not None:
            raise StateUnavailable("state store %s unreachable" % self.where)
        try:
            return what(*args, **kwargs)
        except (redis.RedisError, OSError) as exc:
            self._mark_down(exc)
            raise StateUnavailable("state store %s: %s" % (self.where, _why(exc))) from None

    def _script(self, name, keys=(), args=()):
        return self._call(self._scripts[name], keys=list(keys), args=list(args))

    def _mark_down(self, exc):
        if self.down_since is None:     # (redis-py drops the failed connection itself;
            self.down_since = time.monotonic()   # others may be in use by other greenlets)
            self._notify(False, _why(exc))

    def probe(self):
        """One PING, whatever the state: True (and up again) if the store answers."""
        try:
            self._client.ping()
        except (redis.RedisError, OSError) as exc:
            if self.down_since is None:
                self.down_since = time.monotonic()
                self._notify(False, _why(exc))
            return False
        if self.down_since is not None:
            down_for = time.monotonic() - self.down_since
            self.down_since = None
            self._notify(True, "after %.1f s" % down_for)
        return True

    def _notify(self, up, detail):
        for callback in list(self.on_change):
            callback(up, detail)

    def pubsub(self):
        """A redis-py PubSub on the revocation channel (the server's listener)."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(CHANNEL)
        return pubsub

    def close(self):
        self._client.close()

    # --- revocations ------------------------------------------------------------------

    def revoke_jti(self, jti, exp=None, reason=""):
        if not jti or not isinstance(jti, str):
            raise ValueError("a token id (jti) is needed")
        row = self.lookup_token(jti)
        family = row["fam"] if row is not None and row["fam"] else family_of_jti(jti)
        known = self._family(family)
        if exp is None and known:
            exp = max(t["exp"] for t in known)
        sub = row["sub"] if row is not None else (max(t["sub"] for t in known) if known else None)
        self._script("revoke_jti", ("afb:rev:jti", "afb:rev:log"),
                     ["" if exp is None else int(exp), reason or "", CHANNEL]
                     + sorted({jti, family}))
        return {"family": family, "sub": sub, "exp": exp}

    def revoke_subject(self, sub, before_ts=None, reason=""):
        if not sub or not isinstance(sub, str):
            raise ValueError("a subject (user name) is needed")
        return float(self._script("revoke_sub", ("afb:rev:sub", "afb:rev:log"),
                                  (sub, "" if before_ts is None else float(before_ts),
                                   reason or "", CHANNEL)))

    def is_revoked(self, claims):
        jti, sub, iat = claims.get("jti"), claims.get("sub"), claims.get("iat")
        pipe = self._client.pipeline(transaction=False)
        pipe.hmget("afb:rev:jti", str(jti), str(family_of(claims)))
        pipe.hget("afb:rev:sub", str(sub))
        rows, subject = self._call(pipe.execute)
        for row in rows:
            if row is not None:
                return with_reason("token revoked", json.loads(row)["reason"])
        if subject is not None:
            subject = json.loads(subject)
            if not isinstance(iat, (int, float)) or iat < subject["before"]:
                return with_reason("subject revoked", subject["reason"])
        return None

    def list_revocations(self):
        return self.revocations_since(None)

    def revocations_since(self, since):
        """Revocations made at or after ``since`` (None: all): jti ones, then subjects."""
        members = self._call(self._client.zrangebyscore, "afb:rev:log",
                             "-inf" if since is None else since, "+inf")
        return self._rows(members)

    def _rows(self, members):
        values = {"jti": [], "sub": []}
        for member in members:
            kind, _, value = member.partition(":")
            if kind in values:
                values[kind].append(value)
        pipe = self._client.pipeline(transaction=False)
        for kind in ("jti", "sub"):
            pipe.hmget("afb:rev:" + kind, values[kind] or ["\0"])
        jtis, subs = self._call(pipe.execute)
        out = []
        for value, row in zip(values["jti"], jtis, strict=False):
            if row is not None:
                row = json.loads(row)
                out.append({"kind": "jti", "value": value, "exp": row["exp"],
                            "reason": row["reason"], "revoked_at": row["revoked_at"]})
        for value, row in zip(values["sub"], subs, strict=False):
            if row is not None:
                row = json.loads(row)
                out.append({"kind": "sub", "value": value, "before": row["before"],
                            "reason": row["reason"], "revoked_at": row["revoked_at"]})
        out.sort(key=lambda r: (r["kind"] != "jti", r["revoked_at"]))
        return out

    def rows_of(self, message):
        """The revocation rows a pub/sub ``message`` announces (its data: "kind:value")."""
        return self._rows([message])

    # --- issued tokens ------------------------------------------------------------------

    def record_issued(self, claims, kid=None):
        row = {"jti": claims["jti"], "sub": claims["sub"], "iat": int(claims["iat"]),
               "exp": int(claims["exp"]), "kid": kid, "recorded_at": time.time()}
        self._script("record_issued", ("afb:tok", "afb:tokfam"),
                     (claims["jti"], family_of(claims), json.dumps(row)))

    def _tokens(self):
        return {jti: _token(text) for jti, text in
                self._call(self._client.hgetall, "afb:tok").items()}

    def _family(self, family):
        """The recorded tokens of ``family`` (two at most: the index afb:tokfam)."""
        members = self._call(self._client.hget, "afb:tokfam", family)
        members = json.loads(members) if members else []
        if not members:
            return []
        rows = self._call(self._client.hmget, "afb:tok", members)
        return [_token(text) for text in rows if text is not None]

    def lookup_token(self, jti):
        text = self._call(self._client.hget, "afb:tok", jti)
        if text is None:
            return None
        row = _token(text)
        return {k: row[k] for k in ("jti", "fam", "refreshes", "sub", "iat", "exp", "kid")}

    def list_tokens(self):
        tokens = self._tokens()
        jtis = {k: json.loads(v) for k, v in
                self._call(self._client.hgetall, "afb:rev:jti").items()}
        subs = {k: json.loads(v) for k, v in
                self._call(self._client.hgetall, "afb:rev:sub").items()}
        first = {}
        for t in tokens.values():
            first[t["fam"]] = min(first.get(t["fam"], t["iat"]), t["iat"])
        out = []
        for t in sorted(tokens.values(), key=lambda t: (first[t["fam"]], t["fam"],
                                                         t["refreshes"], t["jti"])):
            revoked = None
            hit = jtis.get(t["jti"]) or jtis.get(t["fam"])
            subject = subs.get(t["sub"])
            if hit is not None:
                revoked = with_reason("token revoked", hit["reason"])
            elif subject is not None and t["iat"] < subject["before"]:
                revoked = with_reason("subject revoked", subject["reason"])
            out.append({k: t[k] for k in ("jti", "fam", "refreshes", "sub", "iat", "exp", "kid")}
                       | {"revoked": revoked})
        return out

    def purge_expired(self, now=None, keep=PURGE_KEEP):
        limit = (time.time() if now is None else now) - keep
        tokens = self._tokens()
        old = [jti for jti, t in tokens.items() if t["exp"] < limit]
        families = {tokens[jti]["fam"] for jti in old} - {
            t["fam"] for t in tokens.values() if t["exp"] >= limit}
        gone = [value for value, text in self._call(self._client.hgetall, "afb:rev:jti").items()
                if json.loads(text)["exp"] is not None and json.loads(text)["exp"] < limit]
        pipe = self._client.pipeline(transaction=True)
        if old:
            pipe.hdel("afb:tok", *old)
        if families:
            pipe.hdel("afb:tokfam", *families)
        if gone:
            pipe.hdel("afb:rev:jti", *gone)
            pipe.zrem("afb:rev:log", *["jti:" + v for v in gone])
        if old or gone:
            self._call(pipe.execute)
        return len(old) + len(gone)

    # --- usage per day and user -----------------------------------------------------------

    def add_usage(self, rows):
        args = []
        for r in rows:
            args += [r["day"], r["user"], int(r["bytes_up"]), int(r["bytes_down"]),
                     int(r["streams"]), int(r["peak_streams"]), float(r["tunnel_seconds"])]
        if args:
            self._script("add_usage", ("afb:usage:days",), args)

    def usage(self, since=None, until=None, user=None):
        days = self._call(self._client.zrangebylex, "afb:usage:days",
                          "[" + since if since else "-", "[" + until if until else "+")
        pipe = self._client.pipeline(transaction=False)
        for day in days:
            pipe.hgetall("afb:usage:" + day)
        out = []
        for day, fields in zip(days, self._call(pipe.execute) if days else [], strict=True):
            users = {}
            for key, value in fields.items():
                name, _, field = key.rpartition(_SEP)
                if user is None or name == user:
                    users.setdefault(name, {"day": day, "user": name})[field] = (
                        float(value) if field == "tunnel_seconds" else int(value))
            out += [dict({f: 0 for f in USAGE_FIELDS}, **users[name]) for name in sorted(users)]
        return out

    def purge_usage(self, before):
        days = self._call(self._client.zrangebylex, "afb:usage:days", "-", "(" + before)
        if not days:
            return 0
        pipe = self._client.pipeline(transaction=False)
        for day in days:
            pipe.hkeys("afb:usage:" + day)
        rows = sum(len({k.rpartition(_SEP)[0] for k in keys})
                   for keys in self._call(pipe.execute))
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(*["afb:usage:" + day for day in days])
        pipe.zrem("afb:usage:days", *days)
        self._call(pipe.execute)
        return rows

    # --- per-user limits ---------------------------------------------------------------------

    def set_user_limits(self, user, **values):
        fields = ("rate_down", "rate_up", "weight")
        unknown = set(values) - set(fields)
        if unknown:
            raise ValueError("unknown limit(s): %s" % ", ".join(sorted(unknown)))
        text = self._call(self._client.hget, "afb:limits", user)
        current = json.loads(text) if text else dict.fromkeys(fields)
        current.update({k: v for k, v in values.items() if v is not None})
        current["changed_at"] = time.time()
        self._call(self._client.hset, "afb:limits", user, json.dumps(current))

    def clear_user_limits(self, user):
        return self._call(self._client.hdel, "afb:limits", user) > 0

    def user_limits(self):
        rows = self._call(self._client.hgetall, "afb:limits")
        return {user: {k: json.loads(rows[user]).get(k) for k in ("rate_down", "rate_up",
                                                                   "weight")}
                for user in sorted(rows)}

    # --- what only several nodes share -------------------------------------------------------

    def streams_admit(self, node, user, count, limit):
        """This node has ``count`` streams of ``user`` (the new one included): -> (admitted,
        the sum over live nodes).  Refused: this node's count stays as it was."""
        ok, total = self._script("streams_admit", ("afb:nodes",),
                                 (node, user, int(count), int(limit), NODE_TTL))
        return bool(ok), int(total)

    def streams_publish(self, node, counts):
        """Heartbeat: this node's stream count per user (``{user: n}``), alive for NODE_TTL."""
        args = [node, NODE_TTL]
        for user, n in counts.items():
            args += [user, int(n)]
        self._script("streams_publish", ("afb:nodes",), args)

    def active_nodes(self, node, users, gone=()):
        """``users`` are active on ``node`` now, ``gone`` no longer -> ``{user: the number
        of nodes where it is active}`` (this one included)."""
        users = list(users)
        if not users and not gone:
            return {}
        counts = self._script("active_nodes", (), [node, NODE_TTL, len(users)] + users
                              + list(gone))
        return dict(zip(users, (int(n) for n in counts), strict=True))

    def auth_failed(self, key, weight, max_failures, window, ban_time):
        """A failed login of ``weight`` from address ``key``: True if it started a ban."""
        return bool(self._script("auth_failed", (), (key, float(weight), float(max_failures),
                                                     float(window), float(ban_time))))

    def banned_for(self, key):
        """Seconds of ban left for ``key`` (0: none)."""
        left = self._call(self._client.pttl, "afb:ban:" + key)
        return max(0.0, left / 1000.0) if left and left > 0 else 0.0

    def auth_succeeded(self, key):
        self._call(self._client.delete, "afb:fail:" + key)


def _token(text):
    row = json.loads(text)
    row.setdefault("fam", row["jti"])
    row.setdefault("refreshes", 0)
    return row


def _why(exc):
    """A short reason for a redis-py error, with the fix where one is known."""
    text = (str(exc) or type(exc).__name__).rstrip(".")
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
        return "%s (check the password in [server] state)" % text
    if isinstance(exc, redis.TimeoutError):
        return "no answer within [server] state_timeout (%s)" % text
    return text
