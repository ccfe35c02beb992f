"""What the client tells about its own token (issue 10, item 4)."""

import os

import pytest

from afb.policy import token_check
from afb.policy.client_token import ClientToken
from tests.support import forge

NOW = 1_800_000_000.0
WHERE = "/etc/afb/client.token"


def _token(exp_in, nbf_in=-10):
    return forge({"alg": "EdDSA", "typ": "JWT"},
                 {"sub": "alice", "exp": NOW + exp_in, "nbf": NOW + nbf_in, "iat": NOW + nbf_in})


# --- the client's own look at its token -------------------------------------------------

@pytest.mark.parametrize("token", ["", "   \n"])
def test_an_empty_token_blocks_and_says_where_and_what_to_do(token):
    verdict = token_check.check_token(token, NOW, WHERE)
    assert verdict.kind == token_check.EMPTY and verdict.blocks
    assert verdict.message.startswith("the token in %s is empty: get a new token" % WHERE)
    assert "afb token issue --sub <user>" in verdict.message and "no restart" in verdict.message


@pytest.mark.parametrize("token", ["bad.token.here", "abc", "a.b", "x." + "e30" + ".y.z",
                                   "\ufffd\ufffd.\ufffd.x"])
def test_a_token_that_is_no_jwt_blocks(token):
    verdict = token_check.check_token(token, NOW, WHERE)
    assert verdict.kind == token_check.MALFORMED and verdict.blocks
    assert "is not a JWT" in verdict.message


def test_an_expired_token_says_when_and_blocks_only_past_the_slack():
    verdict = token_check.check_token(_token(-3 * 3600 - 120), NOW, WHERE)
    assert verdict.kind == token_check.EXPIRED and verdict.blocks
    assert verdict.message.startswith(
        "the token in %s expired at %s (3 h 2 min ago by this machine's clock): get a new "
        "token from the server's operator" % (WHERE, token_check.when(NOW - 3 * 3600 - 120)))
    assert "if this machine's clock is wrong (it says %s), fix it" % token_check.when(NOW) \
        in verdict.message
    # within the server's leeway and some clock difference it is still tried
    assert not token_check.check_token(_token(-token_check.EXPIRED_SLACK + 1), NOW, WHERE).blocks


def test_a_token_not_yet_valid_says_check_the_clock_but_is_tried():
    verdict = token_check.check_token(_token(7200, nbf_in=3600), NOW, WHERE)
    assert verdict.kind == token_check.NOT_YET_VALID and not verdict.blocks
    assert "not valid before %s, 60 min from now" % token_check.when(NOW + 3600) \
        in verdict.message
    assert "check the clock here and on the server" in verdict.message


def test_a_good_token_passes():
    verdict = token_check.check_token(_token(3600), NOW, WHERE)
    assert verdict.kind == token_check.OK and not verdict.blocks
    assert verdict.claims["sub"] == "alice"


def test_an_unreadable_token_file():
    verdict = token_check.unreadable(FileNotFoundError(2, "No such file or directory"), WHERE)
    assert verdict.blocks
    assert verdict.message.startswith("cannot read the token file %s (No such file or "
                                      "directory): put the token" % WHERE)


def test_refusal_messages():
    url = "wss://vps.example.com/api/x"
    plain = token_check.refusal_message(404, url, token_check.check_token(_token(600), NOW, WHERE),
                                        NOW)
    assert plain == (
        "server refused the tunnel (HTTP 404): wrong path in server = %s, or a token the server "
        "does not accept (wrong key, revoked, another server's: the server's log says which), "
        "or this address is banned after failed logins" % url)
    late = token_check.refusal_message(404, url, token_check.check_token(_token(-20), NOW, WHERE),
                                       NOW)
    assert late == plain + "; the token expired at %s" % token_check.when(NOW - 20)
    early = token_check.check_token(_token(7200, nbf_in=3600), NOW, WHERE)
    assert token_check.refusal_message(404, url, early, NOW) == plain + "; " + early.message
    other = token_check.refusal_message(200, url, early, NOW)
    assert other.startswith("server answered HTTP 200 instead of opening the tunnel: is "
                            "server = %s an afb server" % url)


def test_client_token_file_state_changes_when_the_file_is_replaced(tmp_path):
    path = tmp_path / "client.token"
    path.write_text("one\n")
    source = ClientToken(path=str(path))
    before = source.file_state()
    assert source.where == str(path) and source.last() == "one"
    replacement = tmp_path / "new"
    replacement.write_text("two\n")
    os.replace(replacement, path)
    assert source.file_state() != before
    assert source.last() == "one" and source() == "two" and source.last() == "two"
    os.remove(path)
    assert source.file_state() == ()
    assert ClientToken(token="inline").file_state() is None
