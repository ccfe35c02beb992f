"""SOCKS5 UDP ASSOCIATE end to end: PySocks and a raw RFC 1928 client, a real tunnel.

Server and client run in this process (InProcessTunnel), the UDP peers are
loopback sockets (tests/udp_support.py).  Counters of both daemons land in
one :data:`afb.monitor.counters.UDP`, so tests look at differences.
"""

import os
import random
import socket

import pytest
import socks

from afb.monitor.counters import UDP
from tests.support import InProcessTunnel, Setup, recv_all, socks_connect, wait_until
from tests.udp_support import DNS_ANSWER, RawUdpClient, TinyDns, UdpEcho, dns_query, parse_dns_a


@pytest.fixture
def echo_udp():
    server = UdpEcho()
    yield server
    server.stop()


@pytest.fixture
def dns():
    server = TinyDns()
    yield server
    server.stop()


def _client(tunnel, **kwargs):
    client = RawUdpClient(tunnel.proxy, **kwargs)
    assert client.reply == 0
    return client


def _server_streams(tunnel):
    return sum(len(s.streams) for s in tunnel.server.sessions)


def _silent(client, timeout=0.5):
    client.udp.settimeout(timeout)
    try:
        client.recv()
    except socket.timeout:
        return True
    return False


def test_dns_query_through_pysocks(tunnel, dns):
    sock = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.set_proxy(socks.SOCKS5, "127.0.0.1", tunnel.setup.proxy_port)
    sock.settimeout(5)
    try:
        for ident in range(1, 6):
            sock.sendto(dns_query("host%d.example" % ident, ident), ("127.0.0.1", dns.port))
            data, source = sock.recvfrom(4096)
            assert parse_dns_a(data) == (ident, DNS_ANSWER)
            assert source == ("127.0.0.1", dns.port)
    finally:
        sock.close()
    assert dns.queries == 5


def test_destination_by_name_is_resolved_on_the_server(tunnel, dns):
    if socket.getaddrinfo("localhost", dns.port, type=socket.SOCK_DGRAM)[0][0] != socket.AF_INET:
        pytest.skip("localhost resolves to ::1 first here (Debian 13's root); the test's DNS "
                    "server listens on 127.0.0.1 only")
    client = _client(tunnel)
    try:
        client.send("localhost", dns.port, dns_query("a.test", 77))
        host, port, data = client.recv()
        assert (host, port) == ("127.0.0.1", dns.port)
        assert parse_dns_a(data) == (77, DNS_ANSWER)
    finally:
        client.close()


def test_echo_of_many_datagrams_byte_exact(tunnel, echo_udp):
    client = _client(tunnel)
    rng = random.Random(15)
    sent = [os.urandom(rng.choice((0, 1, 17, 512, 1400, 8000, 30000))) for _ in range(400)]
    got = []
    try:
        for start in range(0, len(sent), 8):        # 8 in flight: loopback drops none
            for data in sent[start:start + 8]:
                client.send("127.0.0.1", echo_udp.port, data)
            for _ in sent[start:start + 8]:
                host, port, data = client.recv()
                assert (host, port) == ("127.0.0.1", echo_udp.port)
                got.append(data)
    finally:
        client.close()
    assert sorted(got) == sorted(sent)      # UDP may reorder; here nothing may be lost


def test_the_largest_datagram(tunnel, echo_udp):
    """65,497 bytes: with the 10-byte header, the largest IPv4 UDP payload (65,507)."""
    client = _client(tunnel)
    try:
        for _ in range(3):
            data = os.urandom(65497)
            client.send("127.0.0.1", echo_udp.port, data)
            assert client.recv() == ("127.0.0.1", echo_udp.port, data)
    finally:
        client.close()


def test_a_stranger_cannot_use_the_relay(tunnel, echo_udp):
    client = _client(tunnel)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    stranger.settimeout(0.5)
    before = UDP["dropped_source"]
    try:
        client.send("127.0.0.1", echo_udp.port, b"mine")
        assert client.recv()[2] == b"mine"
        from afb.codec.socks5_udp import build_udp_datagram
        stranger.sendto(build_udp_datagram("127.0.0.1", echo_udp.port, b"theirs"), client.relay)
        with pytest.raises(socket.timeout):
            stranger.recvfrom(4096)
        assert UDP["dropped_source"] == before + 1
        assert echo_udp.count == 1
        client.send("127.0.0.1", echo_udp.port, b"still mine")
        assert client.recv()[2] == b"still mine"
    finally:
        stranger.close()
        client.close()


def test_the_port_the_request_names_is_the_only_one(tunnel, echo_udp):
    """A request naming port P: a datagram from another port of the same host is dropped."""
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    client = _client(tunnel, named_port=other.getsockname()[1])
    before = UDP["dropped_source"]
    try:
        client.send("127.0.0.1", echo_udp.port, b"from the wrong port")
        assert wait_until(lambda: UDP["dropped_source"] == before + 1, 5)
        assert echo_udp.count == 0
    finally:
        other.close()
        client.close()


def test_closing_the_control_connection_ends_the_association(tunnel, echo_udp):
    client = _client(tunnel)
    client.send("127.0.0.1", echo_udp.port, b"x")
    assert client.recv()[2] == b"x"
    proxy = tunnel.client.proxy
    assert len(proxy.associations) == 1
    relay = next(iter(proxy.associations))
    relay_port = client.relay[1]
    client.control.close()
    assert wait_until(lambda: not proxy.associations, 5)
    assert relay.udp.closed
    assert wait_until(lambda: _server_streams(tunnel) == 0, 5), "server kept the association"
    # The relay's port is free again: nothing listens there any more.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", relay_port))
    probe.close()
    client.udp.close()


def test_fragments_are_dropped_and_counted(tunnel, echo_udp):
    client = _client(tunnel)
    before = UDP["dropped_fragment"]
    try:
        client.send("127.0.0.1", echo_udp.port, b"piece", frag=1)
        assert _silent(client)
        assert UDP["dropped_fragment"] == before + 1
        assert echo_udp.count == 0
        client.send("127.0.0.1", echo_udp.port, b"whole")
        client.udp.settimeout(5)
        assert client.recv()[2] == b"whole"
    finally:
        client.close()


def test_idle_association_ends(tmp_path, echo_udp):
    setup = Setup(tmp_path, client_extra="[udp]\nidle_timeout = 0.4\n")
    with InProcessTunnel(setup) as tunnel:
        client = _client(tunnel)
        client.send("127.0.0.1", echo_udp.port, b"x")
        assert client.recv()[2] == b"x"
        client.control.settimeout(5)
        assert recv_all(client.control) == b""           # the proxy closed it
        assert wait_until(lambda: not tunnel.client.proxy.associations, 5)
        assert wait_until(lambda: _server_streams(tunnel) == 0, 5)
        client.close()


def test_server_idle_timeout_ends_it_on_both_sides(tmp_path, echo_udp):
    setup = Setup(tmp_path, server_extra="[udp]\nidle_timeout = 0.4\n")
    with InProcessTunnel(setup) as tunnel:
        client = _client(tunnel)
        client.control.settimeout(5)
        assert recv_all(client.control) == b""
        assert wait_until(lambda: _server_streams(tunnel) == 0, 5)
        client.close()


def test_acl_refuses_after_resolution(tmp_path, echo_udp):
    setup = Setup(tmp_path, allow_private=False)
    before = UDP["dropped_acl"]
    with InProcessTunnel(setup) as tunnel:
        client = _client(tunnel)
        try:
            client.send("127.0.0.1", echo_udp.port, b"literal")
            client.send("localhost", echo_udp.port, b"by name")    # resolves to 127.0.0.1
            assert wait_until(lambda: UDP["dropped_acl"] == before + 2, 5)
            assert _silent(client)
            assert echo_udp.count == 0
        finally:
            client.close()


@pytest.mark.parametrize("side", ["client", "server"])
def test_udp_disabled_answers_command_not_supported(tmp_path, side):
    extra = "[udp]\nenabled = no\n"
    setup = Setup(tmp_path, **{side + "_extra": extra})
    with InProcessTunnel(setup) as tunnel:
        client = RawUdpClient(tunnel.proxy)
        assert client.reply == 0x07
        client.close()


def test_tcp_streams_go_on_beside_associations(tunnel, echo, echo_udp):
    client = _client(tunnel)
    try:
        sock = socks_connect(tunnel.proxy, "127.0.0.1", echo.port)
        client.send("127.0.0.1", echo_udp.port, b"u" * 1000)
        sock.sendall(b"t" * 100000)
        sock.shutdown(socket.SHUT_WR)
        assert client.recv()[2] == b"u" * 1000
        assert recv_all(sock) == b"t" * 100000
        sock.close()
    finally:
        client.close()


def test_ipv6_destination(tunnel):
    server = UdpEcho("::1")
    client = _client(tunnel)
    try:
        client.send("::1", server.port, b"six")
        assert client.recv() == ("::1", server.port, b"six")
    finally:
        client.close()
        server.stop()


def test_relay_binds_next_to_an_ipv6_proxy():
    from afb.transport.udp_relay import bind_next_to

    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.bind(("::1", 0))
    listener.listen(1)
    app = socket.create_connection(("::1", listener.getsockname()[1]))
    control, _ = listener.accept()
    relay = bind_next_to(control)
    assert relay.family == socket.AF_INET6 and relay.getsockname()[0] == "::1"
    for sock in (relay, control, app, listener):
        sock.close()


def test_port_zero_learns_the_first_datagrams_port(tunnel, echo_udp):
    client = _client(tunnel, named_port=0)
    second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    second.bind(("127.0.0.1", 0))
    before = UDP["dropped_source"]
    try:
        client.send("127.0.0.1", echo_udp.port, b"first")
        assert client.recv()[2] == b"first"
        from afb.codec.socks5_udp import build_udp_datagram
        second.sendto(build_udp_datagram("127.0.0.1", echo_udp.port, b"second"), client.relay)
        assert wait_until(lambda: UDP["dropped_source"] == before + 1, 5)
        assert echo_udp.count == 1
    finally:
        second.close()
        client.close()


def test_associations_count_against_the_users_streams(tmp_path):
    setup = Setup(tmp_path, server_extra="[tunnel]\nmax_streams_per_user = 2\n")
    with InProcessTunnel(setup) as tunnel:
        first, second = _client(tunnel), _client(tunnel)
        third = RawUdpClient(tunnel.proxy)
        assert third.reply != 0            # refused by the server: the user's limit
        third.close()
        second.close()
        assert wait_until(lambda: _server_streams(tunnel) == 1, 5)
        fourth = _client(tunnel)           # room again
        fourth.close()
        first.close()


def test_losing_the_tunnel_ends_the_association(tunnel, echo_udp):
    client = _client(tunnel)
    client.send("127.0.0.1", echo_udp.port, b"x")
    assert client.recv()[2] == b"x"
    for session in list(tunnel.server.sessions):
        session.close()
    client.control.settimeout(5)
    assert recv_all(client.control) == b""       # the app learns it: its TCP connection ends
    assert wait_until(lambda: not tunnel.client.proxy.associations, 5)
    client.close()


def test_garbage_datagrams_from_the_app_hurt_nothing(tmp_path, echo_udp):
    """2,000 random datagrams at the relay (never a name: no DNS query leaves; the ACL
    lets only the echo out), then the association and the tunnel still work."""
    setup = Setup(tmp_path, server_extra="allow = 127.0.0.1:%d\n" % echo_udp.port)
    rng = random.Random(1928)
    before = UDP["dropped_acl"], UDP["dropped_malformed"]
    with InProcessTunnel(setup) as tunnel:
        client = _client(tunnel)
        try:
            for _ in range(2000):
                data = bytearray(rng.randbytes(rng.randrange(0, 60)))
                if len(data) > 3 and data[3] == 3:
                    data[3] = rng.choice((1, 4, 9))
                if len(data) > 2 and rng.random() < 0.7:
                    data[0:3] = b"\0\0\0"          # mostly well-formed headers
                client.udp.sendto(bytes(data), client.relay)
            client.udp.settimeout(0.2)
            while True:                                 # answers of 127.0.0.1 (the echo)
                try:
                    client.recv()
                except socket.timeout:
                    break
            client.udp.settimeout(5)
            client.send("127.0.0.1", echo_udp.port, b"still here")
            while True:
                host, port, data = client.recv()
                if data == b"still here":
                    break
        finally:
            client.close()
    assert UDP["dropped_acl"] > before[0] and UDP["dropped_malformed"] > before[1]


def test_the_users_rate_limit_polices_datagrams(tmp_path, echo_udp):
    """[qos] user_rate_up = 20K: of 200 datagrams of 1,000 bytes sent at once, the
    server lets about a burst and a second's rate through, drops the rest."""
    setup = Setup(tmp_path, server_extra="[qos]\nuser_rate_up = 20K\n")
    before = UDP["dropped_rate"]
    with InProcessTunnel(setup) as tunnel:
        client = _client(tunnel)
        try:
            for _ in range(200):
                client.send("127.0.0.1", echo_udp.port, b"r" * 1000)
            client.udp.settimeout(1.0)
            got = 0
            while True:
                try:
                    client.recv()
                except socket.timeout:
                    break
                got += 1
        finally:
            client.close()
    assert UDP["dropped_rate"] > before
    assert 0 < got < 120, got
