"""The server's state store: token revocations, issued tokens, usage, per-user limits.

One node keeps it in an embedded SQLite file (:mod:`afb.state_sqlite`, the
default); several nodes share one Redis (``[server] state = redis://...``,
:mod:`afb.state_redis`).  :func:`open_store` is the one place that picks.

The interface is deliberately small so that a shared store (Redis, for
several servers) can implement the same methods:

``revoke_jti(jti, exp=None, reason) -> {"family", "sub", "exp"}``
    refuse the token ``jti`` and its whole family (the tokens refreshed from
    the same first token, :mod:`afb.policy.lineage`): the family is looked up
    in the issued-token list, else read from the jti.  ``exp``: when the rows
    may be purged (default: the family's latest known expiry; None keeps
    them until removed by hand).
``revoke_subject(sub, before_ts=None, reason)``
    refuse every token of ``sub`` issued (``iat``) before ``before_ts``
    (default: now); tokens issued later work.  Tokens issued within the same
    second as the revocation are refused too (``iat`` has whole seconds).
``is_revoked(claims) -> reason or None``
    the check of verified claims (``jti``, ``fam``, ``sub``, ``iat``).
``list_revocations()`` / ``revocations_since(ts)`` -> ``[dict]``
    ``{"kind": "jti"|"sub", "value", "reason", "revoked_at", "exp"|"before"}``,
    all of them, or those made (``revoked_at``) at or after ``ts``: what a
    running server polls to close the live tunnels of revoked tokens (with a
    shared store: a pub/sub channel instead).  A "jti" value is a token id or
    a family id: it refuses the tokens whose jti or family it is.
``record_issued(claims, kid=None)`` / ``list_tokens() -> [dict]``
    the issued-token list ``{"jti", "fam", "refreshes", "sub", "iat", "exp",
    "kid", "revoked"}`` (``revoked``: the reason, or None).  A family keeps
    two rows at most, however often it is refreshed: its first token and its
    newest refresh (``refreshes``: how many there were).
``purge_expired(now=None, keep=PURGE_KEEP)``
    drop token and jti-revocation rows expired more than ``keep`` s ago.
``add_usage(rows)`` / ``usage(since, until, user) -> [dict]`` / ``purge_usage(before)``
    usage per UTC day and user (:mod:`afb.monitor.usage`): ``add_usage`` adds
    the increments of a flush (``peak_streams``: the larger one stays);
    ``usage`` lists rows with ``since <= day <= until`` ("YYYY-MM-DD", None:
    no bound); ``purge_usage`` drops the days before ``before``.
``set_user_limits(user, rate_down=, rate_up=, weight=)`` / ``clear_user_limits(user)`` /
``user_limits() -> {user: dict}``
    per-user bandwidth limits and fair-share weights (:mod:`afb.transport.shaper`),
    read by the server at start and on SIGHUP.
``close()``

Shared between several servers (issue 14), only with the Redis store
(:mod:`afb.state_redis`, ``[server] state = redis://...``); one SQLite
server keeps these in its memory (:class:`afb.policy.access.AuthThrottle`,
:class:`afb.transport.users.UserRegistry`), where nobody else needs them:

``watch_revocations(callback)``
    a push: ``callback(rows)`` for each revocation as it is made (pub/sub),
    besides the poll of ``revocations_since``.
``streams_admit(node, user, count, limit)`` / ``streams_publish(node, counts)``
    per-user stream counts over every node: ``count`` is this node's; the
    admission is refused when the nodes' sum would pass ``limit``.
``active_nodes(node, users) -> {user: nodes}``
    QoS: on how many nodes each user is active, for its rate share.
``auth_failed(key, weight, max_failures, window, ban_time)`` / ``banned_for(key)`` /
``auth_succeeded(key)``
    failed-login counting and bans of an address, with TTLs.
``probe()``
    one cheap round trip: True if the store answers (the reconnect loop).

A store that cannot be reached raises :class:`StateUnavailable` (an
:class:`~afb.errors.AuthError` answered with HTTP 503 at an upgrade);
:data:`STORE_ERRORS` is what callers catch for "the store failed".

:class:`RevocationCache` puts a short cache (2 s by default) in front of
``is_revoked`` for the server's upgrade checks; the server empties it when
its poll sees a new revocation.
"""

import os
import sqlite3
import time

from afb.errors import SignedTokenRefused
from afb.state_sqlite import (  # noqa: F401  (the SQLite store and its names, re-exported)
    DB_NAME,
    PURGE_KEEP,
    SCHEMA_VERSION,
    USAGE_FIELDS,
    StateStore,
)

#: Seconds a running server may use a cached revocation answer.
REVOCATION_CACHE_SECONDS = 2.0

class StateUnavailable(SignedTokenRefused):
    """The shared state store cannot be reached now (Redis down, timed out, refused us).

    At an upgrade with a valid token: HTTP 503 under ``state_unavailable =
    fail-closed`` (:mod:`afb.transport.shared_state`); elsewhere a store error.
    """

    http_status = 503


#: What callers catch when a store call failed (either backend).
STORE_ERRORS = (sqlite3.Error, StateUnavailable)


def store_path(state_dir):
    """The SQLite file inside ``state_dir``."""
    return os.path.join(state_dir, DB_NAME)


def open_store(cfg, **kwargs):
    """The state store of a server config: ``[server] state`` (Redis) or ``state_dir``.

    The one place that picks the backend.  ``timeout``: seconds a call may
    wait (SQLite: for a lock; Redis: for an answer, default ``state_timeout``).
    """
    server = cfg["server"]
    url = server.get("state") or ""
    if url:
        try:
            from afb.state_redis import RedisStore
        except ImportError as exc:
            raise StateUnavailable("[server] state = redis://... needs redis-py (Debian: apt "
                                   "install python3-redis; pip: pip install 'afb[redis]'): %s"
                                   % exc) from None
        # The server passes state_timeout; a command may wait longer (5 s).
        timeout = kwargs.get("timeout") or max(5.0, server.get("state_timeout") or 0)
        return RedisStore(url, timeout=timeout)
    return StateStore(store_path(server["state_dir"]), **kwargs)


def describe_store(cfg):
    """Where the store is, for messages: ``state store in DIR`` or ``state store redis://...``
    (the password left out)."""
    url = cfg["server"].get("state") or ""
    if url:
        from afb.config_values import masked_url

        return "state store %s" % masked_url(url)
    return "state store in %s" % cfg["server"]["state_dir"]


class RevocationCache:
    """``is_revoked`` answers of ``store`` kept ``ttl`` seconds (per jti/sub/iat)."""

    def __init__(self, store, ttl=REVOCATION_CACHE_SECONDS, max_entries=10000,
                 clock=time.monotonic):
        self.store = store
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._cache = {}

    def is_revoked(self, claims):
        key = (claims.get("jti"), claims.get("sub"), claims.get("iat"))
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        reason = self.store.is_revoked(claims)
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[key] = (now, reason)
        return reason

    def clear(self):
        """Forget every answer (a revocation was just seen)."""
        self._cache.clear()

    def close(self):
        self.store.close()
