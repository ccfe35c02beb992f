"""Bad input never crashes the front door or hurts other connections (live, bounded).

A real TunnelServer with the built-in decoy gets hypothesis-made requests
(request-like pieces and raw bytes) over TLS and as plain bytes; every one
must end in an answer or a close, no error may be logged, and a plain
request on a connection opened before the fuzzing is still answered after.
"""

import logging
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afb.apps.server import TunnelServer
from tests import http_probes
from tests.support import Setup

PIECES = [b"GET", b"HEAD", b"POST", b"get", b" ", b"/", b"/index.html", b"/..", b"%", b"%2e",
          b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"\r\n", b"\n", b"Host: x", b"Host: ",
          b"Range: bytes=", b"0-", b"-5", b"Transfer-Encoding: chunked", b"Content-Length: 3",
          b"abc", b"0\r\n\r\n", b"Upgrade: websocket", b"Connection: upgrade, close",
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13",
          b"Accept-Encoding: gzip", b"If-None-Match: *", b"User-Agent: MSIE 6.0", b":", b"\x00",
          b"\xff", b"Authorization: Bearer x.y.z", b"\r\n\r\n"]


def test_fuzzed_requests_never_break_the_front_door(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    setup = Setup(tmp_path, server_extra="[access]\nmax_auth_failures = 0\n")
    server = TunnelServer(setup.server_cfg())
    server.start()
    port = server.address[1]
    early = http_probes._CTX.wrap_socket(socket.create_connection(("127.0.0.1", port), 5),
                                         server_hostname="localhost")
    try:
        early.sendall(http_probes.req("HEAD / HTTP/1.1"))
        assert early.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
        @settings(max_examples=120, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(st.one_of(st.lists(st.sampled_from(PIECES), max_size=25).map(b"".join),
                         st.binary(max_size=300)),
               st.sampled_from(["tls", "plain"]))
        def one(data, transport):
            answer, state = http_probes.run(port, transport, data + b"\r\n\r\n", quiet=0.2,
                                            limit=2.0)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 ") or b"<" in answer[:20]

        one()
        early.sendall(http_probes.req("HEAD /index.html HTTP/1.1"))   # kept alive meanwhile
        assert early.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
        answer, state = http_probes.run(port, "tls", http_probes.req("GET / HTTP/1.1"), quiet=0.3)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        early.close()
        server.stop(timeout=0)
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]
