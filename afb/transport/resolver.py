"""Cached, single-flight, time-limited host name resolution (server side).

Lookups go through gevent's hub resolver (``gevent.socket.getaddrinfo``,
whether or not the socket module is monkey-patched).  We keep gevent's
default *thread* resolver: it is the system getaddrinfo, so it honours
nsswitch.conf, /etc/hosts, /etc/gai.conf address ordering and search domains
exactly like every other program on the host.  The c-ares resolver also works
offline for /etc/hosts names (checked with gevent 26: ``localhost`` and other
/etc/hosts names resolve with ``GEVENT_RESOLVER=ares``), so an operator may
pick it with that environment variable (it must be set before the hub
starts); we do not set it ourselves.

Note that a timed-out thread lookup cannot be cancelled: the asking greenlet
stops waiting, but the worker thread keeps running until getaddrinfo returns.
Failures, timeouts included, are therefore negatively cached, and concurrent
askers for one name share a single lookup.
"""

import _socket
import collections
import ipaddress
import logging
import socket
import time

import gevent
import gevent.socket
from gevent.event import AsyncResult

from afb.errors import HostUnreachable

__all__ = ["Resolver"]

log = logging.getLogger(__name__)

_Entry = collections.namedtuple("_Entry", "expires addrs error")


def _literal(host, port):
    """[(family, sockaddr)] if ``host`` is an IP literal, else None (no I/O)."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return None
    # AI_NUMERICHOST never touches the network; the C module (never patched)
    # is used so this does not even go through the resolver thread pool.
    try:
        infos = _socket.getaddrinfo(text, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    except (OSError, UnicodeError) as exc:  # e.g. an unknown IPv6 scope id
        raise HostUnreachable("cannot resolve %s: %s" % (host, _reason(exc))) from None
    return [(socket.AddressFamily(info[0]), info[4]) for info in infos[:1]]


def _cancelled(host):
    return HostUnreachable("cannot resolve %s: cancelled" % host)


def _reason(exc):
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or exc.__class__.__name__


def _with_port(sockaddr, port):
    return (sockaddr[0], port) + tuple(sockaddr[2:])


class Resolver:
    """``resolve(host, port)`` -> ``[(family, sockaddr), ...]`` in getaddrinfo order.

    * IP literals are returned directly, without a lookup.
    * Results are cached per lower-cased name for ``cache_ttl`` seconds,
      failures for ``negative_ttl`` seconds (0 disables either cache); the
      cache holds at most ``max_entries`` names, the oldest are evicted first.
    * Concurrent askers for the same name wait on one lookup.
    * A lookup taking longer than ``timeout`` seconds fails.
    * Every failure raises :class:`afb.errors.HostUnreachable` (SOCKS5 reply
      0x04) with the message ``cannot resolve NAME: reason``.

    ``resolve_fn(host, port, family, type)`` defaults to gevent's
    getaddrinfo; ``clock`` to :func:`time.monotonic` (both injectable for tests).
    ``stats`` counts hits, negative_hits, misses, joined (waited on another
    asker's lookup), lookups, failures, timeouts and evictions.
    """

    def __init__(self, cache_ttl=300, negative_ttl=30, timeout=5, max_entries=10000,
                 resolve_fn=None, clock=time.monotonic):
        self.cache_ttl = cache_ttl
        self.negative_ttl = negative_ttl
        self.timeout = timeout
        self.max_entries = max(1, int(max_entries))
        self._resolve_fn = resolve_fn or gevent.socket.getaddrinfo
        self._clock = clock
        self._cache = collections.OrderedDict()  # key -> _Entry, oldest first
        self._inflight = {}  # key -> AsyncResult
        self.stats = collections.Counter()

    def __len__(self):
        return len(self._cache)

    def clear(self):
        self._cache.clear()

    def invalidate(self, host):
        self._cache.pop(host.lower(), None)

    def resolve(self, host, port):
        if not host:
            raise HostUnreachable("cannot resolve an empty host name")
        addrs = _literal(host, port)
        if addrs is not None:
            return addrs

        key = host.lower()
        entry = self._cache.get(key)
        if entry is not None:
            if entry.expires > self._clock():
                if entry.error is not None:
                    self.stats["negative_hits"] += 1
                    raise HostUnreachable(entry.error)
                self.stats["hits"] += 1
                return [(family, _with_port(sa, port)) for family, sa in entry.addrs]
            del self._cache[key]

        result = self._inflight.get(key)
        if result is None:
            self.stats["misses"] += 1
            result = self._inflight[key] = AsyncResult()
            # The lookup runs in its own greenlet so that killing one asker
            # (its stream went away) never strands the others.
            gevent.spawn(self._lookup, key, host, port, result)
        else:
            self.stats["joined"] += 1
        try:
            addrs = result.get()
        except HostUnreachable as exc:  # a fresh exception for every asker
            raise HostUnreachable(str(exc)) from None
        return [(family, _with_port(sa, port)) for family, sa in addrs]

    # -- internals -------------------------------------------------------------

    def _lookup(self, key, host, port, result):
        self.stats["lookups"] += 1
        started = self._clock()
        timer = gevent.Timeout(self.timeout) if self.timeout else None
        try:
            if timer is not None:
                timer.start()
            try:
                infos = self._resolve_fn(host, port, 0, socket.SOCK_STREAM)
            finally:
                if timer is not None:
                    timer.close()
            addrs = []
            for info in infos:
                family, sockaddr = info[0], info[4]
                if family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                item = (socket.AddressFamily(family), tuple(sockaddr))
                if item not in addrs:
                    addrs.append(item)
            if not addrs:
                raise OSError(0, "no IPv4 or IPv6 address")
        except gevent.Timeout as exc:
            if exc is not timer:
                self._fail(key, result, _cancelled(host), cache=False)
                raise
            self.stats["timeouts"] += 1
            self._fail(key, result, HostUnreachable(
                "cannot resolve %s: timed out after %gs" % (host, self.timeout)))
        except (OSError, UnicodeError, ValueError) as exc:  # gaierror, herror, IDNA, ...
            self._fail(key, result, HostUnreachable("cannot resolve %s: %s" % (host, _reason(exc))))
        except BaseException:  # killed: do not strand the waiters
            self._fail(key, result, _cancelled(host), cache=False)
            raise
        else:
            log.debug("resolved %s in %.3fs: %s", host, self._clock() - started,
                      ", ".join(sa[0] for _f, sa in addrs))
            if self.cache_ttl and self.cache_ttl > 0:
                self._store(key, _Entry(self._clock() + self.cache_ttl, addrs, None))
            self._inflight.pop(key, None)
            result.set(addrs)

    def _fail(self, key, result, exc, cache=True):
        self.stats["failures"] += 1
        log.debug("%s", exc)
        if cache and self.negative_ttl and self.negative_ttl > 0:
            self._store(key, _Entry(self._clock() + self.negative_ttl, None, str(exc)))
        self._inflight.pop(key, None)
        result.set_exception(exc)

    def _store(self, key, entry):
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
            self.stats["evictions"] += 1
