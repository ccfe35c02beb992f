"""TLS contexts for the tunnel (TLS 1.3 only) and SPKI pinning.

A pin is ``'sha256//' + base64(sha256(SubjectPublicKeyInfo DER))`` of the
server certificate's public key, the same format as :mod:`afb.keys`.  With a
pin the client skips chain validation (the server usually has a self-signed
certificate) and checks the pin right after the handshake instead; without a
pin it verifies the chain and the host name as a browser would.
"""

import base64
import hashlib
import hmac
import logging
import ssl as _stdssl
import warnings

from gevent import ssl as _gssl

from afb.codec.der import subject_public_key_info
from afb.errors import TlsError

log = logging.getLogger(__name__)

PIN_PREFIX = "sha256//"
ALPN = ["http/1.1"]
#: TLS session (ticket) lifetime in seconds: nginx's ssl_session_timeout 5m.
#: OpenSSL's default, which Python keeps, is 7200 s: a ticket lifetime hint no
#: nginx sends.
SESSION_TIMEOUT = 300


def _new_context(purpose):
    ctx = _gssl.SSLContext(purpose)
    ctx.minimum_version = _stdssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(ALPN)
    return ctx


#: What Debian's nginx offers: ssl_protocols TLSv1 to TLSv1.3 (OpenSSL's security
#: level then fails 1.0 and 1.1 with an "internal error" alert, as it does for
#: nginx), nginx's default ssl_ciphers, and the server's order
#: (ssl_prefer_server_ciphers on).
NGINX_CIPHERS = "HIGH:!aNULL:!MD5"


def server_context(cert_path, key_path):
    """A server SSLContext, certificate chain and key loaded.

    It accepts what Debian's nginx accepts (TLS 1.2, and 1.0/1.1 as far as
    OpenSSL's security level lets them through: not at all on Debian), with
    nginx's ciphers and preference, so that a prober's older handshake is
    answered as nginx answers it; a *tunnel*
    still needs TLS 1.3 (:mod:`afb.transport.wsserver` refuses an upgrade over
    anything older, and the client offers nothing older).
    """
    ctx = _new_context(_stdssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)     # "TLSv1 is deprecated"
        ctx.minimum_version = _stdssl.TLSVersion.TLSv1
    ctx.set_ciphers(NGINX_CIPHERS)
    ctx.options |= _stdssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except (OSError, _stdssl.SSLError) as exc:
        raise TlsError("cannot load TLS certificate %s / key %s: %s"
                       % (cert_path, key_path, exc)) from exc
    set_session_timeout(ctx, SESSION_TIMEOUT)
    return ctx


def _libssl():
    """The libssl that Python's ``_ssl`` module loaded (dlsym searches its dependencies)."""
    import ctypes  # the server's only: a client never sets a session timeout

    return ctypes.CDLL(_stdssl._ssl.__file__)


def set_session_timeout(ctx, seconds):
    """``SSL_CTX_set_timeout`` on *ctx*, which Python's ssl has no setter for.

    CPython's PySSLContext starts with PyObject_HEAD and then the ``SSL_CTX *``;
    the pointer found there is only used if ``SSL_CTX_get_timeout`` reads
    OpenSSL's default (7200) through it, else nothing is changed (one debug
    line).  True if the timeout was set.
    """
    import ctypes

    try:
        lib = _libssl()
        get_timeout, set_timeout = lib.SSL_CTX_get_timeout, lib.SSL_CTX_set_timeout
        get_timeout.restype = set_timeout.restype = ctypes.c_long
        get_timeout.argtypes = [ctypes.c_void_p]
        set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_long]
        ptr = ctypes.c_void_p.from_address(id(ctx) + 2 * ctypes.sizeof(ctypes.c_void_p)).value
        if ptr and get_timeout(ptr) == int(seconds):
            return True
        if not ptr or get_timeout(ptr) != 7200:
            log.debug("TLS session timeout left at OpenSSL's default: SSL_CTX not found")
            return False
        set_timeout(ptr, int(seconds))
        return get_timeout(ptr) == int(seconds)
    except (OSError, AttributeError, ValueError, TypeError) as exc:
        log.debug("TLS session timeout left at OpenSSL's default: %s", exc)
        return False


def _load_err_clear():
    """libcrypto's ``ERR_clear_error`` -- of the libcrypto the ssl module uses -- or None."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libcrypto" in line}
        for path in sorted(paths):
            function = ctypes.CDLL(path).ERR_clear_error
            function.restype = None
            function.argtypes = []
            return function
    except (OSError, AttributeError):
        pass
    return None


_err_clear = _load_err_clear()


def clear_openssl_errors():
    """Empty OpenSSL's per-thread error queue.

    CPython's ssl module does not clear it before SSL_read/SSL_write
    (python/cpython#148594), and with greenlets every TLS connection of the
    daemon shares one thread: an error left by one connection (a prober's
    handshake that failed, a reset) made the next write of another -- a
    tunnel -- fail with a stale "Broken pipe" (seen with Debian 13's Python
    3.13 and OpenSSL 3.5: a TLS connect and close killed a tunnel 2 times in
    5, tests/test_daemon_lifecycle.py).  Called where a TLS connection ends
    with an error, so the queue is empty again before any other connection
    runs.
    """
    if _err_clear is not None:
        _err_clear()


def close_gracefully(sock):
    """Send a TLS close_notify (as nginx does before it closes), without waiting for
    the peer's; then the caller closes the socket.  Plain sockets: nothing."""
    sslobj = getattr(sock, "_sslobj", None)
    if sslobj is None:
        return
    try:
        sslobj.shutdown()
    except (OSError, ValueError):
        pass


def client_context(ca_file=None, pin=None):
    """A client SSLContext: TLS 1.3 minimum.

    With *pin*, chain and host name checks are off; call :func:`check_pin`
    after the handshake.  Without it, the chain is verified against *ca_file*
    (or the system store) and the host name is checked.
    """
    ctx = _new_context(_stdssl.PROTOCOL_TLS_CLIENT)
    ctx.afb_ca_file = ca_file       # for untrusted()'s advice
    if pin:
        ctx.check_hostname = False
        ctx.verify_mode = _stdssl.CERT_NONE
    else:
        ctx.check_hostname = True
        ctx.verify_mode = _stdssl.CERT_REQUIRED
        try:
            if ca_file:
                ctx.load_verify_locations(cafile=ca_file)
            else:
                ctx.load_default_certs()
        except (OSError, _stdssl.SSLError) as exc:
            raise TlsError("cannot load CA file %s: %s" % (ca_file, exc)) from exc
    return ctx


#: OpenSSL verify codes (X509_V_ERR_*) of a certificate no trusted CA signed.
_NOT_TRUSTED = {18: "self-signed", 19: "a self-signed CA in the chain",
                20: "issuer not trusted", 21: "issuer not trusted"}
_X509_CERT_HAS_EXPIRED = 10
_X509_HOSTNAME_MISMATCH = 62


def untrusted(exc, host, port, ctx=None):
    """One line on a failed certificate verification (no pin): what it is, what to set.

    Without a pin the client verifies the server like a browser; a server
    made by ``afb keygen`` has a self-signed certificate, which only a pin
    (or its certificate as ``ca_file``) makes acceptable.
    """
    code = getattr(exc, "verify_code", None)
    ca_file = getattr(ctx, "afb_ca_file", None)
    where = "the CAs in ca_file %s" % ca_file if ca_file else "the system's CAs"
    if code in _NOT_TRUSTED:
        return ("the server's certificate (%s:%s) is not trusted (%s; checked against %s): "
                "set pin = sha256//... (afb keygen --show prints it) or ca_file in [client]"
                % (host, port, _NOT_TRUSTED[code], where))
    if code == _X509_HOSTNAME_MISMATCH:
        return ("the server's certificate (%s:%s) is not made for the name %s: use a name it "
                "holds in server = ..., or set pin = sha256//... (afb keygen --show prints "
                "it) in [client]" % (host, port, host))
    if code == _X509_CERT_HAS_EXPIRED:
        return ("the server's certificate (%s:%s) has expired: renew it on the server, or set "
                "pin = sha256//... (afb keygen --show prints it) in [client]" % (host, port))
    return "the server's certificate (%s:%s) failed verification: %s" % (
        host, port, getattr(exc, "verify_message", None) or exc)


def spki_pin_of_der(der_cert):
    """``'sha256//...'`` pin of a DER certificate's public key (afb.codec.der: not
    cryptography.x509, whose import cost the client 3.2 MiB)."""
    spki = subject_public_key_info(der_cert)
    return PIN_PREFIX + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def _pins(pin):
    if isinstance(pin, str):
        return [p.strip() for p in pin.split(",") if p.strip()]
    return [p.strip() for p in pin if p and p.strip()]


def check_pin(ssl_sock, pin):
    """Raise TlsError unless the peer certificate's SPKI matches *pin*.

    *pin* is one pin, a comma-separated list, or a list (any match passes,
    which allows key rotation).  Returns the peer's pin.
    """
    expected = _pins(pin)
    der = ssl_sock.getpeercert(binary_form=True)
    if not der:
        raise TlsError("server sent no certificate; expected pin %s" % ", ".join(expected))
    got = spki_pin_of_der(der)
    for candidate in expected:
        if hmac.compare_digest(candidate.encode("ascii", "replace"), got.encode("ascii")):
            return got
    raise TlsError("server certificate pin mismatch: expected %s, got %s: if the server's key "
                   "was changed on purpose, set pin = <its pin> in [client] (afb keygen --show "
                   "prints it); if not, something between here and the server answers in its "
                   "place" % (", ".join(expected) or "(none)", got))


__all__ = ["server_context", "client_context", "check_pin", "spki_pin_of_der", "untrusted",
           "PIN_PREFIX"]
