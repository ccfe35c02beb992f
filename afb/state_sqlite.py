"""The embedded SQLite state store: one node's revocations, tokens, usage and limits.

The default store (``[server] state`` empty): a file ``[server] state_dir``
/ ``afb.sqlite3`` (directory 0700, file 0600), shared by the one server
process (reads on every tunnel upgrade, and a poll for new revocations
about once a second) and the ``afb token`` / ``afb user`` / ``afb report``
commands (writes).  WAL journal mode lets the server read while a command
writes; every connection waits up to ``timeout`` seconds for a lock.  The
methods are the store interface described in :mod:`afb.state` (the Redis
store, :mod:`afb.state_redis`, has the same ones for several nodes).
"""

import os
import sqlite3
import threading
import time

from afb.policy.lineage import family_of, family_of_jti, with_reason

DB_NAME = "afb.sqlite3"
#: 2: token families (tokens.fam, tokens.refreshes), revocations indexed by time.
#: 3: usage per day and user (a new table: CREATE TABLE IF NOT EXISTS migrates).
#: 4: per-user bandwidth limits (user_limits, a new table too).
SCHEMA_VERSION = 4
#: Rows are purged this long after their token expired (> any clock leeway).
PURGE_KEEP = 86400
_TABLES = """
CREATE TABLE IF NOT EXISTS tokens (
    jti TEXT PRIMARY KEY, sub TEXT NOT NULL, iat INTEGER NOT NULL, exp INTEGER NOT NULL,
    kid TEXT, recorded_at REAL NOT NULL, fam TEXT, refreshes INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS revoked_jti (
    jti TEXT PRIMARY KEY, exp INTEGER, reason TEXT NOT NULL DEFAULT '',
    revoked_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS revoked_sub (
    sub TEXT PRIMARY KEY, before_ts REAL NOT NULL, reason TEXT NOT NULL DEFAULT '',
    revoked_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL, user TEXT NOT NULL, bytes_up INTEGER NOT NULL DEFAULT 0,
    bytes_down INTEGER NOT NULL DEFAULT 0, streams INTEGER NOT NULL DEFAULT 0,
    peak_streams INTEGER NOT NULL DEFAULT 0, tunnel_seconds REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (day, user));
CREATE TABLE IF NOT EXISTS user_limits (
    user TEXT PRIMARY KEY, rate_down REAL, rate_up REAL, weight REAL,
    changed_at REAL NOT NULL);
"""
USAGE_FIELDS = ("bytes_up", "bytes_down", "streams", "peak_streams", "tunnel_seconds")
# After the migration: the indexes need its columns.
_INDEXES = """
CREATE INDEX IF NOT EXISTS tokens_sub ON tokens (sub);
CREATE INDEX IF NOT EXISTS tokens_fam ON tokens (fam);
CREATE INDEX IF NOT EXISTS revoked_jti_at ON revoked_jti (revoked_at);
CREATE INDEX IF NOT EXISTS revoked_sub_at ON revoked_sub (revoked_at);
"""



def _same_owner_as(path, directory):
    """As root, give a new file to the owner of its directory (the service user)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        info = os.stat(directory)
        if (info.st_uid, info.st_gid) != (0, 0):
            os.chown(path, info.st_uid, info.st_gid)


class StateStore:
    """SQLite-backed store; see the module doc for the interface."""

    def __init__(self, path, timeout=10.0, create=True):
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            if not create:
                raise FileNotFoundError("state directory %s does not exist" % directory)
            os.makedirs(directory, mode=0o700)
            os.chmod(directory, 0o700)
        if not os.path.exists(path):
            if not create:
                raise FileNotFoundError("state store %s does not exist" % path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            _same_owner_as(path, directory)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        try:
            self._first("PRAGMA journal_mode=WAL")   # answers with a row
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._write():
                version = self._first("PRAGMA user_version")[0]
                if version > SCHEMA_VERSION:
                    raise sqlite3.DatabaseError("%s has schema %d, newer than this afb (%d)"
                                                % (path, version, SCHEMA_VERSION))
                self._run_script(_TABLES)
                if version < 2:
                    self._migrate_to_families()
                self._run_script(_INDEXES)
                self._db.execute("PRAGMA user_version=%d" % SCHEMA_VERSION)
        except BaseException:
            self._db.close()
            raise

    def _run_script(self, script):
        for statement in script.split(";"):
            if statement.strip():
                self._db.execute(statement)

    def _migrate_to_families(self):
        """Schema 1 -> 2: every recorded token is the first of its own family."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(tokens)").fetchall()}
        if "fam" not in columns:
            self._db.execute("ALTER TABLE tokens ADD COLUMN fam TEXT")
        if "refreshes" not in columns:
            self._db.execute("ALTER TABLE tokens ADD COLUMN refreshes INTEGER NOT NULL DEFAULT 0")
        self._db.execute("UPDATE tokens SET fam = jti WHERE fam IS NULL")

    # --- plumbing -------------------------------------------------------------

    class _Tx:
        def __init__(self, store):
            self.store = store

        def __enter__(self):
            self.store._lock.acquire()
            try:
                self.store._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.store._lock.release()
                raise

        def __exit__(self, kind, *_):
            try:
                self.store._db.execute("COMMIT" if kind is None else "ROLLBACK")
            finally:
                self.store._lock.release()

    def _write(self):
        return self._Tx(self)

    def _first(self, sql, args=()):
        """The first row of ``sql`` or None, its statement finished at once: a
        ``fetchone()`` left pending until the cursor is collected would make a
        later COMMIT fail ("SQL statements in progress") where collection is late."""
        rows = self._db.execute(sql, args).fetchall()
        return rows[0] if rows else None

    def _query(self, sql, args=()):
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self):
        with self._lock:
            self._db.close()

    # --- revocations --------------------------------------------------------------

    def revoke_jti(self, jti, exp=None, reason=""):
        """Refuse ``jti`` and its family -> ``{"family", "sub", "exp"}`` (module doc)."""
        if not jti or not isinstance(jti, str):
            raise ValueError("a token id (jti) is needed")
        with self._write():
            row = self._first("SELECT sub, fam FROM tokens WHERE jti = ?", (jti,))
            family = row["fam"] if row is not None and row["fam"] else family_of_jti(jti)
            known = self._first("SELECT MAX(sub) AS sub, MAX(exp) AS exp FROM tokens "
                                "WHERE fam = ?", (family,))
            exp = known["exp"] if exp is None else exp
            now = time.time()
            for value in sorted({jti, family}):
                self._db.execute(
                    "INSERT INTO revoked_jti (jti, exp, reason, revoked_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (jti) DO UPDATE SET reason = excluded.reason, "
                    "exp = COALESCE(excluded.exp, revoked_jti.exp)",
                    (value, None if exp is None else int(exp), reason or "", now))
        return {"family": family, "sub": row["sub"] if row is not None else known["sub"],
                "exp": exp}

    def revoke_subject(self, sub, before_ts=None, reason=""):
        """Refuse tokens of ``sub`` issued before ``before_ts`` (default now); -> before_ts."""
        if not sub or not isinstance(sub, str):
            raise ValueError("a subject (user name) is needed")
        now = time.time()
        before_ts = now if before_ts is None else float(before_ts)
        with self._write():
            self._db.execute(
                "INSERT INTO revoked_sub (sub, before_ts, reason, revoked_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sub) DO UPDATE SET before_ts = MAX(before_ts, excluded.before_ts), "
                "reason = excluded.reason, revoked_at = excluded.revoked_at",
                (sub, before_ts, reason or "", now))
        return before_ts

    def is_revoked(self, claims):
        """A short reason if the verified ``claims`` are revoked, else None."""
        jti, sub, iat = claims.get("jti"), claims.get("sub"), claims.get("iat")
        with self._lock:
            row = self._first("SELECT reason FROM revoked_jti WHERE jti IN (?, ?) LIMIT 1",
                              (str(jti), str(family_of(claims))))
            if row is not None:
                return with_reason("token revoked", row["reason"])
            row = self._first("SELECT before_ts, reason FROM revoked_sub WHERE sub = ?",
                              (str(sub),))
        if row is not None:
            if not isinstance(iat, (int, float)) or iat < row["before_ts"]:
                return with_reason("subject revoked", row["reason"])
        return None

    def list_revocations(self):
        return self._revocations("", ())

    def revocations_since(self, since):
        """Revocations made at or after ``since`` (epoch s), oldest first.

        Index range scans: the cost is that of the new rows, whatever the
        number of older ones.
        """
        return self._revocations("WHERE revoked_at >= ?", (since,))

    def _revocations(self, where, args):
        out = [{"kind": "jti", "value": r["jti"], "exp": r["exp"], "reason": r["reason"],
                "revoked_at": r["revoked_at"]}
               for r in self._query("SELECT * FROM revoked_jti %s ORDER BY revoked_at" % where,
                                    args)]
        out += [{"kind": "sub", "value": r["sub"], "before": r["before_ts"],
                 "reason": r["reason"], "revoked_at": r["revoked_at"]}
                for r in self._query("SELECT * FROM revoked_sub %s ORDER BY revoked_at" % where,
                                     args)]
        return out

    # --- issued tokens --------------------------------------------------------------

    def record_issued(self, claims, kid=None):
        """Record a token; a refresh replaces its family's previous refresh (module doc)."""
        family = family_of(claims)
        with self._write():
            refreshes = 0
            if family != claims["jti"]:
                previous = self._first("SELECT MAX(refreshes) FROM tokens WHERE fam = ?",
                                       (family,))[0]
                refreshes = (previous or 0) + 1
                self._db.execute("DELETE FROM tokens WHERE fam = ? AND jti != fam", (family,))
            self._db.execute(
                "INSERT OR REPLACE INTO tokens (jti, sub, iat, exp, kid, recorded_at, fam, "
                "refreshes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (claims["jti"], claims["sub"], int(claims["iat"]), int(claims["exp"]), kid,
                 time.time(), family, refreshes))

    def list_tokens(self):
        """Issued tokens by family (families oldest first, each first token then its
        newest refresh), each with ``revoked``: reason or None."""
        rows = self._query(
            "SELECT t.jti, t.fam, t.refreshes, t.sub, t.iat, t.exp, t.kid, "
            "(SELECT j.reason FROM revoked_jti j WHERE j.jti IN (t.jti, t.fam) LIMIT 1) "
            "AS jti_reason, s.before_ts, s.reason AS sub_reason "
            "FROM tokens t LEFT JOIN revoked_sub s ON s.sub = t.sub "
            "ORDER BY MIN(t.iat) OVER (PARTITION BY t.fam), t.fam, t.refreshes, t.jti")
        out = []
        for r in rows:
            revoked = None
            if r["jti_reason"] is not None:
                revoked = with_reason("token revoked", r["jti_reason"])
            elif r["before_ts"] is not None and r["iat"] < r["before_ts"]:
                revoked = with_reason("subject revoked", r["sub_reason"])
            out.append({"jti": r["jti"], "fam": r["fam"] or r["jti"], "refreshes": r["refreshes"],
                        "sub": r["sub"], "iat": r["iat"], "exp": r["exp"], "kid": r["kid"],
                        "revoked": revoked})
        return out

    def lookup_token(self, jti):
        """The recorded token ``jti`` as a dict, or None."""
        rows = self._query("SELECT jti, fam, refreshes, sub, iat, exp, kid FROM tokens "
                           "WHERE jti = ?", (jti,))
        return dict(rows[0]) if rows else None

    def purge_expired(self, now=None, keep=PURGE_KEEP):
        """Drop rows of tokens expired more than ``keep`` seconds ago -> rows removed."""
        limit = (time.time() if now is None else now) - keep
        with self._write():
            a = self._db.execute("DELETE FROM tokens WHERE exp < ?", (limit,)).rowcount
            b = self._db.execute("DELETE FROM revoked_jti WHERE exp IS NOT NULL AND exp < ?",
                                 (limit,)).rowcount
        return a + b

    # --- usage per day and user ------------------------------------------------------

    def add_usage(self, rows):
        """Add the increments ``[{"day", "user", *USAGE_FIELDS}]`` in one transaction."""
        with self._write():
            self._db.executemany(
                "INSERT INTO usage (day, user, bytes_up, bytes_down, streams, peak_streams, "
                "tunnel_seconds) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, user) DO UPDATE "
                "SET bytes_up = bytes_up + excluded.bytes_up, "
                "bytes_down = bytes_down + excluded.bytes_down, "
                "streams = streams + excluded.streams, "
                "peak_streams = MAX(peak_streams, excluded.peak_streams), "
                "tunnel_seconds = tunnel_seconds + excluded.tunnel_seconds",
                [(r["day"], r["user"]) + tuple(r[f] for f in USAGE_FIELDS) for r in rows])

    def usage(self, since=None, until=None, user=None):
        """Rows ``{"day", "user", *USAGE_FIELDS}`` by day then user (module doc)."""
        return [dict(r) for r in self._query(
            "SELECT day, user, %s FROM usage WHERE (? IS NULL OR day >= ?) AND "
            "(? IS NULL OR day <= ?) AND (? IS NULL OR user = ?) ORDER BY day, user"
            % ", ".join(USAGE_FIELDS), (since, since, until, until, user, user))]

    def purge_usage(self, before):
        """Drop the usage rows of the days before ``before`` ("YYYY-MM-DD") -> rows removed."""
        with self._write():
            return self._db.execute("DELETE FROM usage WHERE day < ?", (before,)).rowcount


    # --- per-user limits (issue 13) --------------------------------------------------

    def set_user_limits(self, user, **values):
        """Set some of ``rate_down``, ``rate_up`` (bytes/s, 0: unlimited), ``weight``
        of ``user``; a value None leaves it as it was (unset: the config's default)."""
        fields = ("rate_down", "rate_up", "weight")
        unknown = set(values) - set(fields)
        if unknown:
            raise ValueError("unknown limit(s): %s" % ", ".join(sorted(unknown)))
        with self._write():
            row = self._first("SELECT rate_down, rate_up, weight FROM user_limits WHERE user = ?",
                              (user,))
            current = dict(zip(fields, row, strict=True)) if row else dict.fromkeys(fields)
            current.update({k: v for k, v in values.items() if v is not None})
            self._db.execute(
                "INSERT OR REPLACE INTO user_limits (user, rate_down, rate_up, weight, "
                "changed_at) VALUES (?, ?, ?, ?, ?)",
                (user, current["rate_down"], current["rate_up"], current["weight"], time.time()))

    def clear_user_limits(self, user):
        """Back to the config's defaults -> True if ``user`` had limits."""
        with self._write():
            return self._db.execute("DELETE FROM user_limits WHERE user = ?",
                                    (user,)).rowcount > 0

    def user_limits(self):
        """``{user: {"rate_down", "rate_up", "weight"}}`` (None: the config's default)."""
        return {r["user"]: {"rate_down": r["rate_down"], "rate_up": r["rate_up"],
                            "weight": r["weight"]}
                for r in self._query("SELECT user, rate_down, rate_up, weight FROM user_limits "
                                     "ORDER BY user")}
