"""Why the client is refused, in its own words; stale tokens do not ban (issue 10, item 4).

The server keeps answering every refusal with its decoy; the client reads
its own token and says what is wrong, and does not dial with a token that is
certainly refused.  Loopback only.
"""

import logging
import os
import time

import gevent
import pytest

from afb.keys import write_secret
from afb.policy.auth import issue_token
from tests.support import Setup, recv_exact, socks_connect, wait_until
from tests.test_access_tunnels import SWITCHING, Running, refusals

CLIENT_LOG = "afb.transport.tunnel_client"


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


def _wait_error(client, text, timeout=5.0):
    assert wait_until(lambda: text in client.tunnel.last_error, timeout, 0.02), \
        "no %r in the client's error (%r)" % (text, client.tunnel.last_error)
    return client.tunnel.last_error


def _mismatches(caplog):
    return [r for r in caplog.records if "pin mismatch" in r.getMessage()]


def _errors(caplog):
    return [r.getMessage() for r in caplog.records if r.name == CLIENT_LOG
            and r.levelno == logging.ERROR]


def _token_file(setup, token):
    write_secret(os.path.join(setup.dir, "client.token"), token + "\n")


# --- the server: a stale token is not an attack ----------------------------------------------

def test_an_expired_token_retried_20_times_is_not_banned_but_garbage_is(setup):
    expired = issue_token(setup.jwt_key, "tester", 60, now=time.time() - 7200)
    with Running(setup) as run:
        plain = run.plain()
        for _ in range(20):
            assert run.upgrade(expired, source="127.0.0.6")[1] == plain     # the decoy, always
        assert not run.server.throttle.is_banned("127.0.0.6")
        assert run.upgrade(setup.token, source="127.0.0.6")[0] == SWITCHING
        for _ in range(5):
            assert run.upgrade("garbage.not.jwt", source="127.0.0.7")[1] == plain
        assert run.server.throttle.is_banned("127.0.0.7")
        assert run.upgrade(setup.token, source="127.0.0.7")[1] == plain


# --- the client: what it can tell from its own token ----------------------------------------

def test_an_expired_token_is_not_even_dialled_and_a_new_one_is_picked_up(setup, echo, caplog):
    _token_file(setup, issue_token(setup.jwt_key, "tester", 60, now=time.time() - 7200))
    slow = {("tunnel", "reconnect_max"): 30.0}
    caplog.set_level(logging.INFO)
    with Running(setup, with_client=True, client=slow) as run:
        error = _wait_error(run.client, "expired at")
        where = os.path.join(setup.dir, "client.token")
        assert error.startswith("the token in %s expired at " % where)
        assert "(119 min ago by this machine's clock): get a new token from the server's " \
            "operator (afb token issue --sub <user> on the server)" in error
        gevent.sleep(0.3)                                        # time to dial, if it did
        assert refusals(caplog) == [] and len(run.server.throttle) == 0   # never dialled
        assert len(_errors(caplog)) == 1 and "retrying in 30.0 s" in _errors(caplog)[0]
        _token_file(setup, issue_token(setup.jwt_key, "tester", 3600))  # dropped in, no restart
        started = time.monotonic()
        run.client.tunnel.get_session(5)
        assert time.monotonic() - started < 2.0                  # not 30 s
        sock = socks_connect(run.proxy, "127.0.0.1", echo.port)
        sock.sendall(b"back")
        assert recv_exact(sock, 4) == b"back"
        sock.close()


def test_a_token_file_emptied_while_running_says_so(setup, caplog):
    run = Running(setup, with_client=True)      # (the start checks refuse an empty one)
    _token_file(setup, "")
    caplog.set_level(logging.INFO)
    with run:
        error = _wait_error(run.client, "is empty")
        assert error.startswith("the token in %s is empty: get a new token"
                                % os.path.join(setup.dir, "client.token"))
        assert refusals(caplog) == [] and _errors(caplog)


def test_a_refused_upgrade_names_the_likely_causes(setup, caplog):
    wrong = "wss://127.0.0.1:%d/wrong" % setup.server_port
    caplog.set_level(logging.INFO)
    with Running(setup, with_client=True, client={("client", "server"): wrong}) as run:
        error = _wait_error(run.client, "refused")
        assert error == (
            "server refused the tunnel (HTTP 404): wrong path in server = %s, or a token the "
            "server does not accept (wrong key, revoked, another server's: the server's log "
            "says which), or this address is banned after failed logins" % wrong)
        assert any(error in line for line in _errors(caplog))
        assert len(run.server.throttle) == 0        # a good token on a wrong path: no failure


def test_a_self_signed_certificate_without_pin_says_set_pin_or_ca_file(setup, caplog):
    caplog.set_level(logging.INFO)
    with Running(setup, with_client=True, client={("client", "pin"): ""}) as run:
        error = _wait_error(run.client, "not trusted")
        assert error == (
            "the server's certificate (127.0.0.1:%d) is not trusted (self-signed; checked "
            "against the system's CAs): set pin = sha256//... (afb keygen --show prints it) or "
            "ca_file in [client]" % setup.server_port)
        assert any(error in line for line in _errors(caplog))


def test_a_pin_mismatch_is_retried_not_the_end(setup, caplog):
    """The client keeps retrying after a pin mismatch (every reconnect_max),
    and a fixed pin (SIGHUP: configure + renew) gets it in at once."""
    from afb.keys import make_self_signed, spki_pin

    other_pin = spki_pin(make_self_signed()[1])
    caplog.set_level(logging.DEBUG, logger=CLIENT_LOG)
    with Running(setup, with_client=True, client={("client", "pin"): other_pin,
                                                  ("tunnel", "reconnect_max"): 0.2}) as run:
        error = _wait_error(run.client, "pin mismatch")
        assert error.startswith("server certificate pin mismatch: expected %s, got %s: if the "
                                "server's key was changed on purpose, set pin = <its pin> in "
                                "[client]" % (other_pin, setup.pin))
        assert wait_until(lambda: len(_mismatches(caplog)) >= 3, 10), _mismatches(caplog)
        attempts = _mismatches(caplog)
        assert attempts[0].levelno == logging.ERROR
        assert {r.levelno for r in attempts[1:]} == {logging.DEBUG}   # the same line, once
        tunnel = run.client.tunnel
        tunnel.configure(url=tunnel.url, pin=setup.pin, e2e_key=tunnel.e2e_key)
        tunnel.renew()
        tunnel.get_session(2)
