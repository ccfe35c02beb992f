"""Real ``afb server`` and ``afb client`` processes tell a live curl download (issue 11).

curl fetches N bytes through the client's SOCKS5 proxy from a target that
then holds the connection open; while it is open both daemons' control
sockets must show that stream with exactly the bytes that went each way
(what the target received, what it sent), and after it ended, the totals.
"""

import subprocess
import threading

import gevent
from gevent.event import Event
from gevent.server import StreamServer

from tests.support import Setup, ask, read_http_head, running, wait_until

BODY = 300_000


class HoldingTarget:
    """Answers one HTTP request with BODY bytes, then holds the connection until released."""

    def __init__(self):
        self.received = 0
        self.sent = 0
        self.release = Event()
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, sock, _address):
        data = read_http_head(sock)
        if data is None:
            return
        self.received = len(data)
        head = b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n"
        sock.sendall(head + b"z" * BODY)
        self.sent = len(head) + BODY
        self.release.wait(30)
        sock.close()

    def close(self):
        self.release.set()
        self.server.stop()




def test_both_daemons_show_a_curl_download(tmp_path):
    setup = Setup(tmp_path)
    target = HoldingTarget()
    server_sock, client_sock = str(tmp_path / "server.sock"), str(tmp_path / "client.sock")
    try:
        with running("server", setup, tmp_path / "server.log"), \
                running("client", setup, tmp_path / "client.log"):
            def tunnel_open():
                try:        # the control socket comes up just after the proxy's port
                    return ask(client_sock, {"cmd": "snapshot"})["tunnels"][0]["state"] == "open"
                except OSError:
                    return False
            wait_until(tunnel_open, 20)
            out = {}
            curl = subprocess.Popen(
                ["curl", "-sS", "--max-time", "60", "--socks5-hostname",
                 "127.0.0.1:%d" % setup.proxy_port, "http://127.0.0.1:%d/blob" % target.port],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            reader = threading.Thread(target=lambda: out.update(body=curl.stdout.read()))
            reader.start()

            def row(path):
                answer = ask(path, {"cmd": "streams", "filter": ":%d" % target.port})
                return answer["streams"][0] if answer["total"] == 1 else None

            wait_until(lambda: target.sent and (row(client_sock) or {}).get("bytes_down")
                       == target.sent, 20)
            mine, theirs = row(client_sock), row(server_sock)
            expected = (target.received, target.sent)
            assert (mine["bytes_up"], mine["bytes_down"]) == expected
            assert (theirs["bytes_up"], theirs["bytes_down"]) == expected
            assert mine["host"] == theirs["host"] == "127.0.0.1"
            assert mine["app"].startswith("127.0.0.1:") and theirs["user"] == "tester"
            assert theirs["resolved"] == "127.0.0.1:%d" % target.port
            assert mine["state"] == theirs["state"] == "open"

            target.release.set()
            assert curl.wait(30) == 0
            reader.join(10)
            assert len(out["body"]) == BODY
            for path in (client_sock, server_sock):
                wait_until(lambda p=path: ask(p, {"cmd": "snapshot"})["totals"]["streams"] == 0,
                           10)
                totals = ask(path, {"cmd": "snapshot"})["totals"]
                assert (totals["bytes_up"], totals["bytes_down"]) == expected
                assert totals["streams_total"] == 1
    finally:
        target.close()
        gevent.sleep(0)
