"""The server's side of the end-to-end encryption: the ``[e2e]`` key and mode, per tunnel.

Inside the TLS WebSocket, a tunnel may run the E2E channel
(:mod:`afb.transport.secure_channel`), so that whatever terminates TLS in
front of the server (a CDN, a reverse proxy) sees neither destinations nor
data.  :class:`E2eAcceptor` holds what ``[e2e]`` configures and wraps each
new tunnel's WebSocket; its channel binding is SHA-256 of the token that
authorized the upgrade.
"""

import hashlib
import logging

from afb.codec import aead
from afb.errors import AfbError
from afb.keys import check_secret_file, load_static_key
from afb.transport.secure_channel import server_accept

log = logging.getLogger(__name__)

__all__ = ["E2eAcceptor"]


class E2eAcceptor:
    """``[e2e]``: mode (off, optional, required), the static key, the ciphers allowed."""

    def __init__(self, e2e):
        """A 0600 key file unless ``mode = off`` (AfbError naming it if not)."""
        self.mode = e2e["mode"]
        self.key = None
        self.ciphers = tuple(aead.cipher_id(name) for name in e2e["ciphers"])
        if self.mode != "off":
            check_secret_file(e2e["key"], "E2E private key ([e2e] key; made by afb keygen)")
            self.key = load_static_key(e2e["key"])

    def secure(self, ws, token, timeout, label):
        """The E2E channel on ``ws`` (or ``ws`` itself: mode off, or a plain client with
        mode optional); None (one log line) if the handshake failed."""
        if self.mode == "off":
            return ws
        try:
            secure = server_accept(ws, self.key, hashlib.sha256(token.encode()).digest(),
                                   self.ciphers, timeout, self.mode)
        except (AfbError, OSError) as exc:
            log.warning("%s: %s", label, _failure(exc))
            return None
        if secure is ws or not hasattr(secure, "cipher"):
            log.debug("%s: no E2E (plain client; [e2e] mode = optional)", label)
        else:
            log.debug("%s: E2E channel up (%s)", label, aead.cipher_name(secure.cipher))
        return secure


def _failure(exc):
    text = str(exc) or type(exc).__name__
    return text if text.startswith("E2E ") else "E2E handshake failed: " + text
