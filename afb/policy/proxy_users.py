"""Users of the client's local proxy: ``[client] users_file``, one ``user:password`` a line.

When a users file is set, SOCKS5 clients must use RFC 1929 username/password
authentication and HTTP proxy clients must send ``Proxy-Authorization: Basic``.
Blank lines and lines starting with ``#`` are ignored; the password is
everything after the first ``:`` (so it may contain ``:``).  ``afb client``
refuses a users file that group or others can read or write
(:mod:`afb.file_checks`), as it does a token file.
"""

import base64
import binascii
import hmac


class ProxyUsers:
    """``(user, password) -> bool`` for the local proxy, from a users file."""

    def __init__(self, users, source="users"):
        self._users = {u.encode("utf-8"): p.encode("utf-8") for u, p in dict(users).items()}
        self.source = source

    def __len__(self):
        return len(self._users)

    @classmethod
    def from_file(cls, path):
        """Read *path*; ValueError on a malformed line or an empty file, OSError if unreadable."""
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        users = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, password = line.partition(":")
            if not sep or not user or not password:
                raise ValueError("%s:%d: expected user:password" % (path, number))
            if len(user.encode("utf-8")) > 255 or len(password.encode("utf-8")) > 255:
                raise ValueError("%s:%d: user and password are limited to 255 bytes (SOCKS5)"
                                 % (path, number))
            users[user] = password
        if not users:
            raise ValueError("%s: no user:password lines" % path)
        return cls(users, source=path)

    def __call__(self, user, password):
        expected = self._users.get(user.encode("utf-8"))
        given = password.encode("utf-8")
        if expected is None:
            hmac.compare_digest(given, given)     # about the same time for unknown users
            return False
        return hmac.compare_digest(expected, given)


def parse_basic(header_value):
    """``(user, password)`` of a ``Basic <base64 user:password>`` value, else None."""
    scheme, _, blob = (header_value or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(blob.strip(), validate=True).decode(
            "utf-8").partition(":")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep else None
