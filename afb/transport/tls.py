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
import ssl as _stdssl

from gevent import ssl as _gssl

from afb.errors import TlsError

PIN_PREFIX = "sha256//"
ALPN = ["http/1.1"]


def _new_context(purpose):
    ctx = _gssl.SSLContext(purpose)
    ctx.minimum_version = _stdssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(ALPN)
    return ctx


def server_context(cert_path, key_path):
    """A server SSLContext: TLS 1.3 minimum, certificate chain and key loaded."""
    ctx = _new_context(_stdssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except (OSError, _stdssl.SSLError) as exc:
        raise TlsError("cannot load TLS certificate %s / key %s: %s"
                       % (cert_path, key_path, exc)) from exc
    return ctx


def client_context(ca_file=None, pin=None):
    """A client SSLContext: TLS 1.3 minimum.

    With *pin*, chain and host name checks are off; call :func:`check_pin`
    after the handshake.  Without it, the chain is verified against *ca_file*
    (or the system store) and the host name is checked.
    """
    ctx = _new_context(_stdssl.PROTOCOL_TLS_CLIENT)
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


def spki_pin_of_der(der_cert):
    """``'sha256//...'`` pin of a DER certificate's public key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_der_x509_certificate(bytes(der_cert))
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
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
    raise TlsError("server certificate pin mismatch: expected %s, got %s"
                   % (", ".join(expected) or "(none)", got))


__all__ = ["server_context", "client_context", "check_pin", "spki_pin_of_der", "PIN_PREFIX"]
