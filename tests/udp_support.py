"""UDP peers for the SOCKS5 UDP ASSOCIATE tests: an echo, a tiny DNS server, a raw client.

Everything listens on loopback.  The DNS server answers every A question with
:data:`DNS_ANSWER` (it is a test's authority, not a resolver); the raw client
speaks RFC 1928's UDP header itself, so tests can send what PySocks will not
(fragments, a stranger's datagram).
"""

import socket
import struct

from gevent.server import DatagramServer

from afb.codec.address import encode_address
from afb.codec.socks5_udp import build_udp_datagram, parse_udp_header

DNS_ANSWER = "10.1.2.3"


class _Server(DatagramServer):
    def do_read(self):
        """gevent reads 8,192 bytes at most: a bigger datagram would be cut."""
        try:
            return self._socket.recvfrom(65535)
        except BlockingIOError:
            return None


class UdpEcho(_Server):
    """Sends every datagram back to where it came from."""

    def __init__(self, host="127.0.0.1"):
        super().__init__((host, 0))
        self.count = 0
        self.start()
        self.port = self.address[1]

    def handle(self, data, address):
        self.count += 1
        self.socket.sendto(data, address)


class TinyDns(_Server):
    """Answers A queries with one A record (DNS_ANSWER, TTL 60)."""

    def __init__(self, host="127.0.0.1"):
        super().__init__((host, 0))
        self.queries = 0
        self.start()
        self.port = self.address[1]

    def handle(self, data, address):
        self.queries += 1
        answer = dns_answer(data)
        if answer is not None:
            self.socket.sendto(answer, address)


def dns_query(name, ident=0x1234):
    """A standard query (RD set) for the A record of ``name``."""
    labels = b"".join(bytes((len(part),)) + part.encode() for part in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", 1, 1)


def dns_answer(query):
    """The response to ``query`` (None if it is not one question)."""
    if len(query) < 17:
        return None
    ident, _flags, qdcount = struct.unpack_from("!HHH", query)
    if qdcount != 1:
        return None
    end = query.index(b"\0", 12) + 5
    question = query[12:end]
    record = (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(DNS_ANSWER))
    return struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + record


def parse_dns_a(response):
    """``(id, address)`` of the first A record of a response built by dns_answer."""
    ident = struct.unpack_from("!H", response)[0]
    return ident, socket.inet_ntoa(response[-4:])


class RawUdpClient:
    """A SOCKS5 UDP client written from RFC 1928: TCP control connection + UDP socket."""

    def __init__(self, proxy, bind_port=0, timeout=5.0, named_port=None):
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", bind_port))
        self.udp.settimeout(timeout)
        self.control = socket.create_connection(proxy, timeout=timeout)
        self.control.sendall(b"\x05\x01\x00")
        assert _recv_exact(self.control, 2) == b"\x05\x00"
        port = self.udp.getsockname()[1] if named_port is None else named_port
        self.control.sendall(b"\x05\x03\x00" + encode_address("0.0.0.0", port))
        head = _recv_exact(self.control, 4)
        self.reply = head[1]
        if self.reply != 0:
            self.relay = None
            return
        assert head[3] == 1, head
        rest = _recv_exact(self.control, 6)
        self.relay = (socket.inet_ntoa(rest[:4]), struct.unpack("!H", rest[4:])[0])

    def send(self, host, port, data, frag=0):
        self.udp.sendto(build_udp_datagram(host, port, data, frag), self.relay)

    def recv(self):
        """-> (host, port, data) of the next datagram through the relay."""
        data, source = self.udp.recvfrom(70000)
        assert source == self.relay, source
        packet = parse_udp_header(data)
        assert packet.frag == 0
        return packet.host, packet.port, packet.data

    def close(self):
        self.control.close()
        self.udp.close()


def _recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("closed after %d of %d bytes" % (len(data), n))
        data += chunk
    return data
