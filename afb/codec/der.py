"""Just enough DER to find a certificate's SubjectPublicKeyInfo, for the SPKI pin.

The client pins the server's public key: ``sha256//`` + base64 of SHA-256
over the certificate's DER-encoded SubjectPublicKeyInfo (the same pin as
``curl --pinnedpubkey``).  Loading the certificate with ``cryptography.x509``
for that cost the client about 3.2 MiB of resident memory (x509 and
serialization, imported at its first connect, measured on this VM), a tenth
of what the whole idle client may take on a router; the field sits at a
fixed place in the structure (RFC 5280, 4.1)::

    Certificate  ::=  SEQUENCE  {
         tbsCertificate       SEQUENCE  {
              version         [0]  EXPLICIT Version DEFAULT v1,   -- optional
              serialNumber         INTEGER,
              signature            AlgorithmIdentifier,           -- SEQUENCE
              issuer               Name,                          -- SEQUENCE
              validity             Validity,                      -- SEQUENCE
              subject              Name,                          -- SEQUENCE
              subjectPublicKeyInfo SubjectPublicKeyInfo,          -- SEQUENCE
              ... },
         ... }

so this walks the TLV headers to it and returns its bytes, tag and length
included.  Pure code on bytes; anything malformed raises :class:`DerError`.
"""

from afb.errors import TlsError

__all__ = ["DerError", "subject_public_key_info"]

SEQUENCE = 0x30
INTEGER = 0x02
CONTEXT_0 = 0xA0


class DerError(TlsError):
    """The bytes are not a DER certificate this parser can walk."""


def _tlv(data, offset):
    """``(tag, start_of_value, end_of_value)`` of the element at ``offset``."""
    if offset + 2 > len(data):
        raise DerError("DER element truncated at byte %d" % offset)
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DerError("DER tag 0x%02x with a long form is not expected in a certificate" % tag)
    first = data[offset + 1]
    start = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise DerError("DER length of %d bytes at byte %d" % (count, offset))
        if start + count > len(data):
            raise DerError("DER length truncated at byte %d" % offset)
        length = int.from_bytes(data[start:start + count], "big")
        if length < 0x80 or (count > 1 and data[start] == 0):
            raise DerError("DER length not in its shortest form at byte %d" % offset)
        start += count
    end = start + length
    if end > len(data):
        raise DerError("DER element at byte %d claims %d bytes, %d left"
                       % (offset, length, len(data) - start))
    return tag, start, end


def _expect(data, offset, tag, what):
    found, start, end = _tlv(data, offset)
    if found != tag:
        raise DerError("expected %s (tag 0x%02x) at byte %d, found tag 0x%02x"
                       % (what, tag, offset, found))
    return start, end


def subject_public_key_info(cert_der):
    """The DER bytes of the certificate's SubjectPublicKeyInfo (see the module doc)."""
    data = bytes(cert_der)
    cert_start, cert_end = _expect(data, 0, SEQUENCE, "Certificate")
    if cert_end != len(data):
        raise DerError("%d bytes after the certificate" % (len(data) - cert_end))
    offset, tbs_end = _expect(data, cert_start, SEQUENCE, "tbsCertificate")
    if data[offset:offset + 1] == bytes([CONTEXT_0]):              # version
        offset = _tlv(data, offset)[2]
    offset = _expect(data, offset, INTEGER, "serialNumber")[1]
    for what in ("signature", "issuer", "validity", "subject"):
        offset = _expect(data, offset, SEQUENCE, what)[1]
    start, end = _expect(data, offset, SEQUENCE, "subjectPublicKeyInfo")
    if end > tbs_end:
        raise DerError("subjectPublicKeyInfo runs past tbsCertificate")
    return data[offset:end]
