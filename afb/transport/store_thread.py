"""The state store, called from a thread of its own so that SQLite never stalls the loop.

SQLite calls are blocking C calls: under gevent, one that waits for a lock
(``afb token revoke`` or an admin's ``sqlite3`` shell holding the database;
the server's busy timeout is 5 s) freezes every tunnel of the process for
that long.  :class:`StoreThread` runs every call of the wrapped store in one
native worker thread (gevent's ThreadPool): the greenlet that asked waits,
the event loop and every other tunnel go on.  One thread keeps the store's
calls in order and its SQLite connection in one thread at a time.

What the server reads on its hot paths is cached above this (the upgrade's
revocation answers for 2 s, :class:`afb.state.RevocationCache`; revocations
are polled once a second), so a call here is rare and never on a stream's
data path.
"""

from gevent.threadpool import ThreadPool

__all__ = ["StoreThread"]


class StoreThread:
    """A store whose methods run in a worker thread; attributes pass through."""

    def __init__(self, store):
        self.store = store
        self._pool = ThreadPool(1)

    def __repr__(self):
        return "<StoreThread %r>" % (self.store,)

    def __getattr__(self, name):
        attribute = getattr(self.store, name)
        if not callable(attribute):
            return attribute
        pool = self._pool

        def call(*args, **kwargs):
            return pool.apply(attribute, args, kwargs)

        call.__name__ = name
        return call

    def close(self):
        """Close the store (in its thread), then end the thread."""
        try:
            self._pool.apply(self.store.close)
        finally:
            self._pool.kill()
