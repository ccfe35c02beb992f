"""afb, the Anti-Filter Bridge: SOCKS5/HTTP CONNECT over a multiplexed WebSocket tunnel.

This package's ``__init__`` must stay free of imports: the entry point
(:mod:`afb.entry`) monkey-patches gevent before anything else is loaded.
"""

__version__ = "0.1.0"

#: Tunnel protocol version, named in the first exchange (HELLO frame).
PROTOCOL_VERSION = 1
