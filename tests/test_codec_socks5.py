"""afb.codec.socks5: the server-side SOCKS5 handshake state machine."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afb.codec.address import encode_address
from afb.codec.socks5 import (
    CMD_BIND,
    CMD_CONNECT,
    CMD_UDP_ASSOCIATE,
    METHOD_NO_ACCEPTABLE,
    METHOD_NO_AUTH,
    METHOD_USERPASS,
    SOCKS_VERSION,
    Request,
    Socks5Parser,
    reply,
)
from afb.errors import (
    REP_ADDRESS_TYPE_NOT_SUPPORTED,
    REP_COMMAND_NOT_SUPPORTED,
    REP_GENERAL_FAILURE,
    REP_NOT_ALLOWED,
    AddressError,
    AfbError,
    CommandNotSupported,
    ProxyAuthFailed,
    SocksError,
)

NO_AUTH = b"\x05\x01\x00"
OFFER_USERPASS = b"\x05\x01\x02"
OK_NO_AUTH = b"\x05\x00"
OK_USERPASS = b"\x05\x02"
NO_ACCEPTABLE = b"\x05\xff"
AUTH_OK = b"\x01\x00"
AUTH_FAILED = b"\x01\x01"
REPLY_FAILURE = b"\x05\x01\x00\x01\x00\x00\x00\x00\x00\x00"
REPLY_NO_COMMAND = b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00"
REPLY_NO_ATYP = b"\x05\x08\x00\x01\x00\x00\x00\x00\x00\x00"

USERS = {"alice": "s3cret", "bob": "pässwörd"}


def check_user(username, password):
    return USERS.get(username) == password


def request(host, port, command=CMD_CONNECT):
    return bytes((5, command, 0)) + encode_address(host, port)


def userpass(username, password):
    user, pw = username.encode(), password.encode()
    return bytes((1, len(user))) + user + bytes((len(pw),)) + pw


# --- running a parser -------------------------------------------------------

def run(data, chunks, authenticate=None):
    """Feed ``data`` cut into ``chunks`` sizes; return a comparable outcome.

    Outcome is ``("ok", wire, request, leftover)`` or
    ``("error", type, reply, wire)`` where ``wire`` is every byte the server
    would have sent, including the error's ``response``.
    """
    parser = Socks5Parser(authenticate)
    wire = b""
    pos = 0
    for size in chunks:
        piece = data[pos:pos + size]
        pos += size
        try:
            out, req = parser.receive(piece)
        except SocksError as exc:
            return ("error", type(exc), exc.reply, wire + exc.response)
        wire += out
        if req is not None:
            return ("ok", wire, req, parser.leftover + data[pos:])
    return ("incomplete", wire)


def run_all(data, authenticate=None):
    return run(data, [len(data)], authenticate)


def run_trickle(data, authenticate=None):
    return run(data, [1] * len(data), authenticate)


# --- valid handshakes -------------------------------------------------------

def test_constants():
    assert (SOCKS_VERSION, METHOD_NO_AUTH, METHOD_USERPASS) == (5, 0, 2)
    assert METHOD_NO_ACCEPTABLE == 0xFF
    assert (CMD_CONNECT, CMD_BIND, CMD_UDP_ASSOCIATE) == (1, 2, 3)


@pytest.mark.parametrize("host, port", [
    ("127.0.0.1", 80),
    ("::1", 443),
    ("2001:db8::8", 8443),
    ("example.com", 443),
])
def test_connect_without_auth(host, port):
    parser = Socks5Parser()
    assert parser.receive(NO_AUTH) == (OK_NO_AUTH, None)
    assert parser.receive(request(host, port)) == (b"", Request(CMD_CONNECT, host, port))
    assert parser.leftover == b""
    assert parser.done and parser.method == METHOD_NO_AUTH and parser.username is None


def test_udp_associate_is_returned():
    outcome = run_all(NO_AUTH + request("0.0.0.0", 0, CMD_UDP_ASSOCIATE))
    assert outcome == ("ok", OK_NO_AUTH, Request(CMD_UDP_ASSOCIATE, "0.0.0.0", 0), b"")


def test_several_methods_offered_no_auth_picked():
    assert run_all(b"\x05\x03\x01\x02\x00" + request("a.b", 1))[1] == OK_NO_AUTH


@pytest.mark.parametrize("username, password", [("alice", "s3cret"), ("bob", "pässwörd")])
def test_userpass_success(username, password):
    parser = Socks5Parser(check_user)
    assert parser.receive(b"\x05\x02\x00\x02") == (OK_USERPASS, None)
    assert parser.receive(userpass(username, password)) == (AUTH_OK, None)
    expected = Request(CMD_CONNECT, "example.com", 443, username)    # who logged in, kept
    assert parser.receive(request("example.com", 443)) == (b"", expected)
    assert parser.method == METHOD_USERPASS and parser.username == username


def test_userpass_empty_fields_reach_authenticate():
    seen = []
    parser = Socks5Parser(lambda u, p: seen.append((u, p)) or True)
    out, req = parser.receive(OFFER_USERPASS + b"\x01\x00\x00" + request("h", 1))
    assert (out, req, seen) == (OK_USERPASS + AUTH_OK, Request(CMD_CONNECT, "h", 1, ""),
                                [("", "")])


def test_pipelined_phases_and_leftover():
    data = (OFFER_USERPASS + userpass("alice", "s3cret") + request("10.0.0.1", 22)
            + b"SSH-2.0-x\r\n")
    assert run_all(data, check_user) == (
        "ok", OK_USERPASS + AUTH_OK, Request(CMD_CONNECT, "10.0.0.1", 22, "alice"),
        b"SSH-2.0-x\r\n")


def test_leftover_after_request_in_separate_call():
    parser = Socks5Parser()
    parser.receive(NO_AUTH)
    parser.receive(request("example.com", 80)[:5])
    out, req = parser.receive(request("example.com", 80)[5:] + b"GET / HTTP/1.1\r\n")
    assert req == Request(CMD_CONNECT, "example.com", 80)
    assert parser.leftover == b"GET / HTTP/1.1\r\n"


def test_receive_after_request_raises():
    parser = Socks5Parser()
    parser.receive(NO_AUTH + request("h", 1))
    with pytest.raises(SocksError, match="already complete"):
        parser.receive(b"more")


def test_receive_after_failure_raises():
    parser = Socks5Parser()
    with pytest.raises(SocksError):
        parser.receive(b"\x04\x01")
    with pytest.raises(SocksError, match="already failed"):
        parser.receive(NO_AUTH)


def test_empty_receive_is_harmless():
    parser = Socks5Parser()
    assert parser.receive(b"") == (b"", None)


# --- errors: exact bytes sent back before closing ---------------------------

ERROR_CASES = [
    # id, data, authenticate, exception type, reply, wire bytes
    ("socks4-greeting", b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", None,
     SocksError, REP_GENERAL_FAILURE, b""),
    ("http-greeting", b"GET / HTTP/1.1\r\n", None, SocksError, REP_GENERAL_FAILURE, b""),
    ("zero-methods", b"\x05\x00", None, SocksError, REP_GENERAL_FAILURE, NO_ACCEPTABLE),
    ("only-userpass-offered", OFFER_USERPASS, None, SocksError, REP_NOT_ALLOWED, NO_ACCEPTABLE),
    ("only-gssapi-offered", b"\x05\x01\x01", None, SocksError, REP_NOT_ALLOWED, NO_ACCEPTABLE),
    ("auth-required-no-auth-offered", NO_AUTH, check_user,
     SocksError, REP_NOT_ALLOWED, NO_ACCEPTABLE),
    ("wrong-password", OFFER_USERPASS + userpass("alice", "nope"), check_user,
     ProxyAuthFailed, REP_NOT_ALLOWED, OK_USERPASS + AUTH_FAILED),
    ("unknown-user", OFFER_USERPASS + userpass("mallory", "x"), check_user,
     ProxyAuthFailed, REP_NOT_ALLOWED, OK_USERPASS + AUTH_FAILED),
    ("bad-subnegotiation-version", OFFER_USERPASS + b"\x05\x01a\x01b", check_user,
     ProxyAuthFailed, REP_NOT_ALLOWED, OK_USERPASS + AUTH_FAILED),
    ("username-not-utf8", OFFER_USERPASS + b"\x01\x01\xff\x01b", check_user,
     ProxyAuthFailed, REP_NOT_ALLOWED, OK_USERPASS + AUTH_FAILED),
    ("bind", NO_AUTH + request("1.2.3.4", 5, CMD_BIND), None,
     CommandNotSupported, REP_COMMAND_NOT_SUPPORTED, OK_NO_AUTH + REPLY_NO_COMMAND),
    ("unknown-command", NO_AUTH + request("1.2.3.4", 5, 0x09), None,
     CommandNotSupported, REP_COMMAND_NOT_SUPPORTED, OK_NO_AUTH + REPLY_NO_COMMAND),
    ("command-zero", NO_AUTH + request("1.2.3.4", 5, 0), None,
     CommandNotSupported, REP_COMMAND_NOT_SUPPORTED, OK_NO_AUTH + REPLY_NO_COMMAND),
    ("bad-atyp", NO_AUTH + b"\x05\x01\x00\x02\x7f\x00\x00\x01\x00\x50", None,
     AddressError, REP_ADDRESS_TYPE_NOT_SUPPORTED, OK_NO_AUTH + REPLY_NO_ATYP),
    ("empty-domain", NO_AUTH + b"\x05\x01\x00\x03\x00\x00\x50", None,
     AddressError, REP_ADDRESS_TYPE_NOT_SUPPORTED, OK_NO_AUTH + REPLY_NO_ATYP),
    ("bad-request-version", NO_AUTH + b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50", None,
     SocksError, REP_GENERAL_FAILURE, OK_NO_AUTH + REPLY_FAILURE),
    ("bad-request-after-auth",
     OFFER_USERPASS + userpass("alice", "s3cret") + request("h", 1, CMD_BIND), check_user,
     CommandNotSupported, REP_COMMAND_NOT_SUPPORTED,
     OK_USERPASS + AUTH_OK + REPLY_NO_COMMAND),
]


@pytest.mark.parametrize("name, data, authenticate, exc_type, rep, wire", ERROR_CASES,
                         ids=[case[0] for case in ERROR_CASES])
def test_errors(name, data, authenticate, exc_type, rep, wire):
    assert run_all(data, authenticate) == ("error", exc_type, rep, wire)


def test_error_response_holds_only_the_error_when_phases_arrive_apart():
    parser = Socks5Parser(check_user)
    assert parser.receive(OFFER_USERPASS) == (OK_USERPASS, None)
    with pytest.raises(SocksError) as info:
        parser.receive(userpass("alice", "wrong"))
    assert info.value.response == AUTH_FAILED
    assert "alice" in str(info.value)


def test_bind_error_message_and_reply():
    parser = Socks5Parser()
    parser.receive(NO_AUTH)
    with pytest.raises(CommandNotSupported, match="BIND") as info:
        parser.receive(request("h", 1, CMD_BIND))
    assert info.value.response == reply(REP_COMMAND_NOT_SUPPORTED)


# --- reply() ----------------------------------------------------------------

@pytest.mark.parametrize("args, wire", [
    ((0,), b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"),
    ((0, "127.0.0.1", 1080), b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38"),
    ((5, "::1", 1), b"\x05\x05\x00\x04" + b"\x00" * 15 + b"\x01\x00\x01"),
    ((4, "example.com", 80), b"\x05\x04\x00\x03\x0bexample.com\x00\x50"),
])
def test_reply(args, wire):
    assert reply(*args) == wire


# --- trickle: one byte at a time gives the same outcome ---------------------

TRICKLE_CASES = [
    (NO_AUTH + request("127.0.0.1", 80), None),
    (NO_AUTH + request("::1", 443) + b"early data", None),
    (NO_AUTH + request("example.com", 443), None),
    (OFFER_USERPASS + userpass("bob", "pässwörd") + request("example.com", 1) + b"x", check_user),
] + [(case[1], case[2]) for case in ERROR_CASES]


@pytest.mark.parametrize("data, authenticate", TRICKLE_CASES)
def test_trickle_matches_all_at_once(data, authenticate):
    whole = run_all(data, authenticate)
    assert whole[0] in ("ok", "error")
    assert run_trickle(data, authenticate) == whole


# --- property tests ---------------------------------------------------------

ports = st.integers(0, 65535)
labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
hosts = st.one_of(
    st.ip_addresses().map(str),
    st.lists(labels, min_size=1, max_size=3).map(".".join).filter(
        lambda h: not h.replace(".", "").isdigit()),
)


@given(st.binary(max_size=600), st.booleans())
def test_arbitrary_bytes_only_raise_afb_errors(data, with_auth):
    parser = Socks5Parser(check_user if with_auth else None)
    try:
        out, req = parser.receive(data)
    except AfbError as exc:
        assert isinstance(exc, SocksError) and isinstance(exc.response, bytes)
        return
    assert isinstance(out, bytes)
    assert req is None or isinstance(req, Request)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_after_no_auth_greeting(data):
    try:
        Socks5Parser().receive(NO_AUTH + data)
    except AfbError as exc:
        assert isinstance(exc, SocksError)


@settings(max_examples=50)
@given(host=hosts, port=ports, command=st.sampled_from([CMD_CONNECT, CMD_UDP_ASSOCIATE]),
       tail=st.binary(max_size=20))
def test_request_round_trip(host, port, command, tail):
    outcome = run_all(NO_AUTH + request(host, port, command) + tail)
    assert outcome == ("ok", OK_NO_AUTH, Request(command, host, port), tail)


@given(data=st.sampled_from(TRICKLE_CASES), cuts=st.lists(st.integers(0, 40), max_size=8))
def test_random_split_points(data, cuts):
    data, authenticate = data
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [b - a for a, b in zip(points, points[1:], strict=False)] or [0]
    assert run(data, chunks, authenticate) == run_all(data, authenticate)


@settings(max_examples=50)
@given(host=hosts, port=ports, tail=st.binary(max_size=10), cuts=st.lists(st.integers(0, 300)))
def test_random_split_points_random_requests(host, port, tail, cuts):
    data = OFFER_USERPASS + userpass("alice", "s3cret") + request(host, port) + tail
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [b - a for a, b in zip(points, points[1:], strict=False)]
    assert run(data, chunks, check_user) == (
        "ok", OK_USERPASS + AUTH_OK, Request(CMD_CONNECT, host, port, "alice"), tail)
