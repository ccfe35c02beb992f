"""afb's terminal dashboard (``afb tui``): a Textual app fed by a daemon's control socket.

Its own process, and never gevent: it talks to ``afb client`` or ``afb
server`` only through the control socket (docs/control-protocol.rst).
"""
