"""Memory budgets: how many bytes afb may hold for one tunnel and for one user.

Per-stream credit bounds what one stream can make the other end buffer, but
not what many streams together can: with the old defaults a tunnel could make
the server hold ~4 GiB (16,384 streams x 256 KiB), and a client that
advertised a huge window and never read its WebSocket grew the server by
1.9 GB in 4 s.  A :class:`ByteBudget` counts the bytes held on behalf of a
tunnel in one direction, optionally chained to the budget of the tunnel's
user, and the code that would add more asks :attr:`ByteBudget.exhausted`
first:

* **towards the peer** (frames queued for the WebSocket): a relay stops
  reading its socket while the tunnel's (or the user's) budget is exhausted
  and is woken once the writer has drained it below half: back-pressure on
  the destinations, not buffering;
* **from the peer** (data waiting for a slow local socket, or for a dial to
  finish): the tunnel's reader stops reading the WebSocket until the local
  sockets have taken enough, which pushes back on the peer through TCP.

Pure code: no gevent, no I/O.  Waiters are plain callables; whoever releases
bytes (the event loop, a greenlet) calls them.
"""

__all__ = ["ByteBudget", "UNLIMITED"]

#: A limit no real tunnel reaches (budgets that only count).
UNLIMITED = 1 << 62


class ByteBudget:
    """Bytes held against ``limit``, chained to an optional ``parent`` (the user's).

    ``charge(n)`` and ``release(n)`` count on this budget and its parent.
    :attr:`exhausted` is true while this budget or its parent is at or over
    its limit.  ``wait(callback)`` registers ``callback()`` with the budget
    that is exhausted; it is called (once) when that budget falls to half its
    limit or below.
    """

    __slots__ = ("limit", "low", "used", "peak", "parent", "name", "_waiters")

    def __init__(self, limit=UNLIMITED, parent=None, name=""):
        self.limit = int(limit) if limit else UNLIMITED
        self.low = self.limit // 2
        self.used = 0
        self.peak = 0
        self.parent = parent
        self.name = name
        self._waiters = None

    def __repr__(self):
        return "<ByteBudget %s %d/%d%s>" % (self.name, self.used, self.limit,
                                            " waiters=%d" % len(self._waiters)
                                            if self._waiters else "")

    @property
    def exhausted(self):
        if self.used >= self.limit:
            return True
        parent = self.parent
        return parent is not None and parent.used >= parent.limit

    @property
    def waiting(self):
        """How many callbacks wait for this budget to drain."""
        return len(self._waiters) if self._waiters else 0

    def charge(self, n):
        used = self.used = self.used + n
        if used > self.peak:
            self.peak = used
        parent = self.parent
        if parent is not None:
            parent.charge(n)

    def release(self, n):
        used = self.used = self.used - n
        if self._waiters is not None and used <= self.low:
            self._wake()
        parent = self.parent
        if parent is not None:
            parent.release(n)

    def wait(self, callback):
        """Call ``callback()`` once the exhausted budget (this or the parent) drains.

        A budget that is not exhausted (any more) calls it at once.
        """
        target = self
        if self.used < self.limit:
            parent = self.parent
            if parent is None or parent.used < parent.limit:
                callback()
                return
            target = parent
        if target._waiters is None:
            target._waiters = {}
        target._waiters[callback] = None

    def forget(self, callback):
        """Drop ``callback`` from the waiters (its owner went away)."""
        for budget in (self, self.parent):
            if budget is not None and budget._waiters:
                budget._waiters.pop(callback, None)

    def set_limit(self, limit):
        """Change the limit (a reload); waiters are woken if it now allows them."""
        self.limit = int(limit) if limit else UNLIMITED
        self.low = self.limit // 2
        if self._waiters is not None and self.used <= self.low:
            self._wake()

    def _wake(self):
        waiters, self._waiters = self._waiters, None
        for callback in waiters:
            callback()
