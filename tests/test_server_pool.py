"""The ServerPool's choice (afb/transport/server_pool.py) on its own: which server and
which tunnel a new stream takes.  The tunnels are stand-ins exposing what the pool
reads of a TunnelClient (``live_session``, ``sessions``, ``ready``, ``url``,
``last_error``); tests/test_failover.py does the same with real processes."""

import time

import gevent
import pytest
from gevent.event import Event

from afb.errors import TunnelUnavailable
from afb.transport import server_pool
from afb.transport.server_pool import ServerPool


class Tunnel:
    def __init__(self, url):
        self.url = url
        self.session = None
        self.sessions = set()
        self.ready = Event()
        self.last_error = ""
        self.tally = None

    def live_session(self):
        return self.session

    def up(self, rtt=None, streams=0, age=10.0):
        self.session = Session(rtt, streams, age)
        self.sessions.add(self.session)
        self.ready.set()
        return self.session

    def down(self, error="refused"):
        self.session = None
        self.ready.clear()
        self.last_error = error


class Session:
    def __init__(self, rtt, streams, age):
        self.rtt = rtt
        self.streams = dict.fromkeys(range(streams))
        self.started_at = time.monotonic() - age


def pool(names="abc", tunnels=1, **kwargs):
    entries = [(name, {"url": "wss://%s/" % name}, None) for name in names]
    return ServerPool(lambda settings, _token: Tunnel(settings["url"]), entries,
                      tunnels=tunnels, **kwargs)


def tunnel(p, name, index=0):
    return next(e for e in p.endpoints if e.name == name).clients[index]


def active(p):
    p.live_session()
    return p.active.name


def test_failover_goes_to_the_first_live_server_and_back_once_it_has_been_up():
    p = pool()
    for name in "abc":
        tunnel(p, name).up()
    assert active(p) == "a"
    tunnel(p, "a").down()
    assert active(p) == "b"
    tunnel(p, "a").up(age=0.5)               # back, but not up RETURN_AFTER yet
    assert active(p) == "b"
    tunnel(p, "a").session.started_at -= server_pool.RETURN_AFTER
    assert active(p) == "a" and p.switches == 2


def test_without_return_it_moves_on_in_list_order_and_stays():
    p = pool(return_to_preferred=False)
    for name in "abc":
        tunnel(p, name).up()
    assert active(p) == "a"
    tunnel(p, "a").down()
    assert active(p) == "b"
    tunnel(p, "a").up()
    assert active(p) == "b"
    tunnel(p, "b").down()
    assert active(p) == "c"                  # the next after b, not the first
    tunnel(p, "c").down()
    assert active(p) == "a"                  # wrapping round


def test_lowest_rtt_moves_only_for_a_clearly_lower_one():
    p = pool(strategy="lowest-rtt")
    tunnel(p, "a").up(rtt=0.050)
    tunnel(p, "b").up(rtt=0.010)
    tunnel(p, "c").up(rtt=None)              # no PING answer yet: last
    assert active(p) == "b"
    tunnel(p, "a").session.rtt = 0.008       # lower, but within the margin
    assert active(p) == "b"
    tunnel(p, "a").session.rtt = 0.005
    assert active(p) == "a"
    tunnel(p, "a").down()
    assert active(p) == "b"


def test_new_streams_take_the_least_loaded_tunnel_of_the_server():
    p = pool("a", tunnels=3)
    first = tunnel(p, "a", 0).up(streams=4)
    second = tunnel(p, "a", 1).up(streams=1)
    third = tunnel(p, "a", 2).up(streams=2)
    assert p.live_session() is second
    second.streams.update(dict.fromkeys(range(10, 13)))
    assert p.live_session() is third
    tunnel(p, "a", 2).down()                 # GOAWAY or closed: not live any more
    assert p.live_session() is first


def test_a_stream_waits_for_any_server_then_gives_up_naming_each():
    p = pool("ab")
    tunnel(p, "a").last_error = "connection refused"
    with pytest.raises(TunnelUnavailable, match=r"no tunnel to any of 2 servers within 0\.1 s "
                       r"\(a: connection refused; b: connecting\)"):
        p.get_session(0.1)
    gevent.spawn_later(0.05, tunnel(p, "b").up)
    assert p.get_session(2) is tunnel(p, "b").session and p.active.name == "b"


def test_describe_names_the_active_server():
    p = pool("ab")
    tunnel(p, "b").up()
    assert p.describe() == {"name": "b", "url": "wss://b/", "up": True, "strategy": "failover",
                            "switches": 0, "servers": 2}
