"""STREAM rows (docs/control-protocol.rst) from live streams, and choosing among them.

Everything here reads attributes the data path keeps for its own use: the
stream's byte counts, ends and buffers, its relay's socket.  The address a
server stream dialled is asked of that socket (``getpeername``) only when a
row is made, so the dial itself pays nothing for it.
"""

import socket

from afb.codec.aead_records import cipher_name

__all__ = ["stream_row", "tunnel_cipher", "resolved_address", "select_streams", "SORT_FIELDS"]

#: STREAM fields a reader may sort by.
SORT_FIELDS = ("id", "tunnel", "user", "app", "host", "port", "resolved", "opened", "age",
               "state", "bytes_up", "bytes_down", "rate_up", "rate_down", "buffered")
#: Fields the filter text is looked for in (and the destination as "host:port").
_FILTERED = ("user", "app", "state", "resolved", "id")


def stream_row(monitor, session, stream, user, now, wall):
    """The STREAM dict of ``stream`` (rates are the caller's: they are per reader)."""
    up, down = monitor.up_down(stream.bytes_in, stream.bytes_out)
    origin = stream.origin
    if origin is not None:          # client: the app's address and its proxy login
        app, user = origin
    else:
        app = None
    return {"id": "%d/%d" % (session.number, stream.id), "tunnel": session.number,
            "user": user, "app": app, "host": stream.host, "port": stream.port,
            "resolved": resolved_address(stream) if monitor.role == "server" else None,
            "opened": wall - (now - stream.opened_at), "age": now - stream.opened_at,
            "state": stream_state(stream), "bytes_up": up, "bytes_down": down,
            "rate_up": 0.0, "rate_down": 0.0, "buffered": stream.buffered}


def stream_state(stream):
    """opening (no local socket yet: dialling, or waiting for the app's answer), open,
    or half-closed (one way ended)."""
    if stream.sink is None:
        return "opening"
    if stream.local_fin or stream.remote_fin:
        return "half-closed"
    return "open"


def tunnel_cipher(session):
    """The E2E cipher's name, or None without E2E."""
    cipher = getattr(session.ws, "cipher", None)
    return cipher_name(cipher) if cipher is not None else None


def resolved_address(stream):
    """The address a server stream's socket is connected to, "host:port", or None."""
    sock = getattr(stream.sink, "sock", None)
    if sock is None:
        return None
    try:
        host, port = sock.getpeername()[:2]
    except (OSError, ValueError, TypeError):
        return None
    return ("[%s]:%d" if sock.family == socket.AF_INET6 else "%s:%d") % (host, port)


def select_streams(rows, text=None, sort="opened", desc=False, limit=1000):
    """-> (how many matched ``text``, the first ``limit`` of them sorted by ``sort``).

    ``text``: case-insensitive substring of the destination, user, app, state,
    resolved address or id.  A missing value (None) sorts as the smallest.
    """
    if text:
        needle = text.lower()
        rows = [row for row in rows
                if needle in "%s:%s" % (str(row.get("host")).lower(), row.get("port"))
                or any(needle in str(row.get(field) or "").lower() for field in _FILTERED)]
    present = [row for row in rows if row.get(sort) is not None]
    missing = [row for row in rows if row.get(sort) is None]
    present.sort(key=lambda row: row[sort], reverse=desc)
    chosen = missing + present if not desc else present + missing
    return len(rows), chosen[:limit]
