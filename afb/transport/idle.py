"""Idle timeouts: streams that carried no byte for a while are reset.

One sweeper greenlet per session looks at every stream's byte counters a few
times per timeout, so the data path pays nothing for it.  An idle stream is
reset with SOCKS5 code 0x06 (TTL expired) and one log line.
"""

import logging

import gevent

from afb.errors import REP_TTL_EXPIRED

log = logging.getLogger(__name__)


def sweep_idle(session, idle_timeout, clock=None):
    """Reset streams of ``session`` that moved no data for ``idle_timeout`` seconds."""
    clock = clock or session.clock
    interval = max(0.05, min(idle_timeout / 4.0, 30.0))
    seen = {}     # stream id -> (bytes moved, when that count was first seen)
    while not session.closed:
        gevent.sleep(interval)
        now = clock()
        current = {}
        for stream in list(session.streams.values()):
            moved = stream.bytes_in + stream.bytes_out
            previous = seen.get(stream.id)
            since = previous[1] if previous is not None and previous[0] == moved else now
            if now - since >= idle_timeout:
                log.info("%s: stream to %s idle for %.0f s; closing it",
                         session.label, stream.target, now - since)
                stream.reset(REP_TTL_EXPIRED, "idle for %.0f s" % (now - since))
                continue
            current[stream.id] = (moved, since)
        seen = current
