"""A held database lock must not stall traffic (issue 10, item 10).

SQLite calls block in C; the server used to make them on the event loop, so
another process holding the state store (``afb token revoke``, an admin's
``sqlite3`` shell) froze every tunnel for up to the 5 s busy timeout.  The
lock is held here by a real second process with ``BEGIN EXCLUSIVE``.
"""

import os
import subprocess
import sys
import time

import gevent

from afb.state import StateStore
from afb.transport.store_thread import StoreThread
from tests.support import Setup, recv_exact, running, socks_connect, wait_log

HOLD = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


def hold_lock(path, seconds):
    """A process holding ``path``'s write lock for ``seconds`` (started once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, path, str(seconds)],
                            stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"held\n"
    return proc


def _ticks(seconds, every=0.01):
    """The longest gap between ticks of a greenlet that wants to run every ``every`` s."""
    worst, last = 0.0, time.monotonic()
    end = last + seconds
    while last < end:
        gevent.sleep(every)
        now = time.monotonic()
        worst, last = max(worst, now - last), now
    return worst


def test_a_call_waiting_for_the_lock_does_not_stop_the_event_loop(tmp_path):
    store = StoreThread(StateStore(str(tmp_path / "afb.sqlite3"), timeout=5.0))
    holder = hold_lock(store.path, 1.5)
    started = time.monotonic()
    writer = gevent.spawn(store.record_issued, {"jti": "j1", "sub": "alice", "iat": 1,
                                                "exp": 2 ** 31})
    gap = _ticks(1.0)
    writer.get(timeout=10)
    assert gap < 0.2, "the loop stood still for %.2f s" % gap
    assert time.monotonic() - started >= 1.0         # the write really waited for the lock
    assert store.lookup_token("j1")["sub"] == "alice"
    holder.wait(10)
    store.close()


def test_a_token_refresh_while_the_store_is_locked_does_not_stall_the_tunnel(tmp_path, echo):
    setup = Setup(tmp_path, ttl=10, leeway=0)       # refreshed at 7.5 s (75 %), expires at 10
    with running("server", setup, tmp_path / "server.log") as server, \
            running("client", setup, tmp_path / "client.log") as client:
        sock = socks_connect(("127.0.0.1", setup.proxy_port), "127.0.0.1", echo.port)
        started = time.monotonic()
        holder = None
        worst = 0.0
        while time.monotonic() - started < 9.0:
            if holder is None and time.monotonic() - started > 5.5:
                holder = hold_lock(os.path.join(setup.dir, "state", "afb.sqlite3"), 2.5)
            sent = time.monotonic()
            sock.sendall(b"tick")
            assert recv_exact(sock, 4) == b"tick"
            worst = max(worst, time.monotonic() - sent)
            gevent.sleep(0.02)                  # paced echoes: before, during and after the lock
        sock.close()
        holder.wait(10)
        assert worst < 0.5, "an echo took %.2f s" % worst
        wait_log(client, "token refreshed", 5)
    assert "Traceback" not in server.output()
