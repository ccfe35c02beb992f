"""SOCKS5 server side, sans-IO (RFC 1928, with RFC 1929 username/password).

:class:`Socks5Parser` is a small buffered state machine::

    greeting -> [username/password] -> request -> done

Feed it the bytes the client sends; it returns the bytes to send back and,
once complete, the :class:`Request`.  On a protocol error it raises a
:class:`~afb.errors.SocksError` whose ``response`` attribute holds the exact
bytes to send before closing (including any reply this same ``receive`` call
had produced but not yet returned, so nothing is lost when a client pipelines
its phases).
"""

from dataclasses import dataclass
from typing import Optional

from afb.codec.address import decode_address, encode_address
from afb.errors import (
    REP_COMMAND_NOT_SUPPORTED,
    REP_GENERAL_FAILURE,
    REP_NOT_ALLOWED,
    AddressError,
    CommandNotSupported,
    ProxyAuthFailed,
    SocksError,
)

SOCKS_VERSION = 5

METHOD_NO_AUTH = 0x00
METHOD_USERPASS = 0x02
METHOD_NO_ACCEPTABLE = 0xFF

CMD_CONNECT = 1
CMD_BIND = 2
CMD_UDP_ASSOCIATE = 3

#: RFC 1929 sub-negotiation version and status bytes.
USERPASS_VERSION = 1
USERPASS_SUCCESS = 0x00
USERPASS_FAILURE = 0x01

#: Commands returned to the caller; anything else is answered with 0x07.
SUPPORTED_COMMANDS = (CMD_CONNECT, CMD_UDP_ASSOCIATE)

_NO_ACCEPTABLE = bytes((SOCKS_VERSION, METHOD_NO_ACCEPTABLE))
_AUTH_FAILED = bytes((USERPASS_VERSION, USERPASS_FAILURE))
_AUTH_OK = bytes((USERPASS_VERSION, USERPASS_SUCCESS))

# Parser states.
_GREETING = "greeting"
_AUTH = "auth"
_REQUEST = "request"
_DONE = "done"
_FAILED = "failed"


@dataclass(frozen=True)
class Request:
    """A complete SOCKS5 request: command, destination, and the user that logged in."""

    command: int
    host: str
    port: int
    user: Optional[str] = None


def reply(code, host="0.0.0.0", port=0):
    """A SOCKS5 reply: ``VER REP RSV ATYP BND.ADDR BND.PORT``."""
    return bytes((SOCKS_VERSION, code, 0)) + encode_address(host, port)


class Socks5Parser:
    """Server side of one SOCKS5 handshake.

    ``authenticate`` is ``None`` (no authentication, method 0) or a callable
    ``(username, password) -> bool``; when set, only method 2 is accepted.
    After :meth:`receive` returns a request, ``leftover`` holds the bytes the
    client sent after it (pipelined application data).
    """

    def __init__(self, authenticate=None):
        self.authenticate = authenticate
        self.method = None
        self.username = None
        self.leftover = b""
        self._state = _GREETING
        self._buf = bytearray()

    @property
    def done(self):
        """True once a request was returned."""
        return self._state == _DONE

    def receive(self, data):
        """Feed client bytes; return ``(bytes_to_send, request_or_None)``."""
        if self._state == _DONE:
            raise SocksError("SOCKS5 handshake already complete")
        if self._state == _FAILED:
            raise SocksError("SOCKS5 handshake already failed")
        self._buf += data
        out = bytearray()
        try:
            while True:
                if self._state == _GREETING:
                    step = self._parse_greeting()
                elif self._state == _AUTH:
                    step = self._parse_auth()
                else:
                    request = self._parse_request()
                    return bytes(out), request
                if step is None:
                    return bytes(out), None
                out += step
        except SocksError as exc:
            self._state = _FAILED
            exc.response = bytes(out) + getattr(exc, "response", b"")
            raise

    # --- phases: each returns the bytes to send, or None if more is needed --

    def _parse_greeting(self):
        buf = self._buf
        if not buf:
            return None
        if buf[0] != SOCKS_VERSION:
            raise _error(SocksError, "not SOCKS5: greeting version 0x%02x" % buf[0], b"")
        if len(buf) < 2:
            return None
        nmethods = buf[1]
        if nmethods == 0:
            raise _error(SocksError, "SOCKS5 greeting offers no methods", _NO_ACCEPTABLE)
        if len(buf) < 2 + nmethods:
            return None
        methods = bytes(buf[2:2 + nmethods])
        del buf[:2 + nmethods]
        wanted = METHOD_NO_AUTH if self.authenticate is None else METHOD_USERPASS
        if wanted not in methods:
            raise _error(
                SocksError,
                "no acceptable SOCKS5 method: client offers %s, server needs 0x%02x"
                % (methods.hex(" ") or "none", wanted),
                _NO_ACCEPTABLE,
                reply=REP_NOT_ALLOWED,
            )
        self.method = wanted
        self._state = _REQUEST if wanted == METHOD_NO_AUTH else _AUTH
        return bytes((SOCKS_VERSION, wanted))

    def _parse_auth(self):
        buf = self._buf
        if not buf:
            return None
        if buf[0] != USERPASS_VERSION:
            raise _error(
                ProxyAuthFailed,
                "bad username/password sub-negotiation version 0x%02x" % buf[0],
                _AUTH_FAILED,
                reply=REP_NOT_ALLOWED,
            )
        if len(buf) < 2:
            return None
        ulen = buf[1]
        if len(buf) < 2 + ulen + 1:
            return None
        plen = buf[2 + ulen]
        end = 2 + ulen + 1 + plen
        if len(buf) < end:
            return None
        raw_user = bytes(buf[2:2 + ulen])
        raw_password = bytes(buf[3 + ulen:end])
        del buf[:end]
        try:
            username = raw_user.decode("utf-8")
            password = raw_password.decode("utf-8")
        except UnicodeDecodeError:
            raise _error(
                ProxyAuthFailed,
                "SOCKS5 username or password is not UTF-8",
                _AUTH_FAILED,
                reply=REP_NOT_ALLOWED,
            ) from None
        if not self.authenticate(username, password):
            raise _error(
                ProxyAuthFailed,
                "SOCKS5 authentication failed for user %r" % username,
                _AUTH_FAILED,
                reply=REP_NOT_ALLOWED,
            )
        self.username = username
        self._state = _REQUEST
        return _AUTH_OK

    def _parse_request(self):
        buf = self._buf
        if not buf:
            return None
        if buf[0] != SOCKS_VERSION:
            raise _error(
                SocksError,
                "bad SOCKS5 request version 0x%02x" % buf[0],
                reply(REP_GENERAL_FAILURE),
            )
        if len(buf) < 2:
            return None
        command = buf[1]
        if command not in SUPPORTED_COMMANDS:
            name = "BIND" if command == CMD_BIND else "unknown command 0x%02x" % command
            raise _error(
                CommandNotSupported,
                "SOCKS5 %s not supported" % name,
                reply(REP_COMMAND_NOT_SUPPORTED),
            )
        # buf[2] is RSV; RFC 1928 says 0 but clients are not checked on it.
        try:
            decoded = decode_address(buf, 3)
        except AddressError as exc:
            exc.response = reply(exc.reply)
            raise
        if decoded is None:
            return None
        host, port, end = decoded
        self.leftover = bytes(buf[end:])
        self._buf = bytearray()
        self._state = _DONE
        return Request(command, host, port, self.username)


def _error(cls, message, response, reply=None):
    """Build a SocksError carrying the bytes to send before closing."""
    exc = cls(message, reply=reply)
    exc.response = response
    return exc
