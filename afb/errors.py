"""The one small error hierarchy of afb.

Every exception knows how it is reported to the peer that caused it: a SOCKS5
reply code (``reply``), an HTTP status (``http_status``) and a WebSocket close
code (``close_code``).  Code that catches :class:`AfbError` answers with the
field that fits its protocol and logs ``str(exc)`` in one line.
"""

import errno

# SOCKS5 reply codes (RFC 1928, section 6).
REP_SUCCEEDED = 0x00
REP_GENERAL_FAILURE = 0x01
REP_NOT_ALLOWED = 0x02
REP_NETWORK_UNREACHABLE = 0x03
REP_HOST_UNREACHABLE = 0x04
REP_CONNECTION_REFUSED = 0x05
REP_TTL_EXPIRED = 0x06
REP_COMMAND_NOT_SUPPORTED = 0x07
REP_ADDRESS_TYPE_NOT_SUPPORTED = 0x08

# WebSocket close codes (RFC 6455, section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
#: Private-use close code: the peer speaks another tunnel protocol version.
CLOSE_VERSION_MISMATCH = 4001
#: The server's operator closed the tunnel (control socket ``disconnect_user``); not
#: a refusal of the token: the client dials again as after any other close.
CLOSE_BY_OPERATOR = 4003


class AfbError(Exception):
    """Base of every afb error; class attributes give the default codes."""

    reply = REP_GENERAL_FAILURE
    http_status = 502
    close_code = CLOSE_INTERNAL_ERROR

    def __init__(self, message="", *, reply=None, http_status=None, close_code=None):
        super().__init__(message)
        if reply is not None:
            self.reply = reply
        if http_status is not None:
            self.http_status = http_status
        if close_code is not None:
            self.close_code = close_code


class ConfigError(AfbError):
    """A configuration file is invalid; ``errors`` lists one line per problem."""

    def __init__(self, message, errors=()):
        super().__init__(message)
        self.errors = list(errors)


#: Why a listening socket could not be had: errno -> (what, hint, fix).
_LISTEN_FAILURES = {
    errno.EADDRINUSE: ("address already in use", "another afb %(role)s or a web server?",
                       "stop it or change %(key)s"),
    errno.EADDRNOTAVAIL: ("%(host)s is not an address of this host", "",
                          "change %(key)s to one of its addresses (0.0.0.0 or [::]: all)"),
    errno.EAFNOSUPPORT: ("this host has no IPv6", "", "change %(key)s to an IPv4 address"),
}
_LOW_PORT = ("permission denied", "ports below 1024 need root or the CAP_NET_BIND_SERVICE "
             "capability", "run afb as root, give it the capability (systemd: "
             "AmbientCapabilities=CAP_NET_BIND_SERVICE), or change %(key)s to a port above 1023")


def listen_failure(role, host, port, exc, fix=None):
    """The one line that says why ``role`` (``"server"``...) could not listen and what to do.

    ``exc`` is the OSError of ``bind``/``listen`` (or of the name lookup
    before them); ``fix``, if given, replaces the advice, which otherwise
    names the setting to change, ``[ROLE] listen``:

    >>> listen_failure("client", "::1", 1080, OSError(errno.EADDRINUSE, "in use"))[:71]
    'cannot listen on [::1]:1080: address already in use (another afb client'
    """
    import socket  # here: the offline commands import this module, not the network

    where = "[%s]:%s" % (host, port) if ":" in str(host) else "%s:%s" % (host, port)
    names = {"role": role, "host": host, "key": "[%s] listen" % role}
    if isinstance(exc, socket.gaierror):
        what, hint, advice = ("cannot resolve %(host)s", exc.strerror or str(exc),
                              "change %(key)s to an IP address")
    elif exc.errno == errno.EACCES and int(port) < 1024:
        what, hint, advice = _LOW_PORT
    else:
        what, hint, advice = _LISTEN_FAILURES.get(
            exc.errno, ((exc.strerror or str(exc)).lower(), "", "check %(key)s"))
    hint = " (%s)" % (hint % names) if hint else ""
    return "cannot listen on %s: %s%s; %s" % (where, what % names, hint, fix or advice % names)


# --- local proxy protocols (SOCKS5, HTTP CONNECT) ---------------------------

class SocksError(AfbError):
    """A SOCKS5 client sent something we cannot serve; ``reply`` goes back."""


class AddressError(SocksError):
    """Bad or unsupported address type / encoding."""

    reply = REP_ADDRESS_TYPE_NOT_SUPPORTED


class CommandNotSupported(SocksError):
    reply = REP_COMMAND_NOT_SUPPORTED


class ProxyAuthFailed(SocksError):
    """Wrong or malformed local proxy credentials (RFC 1929, Proxy-Authorization)."""

    reply = REP_NOT_ALLOWED
    http_status = 407


class HttpRequestError(AfbError):
    """A request to the server's web port that nginx would refuse; ``http_status`` and
    the message (the error page's detail line where nginx shows one) say how."""

    http_status = 400


class HttpProxyError(AfbError):
    """A malformed or unsupported HTTP proxy request; ``http_status`` goes back."""

    http_status = 400


# --- tunnel -----------------------------------------------------------------

class ProtocolError(AfbError):
    """The tunnel peer broke the framing or mux rules."""

    close_code = CLOSE_PROTOCOL_ERROR


class MessageTooBig(ProtocolError):
    close_code = CLOSE_MESSAGE_TOO_BIG


class VersionMismatch(ProtocolError):
    close_code = CLOSE_VERSION_MISMATCH


class TunnelUnavailable(AfbError):
    """No tunnel could be had within the wait limit (client side)."""

    reply = REP_GENERAL_FAILURE
    http_status = 503


class StreamReset(AfbError):
    """The peer reset a stream, or the tunnel carrying it went away."""


# --- server side: auth and destinations -------------------------------------

class AuthError(AfbError):
    """A token was missing, malformed, expired or otherwise refused."""

    http_status = 401
    close_code = CLOSE_POLICY_VIOLATION


class SignedTokenRefused(AuthError):
    """A token whose signature verified, refused for its claims or a
    revocation (expired, not yet valid, revoked, wrong audience): a user's
    stale token, not a forgery or a guess, so it weighs little towards a ban
    of the address (:mod:`afb.policy.access`)."""


class UpgradeRefused(AuthError):
    """The server answered the client's WebSocket upgrade with ``status``, not 101."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


class TlsError(AfbError):
    """TLS set-up failed, e.g. the server's SPKI pin did not match."""


class DestinationError(AfbError):
    """Opening the destination failed; ``reply`` says why (SOCKS5 code)."""


class NotAllowed(DestinationError):
    reply = REP_NOT_ALLOWED
    http_status = 403


class NetworkUnreachable(DestinationError):
    reply = REP_NETWORK_UNREACHABLE


class HostUnreachable(DestinationError):
    reply = REP_HOST_UNREACHABLE


class ConnectionRefused(DestinationError):
    reply = REP_CONNECTION_REFUSED


class TimedOut(DestinationError):
    reply = REP_TTL_EXPIRED
    http_status = 504


def reply_reason(reply):
    """A short human text for a SOCKS5 reply code (for logs and HTTP bodies)."""
    return _REPLY_TEXT.get(reply, "unknown error 0x%02x" % reply)


_REPLY_TEXT = {
    REP_SUCCEEDED: "succeeded",
    REP_GENERAL_FAILURE: "general failure",
    REP_NOT_ALLOWED: "not allowed by ruleset",
    REP_NETWORK_UNREACHABLE: "network unreachable",
    REP_HOST_UNREACHABLE: "host unreachable",
    REP_CONNECTION_REFUSED: "connection refused",
    REP_TTL_EXPIRED: "TTL expired (timed out)",
    REP_COMMAND_NOT_SUPPORTED: "command not supported",
    REP_ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported",
}
