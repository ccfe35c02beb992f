"""Several ``afb server`` processes for one client (issue 14): configs, a relay, probes.

Used by tests/test_failover.py, bench/failover and bench/pool.  Every server
of a :class:`Servers` shares the keys of one :class:`~tests.support.Setup`
(same pin, E2E key, token) and has its own port, state folder and control
socket; the client lists them in ``[servers]``.  Everything listens on and
connects to 127.0.0.1 only.
"""

import os
import socket
import subprocess
import time

import gevent
import gevent.queue
from gevent.server import StreamServer

from tests.support import Daemon, ask, free_port, wait_port

#: A tiny HTTP target: every GET gets ``ok``.
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class Servers:
    """Server configs named ``names`` beside ``setup``'s (the first keeps its port)."""

    def __init__(self, setup, names=("a", "b")):
        self.setup = setup
        self.names = list(names)
        self.ports, self.confs, self.daemons = {}, {}, {}
        with open(setup.server_conf) as handle:
            text = handle.read()
        for number, name in enumerate(self.names):
            port = setup.server_port if number == 0 else free_port()
            conf = os.path.join(setup.dir, "server-%s.conf" % name)
            with open(conf, "w") as handle:
                handle.write(text.replace(":%d\n" % setup.server_port, ":%d\n" % port)
                             .replace("state_dir = state", "state_dir = state-" + name)
                             .replace("control_socket = server.sock",
                                      "control_socket = server-%s.sock" % name))
            self.ports[name], self.confs[name] = port, conf

    def url(self, name, port=None):
        return "wss://127.0.0.1:%d/tunnel" % (port or self.ports[name])

    def start(self, name, log_dir, wait=True):
        count = sum(1 for n in os.listdir(log_dir) if n.startswith("server-%s-" % name))
        daemon = Daemon("server", self.confs[name],
                        os.path.join(log_dir, "server-%s-%d.log" % (name, count)))
        self.daemons[name] = daemon
        if wait:
            wait_port(self.ports[name])
        return daemon

    def kill(self, name, sig=9):
        daemon = self.daemons.pop(name, None)
        if daemon is not None:
            daemon.stop(sig)

    def stop_all(self):
        for name in list(self.daemons):
            self.kill(name)

    def client_conf(self, urls=None, client="", tunnel="", path=None):
        """A client config listing the servers (``urls``: name -> URL, e.g. through a
        relay, in the order of preference; default: all of them, direct); ``client``
        and ``tunnel``: more lines for those sections."""
        urls = urls or {name: self.url(name) for name in self.names}
        with open(self.setup.client_conf) as handle:
            text = handle.read()
        lines = [line for line in text.splitlines() if not line.startswith("server = ")]
        text = "\n".join(lines) + "\n"
        text = text.replace("[client]\n", "[client]\n" + client, 1)
        text = text.replace("[tunnel]\n", "[tunnel]\nping_interval = 1\n" + tunnel, 1)
        text += "[servers]\n" + "".join("[[%s]]\nurl = %s\n" % (name, url)
                                        for name, url in urls.items())
        path = path or os.path.join(self.setup.dir, "client-multi.conf")
        with open(path, "w") as handle:
            handle.write(text)
        os.chmod(path, 0o600)
        return path


class HttpOk:
    """An HTTP target on 127.0.0.1 answering every request with ``ok``."""

    def __init__(self):
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port
        self.url = "http://127.0.0.1:%d/" % self.port

    @staticmethod
    def _handle(sock, _address):
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                data += chunk
            sock.sendall(_OK)
        except OSError:
            pass
        finally:
            sock.close()

    def close(self):
        self.server.stop()


def curl_ok(proxy_port, url, timeout=2.0):
    """One curl through the client's SOCKS5 port; -> whether it got ``ok``."""
    try:
        done = subprocess.run(["curl", "-s", "--max-time", str(timeout), "--socks5-hostname",
                               "127.0.0.1:%d" % proxy_port, url],
                              capture_output=True, timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0 and done.stdout == b"ok"


def until_ok(proxy_port, url, limit=10.0):
    """Seconds until a curl through the client succeeds (curls back to back); None
    if none did within ``limit``."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if curl_ok(proxy_port, url, timeout=min(2.0, limit)):
            return time.monotonic() - start
    return None




def active_server(setup):
    """The client's ``active_server`` from its control socket (None before it answers)."""
    try:
        return ask(os.path.join(setup.dir, "client.sock"),
                   {"v": 1, "cmd": "snapshot"}).get("active_server")
    except (OSError, ValueError):
        return None


class Relay:
    """A TCP relay on 127.0.0.1 to ``port``, adding ``delay`` s each way, whose
    connections can be cut one at a time (:meth:`cut`)."""

    def __init__(self, port, delay=0.0):
        self.target = port
        self.delay = delay
        self.pairs = []             # (client side, server side) of each connection
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, down, _address):
        try:
            up = socket.create_connection(("127.0.0.1", self.target), timeout=10)
        except OSError:
            down.close()
            return
        up.settimeout(None)
        self.pairs.append((down, up))
        gevent.joinall([gevent.spawn(self._pump, down, up), gevent.spawn(self._pump, up, down)])

    def _pump(self, source, sink):
        queue = gevent.queue.Queue()
        sender = gevent.spawn(self._send, queue, sink) if self.delay else None
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if sender is None:
                    sink.sendall(data)
                else:
                    queue.put((time.monotonic() + self.delay, data))
        except OSError:
            pass
        finally:
            if sender is not None:
                queue.put(None)
                sender.join()
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @staticmethod
    def _send(queue, sink):
        try:
            for item in iter(queue.get, None):
                due, data = item
                gevent.sleep(max(0.0, due - time.monotonic()))
                sink.sendall(data)
        except OSError:
            pass

    def cut(self, index):
        """Close both sides of connection ``index`` (a tunnel dies, its server lives)."""
        for sock in self.pairs[index]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self):
        self.server.stop()
        for index in range(len(self.pairs)):
            self.cut(index)
