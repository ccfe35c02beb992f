"""The client's token: where it comes from, when it needs refreshing, where a fresh one goes.

A token given inline in the config lives in memory; a ``token_file`` is read
at every (re)connect and rewritten (0600, atomically) when the server hands
out a fresh token, so a restarted client starts with the newest one.
"""

import logging
import os
import time

from afb.file_trust import write_secret
from afb.policy.token_check import unverified_claims

log = logging.getLogger(__name__)

#: Refresh once this fraction of the token's lifetime has passed.
REFRESH_AT = 0.75


def token_times(token):
    """``(iat, exp)`` read from a JWT's payload without verifying it (None when unreadable).

    The client only uses these to schedule a refresh; the server verifies.
    """
    claims = unverified_claims(token)
    if claims is None:
        return None
    try:
        exp = float(claims["exp"])
        iat = float(claims.get("iat", claims.get("nbf", exp - 3600)))
        return iat, exp
    except (IndexError, KeyError, TypeError, ValueError):
        return None


class ClientToken:
    """The token a client presents; ``store()`` keeps a refreshed one."""

    def __init__(self, token="", path=""):
        self.path = path or ""
        self._token = (token or "").strip()
        if not self._token and not self.path:
            raise ValueError("either a token or a token_file is needed")
        self.current()   # fail early on an unreadable file

    @property
    def where(self):
        """Where the token comes from, for messages."""
        return self.path or "[client] token"

    def current(self):
        if self.path:
            with open(self.path, encoding="ascii", errors="replace") as handle:
                self._token = handle.read().strip()
        return self._token

    __call__ = current

    def last(self):
        """The token last read or stored, without reading the file again."""
        return self._token

    def file_state(self):
        """What changes when the token file is replaced or rewritten (None: no file)."""
        if not self.path:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return ()
        return st.st_ino, st.st_size, st.st_mtime_ns

    def store(self, token):
        self._token = token
        if self.path:
            write_secret(self.path, token + "\n")
        else:
            log.info("refreshed token kept in memory (the config has the token inline; "
                     "use token_file to keep refreshed tokens across restarts)")

    def refresh_due(self, now=None):
        """Seconds until a refresh is due (<= 0: now); None if the token has no readable expiry."""
        times = token_times(self._token)
        if times is None:
            return None
        iat, exp = times
        now = time.time() if now is None else now
        return iat + max(exp - iat, 1.0) * REFRESH_AT - now
