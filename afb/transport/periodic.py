"""A look every few seconds, in its own greenlet: the server's pollers share this.

:class:`Periodic` calls ``self.tick()`` every ``interval`` seconds between
``start()`` and ``stop()``; the revocation poll and the watch over the
host's addresses (:mod:`afb.apps.live_tokens`, :mod:`afb.apps.own_addresses`)
subclass it.  ``tick`` handles its own errors: an exception escaping it ends
the greenlet (gevent prints it), so the subclasses catch what they expect.
"""

import gevent


class Periodic:
    """``tick()`` every ``interval`` seconds in one greenlet; ``start``/``stop`` are idempotent."""

    interval = 1.0
    _greenlet = None

    def start(self):
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self):
        while True:
            gevent.sleep(self.interval)
            self.tick()

    def tick(self):
        raise NotImplementedError
