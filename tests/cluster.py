"""Several ``afb server`` nodes behind a real HAProxy on loopback (issue 14), for tests and bench.

* :class:`HAProxy` -- ``haproxy -db -f CFG`` (the Debian package) in front of
  the nodes, TLS passthrough (``mode tcp``): the client's TLS and pin reach
  the nodes untouched.  Each node's ``/health`` on its metrics listener is
  the check (``option httpchk`` + ``check port``), every :data:`CHECK_INTER`
  ms, one failure marks a node down, one success up again; a connection
  refused by a node that is gone or draining is redispatched to another
  (``option redispatch 1``, ``retries 3``).  ``show stat`` on its stats
  socket says which nodes it takes for up.
  With ``mode="http"`` it terminates TLS instead (the nodes' certificate and
  key, so the client's pin holds) and forwards the WebSocket on plain
  ``ws://`` with X-Forwarded-For; E2E stays on inside.
  With ``proxy_protocol=True`` (passthrough) HAProxy connects to the nodes
  from :data:`HAPROXY_SOURCE` with ``send-proxy-v2``, and the nodes have
  ``[server] proxy_protocol = on`` with that address trusted: they see each
  client's own address.
* :class:`Cluster` -- one key set (certificate, JWT key, E2E key) shared by
  N nodes, each with its own port, metrics port, state directory, control
  socket and ``node_id`` (n1, n2, ...); the client config of
  :class:`~tests.support.Setup` pointed at HAProxy; start, kill, restart a
  node; which node holds the client's tunnel (``afb_tunnels_open``).
  ``state=`` a ``redis://`` URL: the nodes share it; more clients of the same
  user (:meth:`Cluster.start_clients`): leastconn deals their tunnels round.

Everything listens on and connects to 127.0.0.1 only; every wait is bounded.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

from tests.steady_load import shipped_reconnect
from tests.support import Daemon, Setup, free_port, wait_port, wait_until

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
#: HAProxy's source address towards the nodes with proxy_protocol (the nodes' only
#: trusted proxy), so that no client shares it.
HAPROXY_SOURCE = "127.0.0.9"
#: Milliseconds between two health checks of a node (the test config; conf/haproxy.cfg
#: uses 2 s): with ``fall 1`` a draining node is out of the rotation within this.
CHECK_INTER = 200

_HAPROXY_CFG = """\
global
    maxconn 4096
    stats socket {stats} mode 600 level admin

defaults
    timeout connect 500ms
    timeout client 1h
    timeout server 1h
    timeout client-fin 5s
    timeout server-fin 5s
    timeout check 500ms
    retries 3
    option redispatch 1

{frontend}
backend afb_nodes
    mode {mode}
    timeout tunnel 1h
    balance {balance}
    option httpchk
    http-check send meth GET uri /health
    http-check expect status 200
{servers}
"""

#: TLS passthrough: the nodes hold the certificate.
_PASSTHROUGH = """\
frontend afb
    mode tcp
    bind 127.0.0.1:{port}
    default_backend afb_nodes
"""

#: TLS termination at HAProxy: WebSockets forwarded as plain ws:// (E2E inside).
_TERMINATION = """\
frontend afb
    mode http
    bind 127.0.0.1:{port} ssl crt {pem} alpn http/1.1
    option forwardfor
    timeout http-request 10s
    default_backend afb_nodes
"""


def haproxy_available():
    return os.path.exists(HAPROXY)


class HAProxy:
    """A real haproxy on 127.0.0.1:``port`` in front of ``nodes`` [(name, port, metrics)]."""

    def __init__(self, directory, nodes, port=None, balance="leastconn", inter=CHECK_INTER,
                 mode="tcp", pem=None, proxy_protocol=False):
        """``mode``: ``tcp`` (TLS passthrough) or ``http`` (TLS termination with the
        certificate and key in ``pem``, the nodes on plain ws://); ``proxy_protocol``:
        ``send-proxy-v2`` from :data:`HAPROXY_SOURCE` to the nodes."""
        self.dir = str(directory)
        self.port = port or free_port()
        self.stats = os.path.join(self.dir, "haproxy.stats")
        self.conf = os.path.join(self.dir, "haproxy.cfg")
        extra = " send-proxy-v2 source %s" % HAPROXY_SOURCE if proxy_protocol else ""
        servers = "".join(
            "    server %s 127.0.0.1:%d check port %d inter %dms fall 1 rise 1%s\n"
            % (name, node_port, metrics, inter, extra) for name, node_port, metrics in nodes)
        with open(self.conf, "w") as handle:
            frontend = (_TERMINATION if mode == "http" else _PASSTHROUGH).format(
                port=self.port, pem=pem)
            handle.write(_HAPROXY_CFG.format(stats=self.stats, frontend=frontend, mode=mode,
                                             balance=balance, servers=servers))
        self.log_path = os.path.join(self.dir, "haproxy.log")
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.conf], stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_port(self.port, timeout=10)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def command(self, line):
        """One stats-socket command; -> its answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(self.stats)
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    return b"".join(chunks).decode()
                chunks.append(data)

    def states(self):
        """{server name: "UP" / "DOWN" / ...} as HAProxy sees the nodes now."""
        lines = self.command("show stat").splitlines()
        names = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(names, line.split(","), strict=False))
            if row.get("pxname") == "afb_nodes" and row.get("svname") not in ("BACKEND", None):
                out[row["svname"]] = row.get("status", "")
        return out

    def output(self):
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")


def add_keys(text, section, lines):
    """``text`` with ``lines`` atop ``[section]`` (added at the end if not there)."""
    header = "[%s]\n" % section
    if header in text:
        return text.replace(header, header + lines, 1)
    return text + header + lines


class Node:
    """One ``afb server`` of the cluster: its config and, while it runs, its Daemon."""

    def __init__(self, cluster, index):
        self.name = "n%d" % index
        self.port = free_port()
        self.metrics = free_port()
        self.conf = os.path.join(cluster.dir, "%s.conf" % self.name)
        self.log_path = os.path.join(cluster.dir, "%s.log" % self.name)
        text = open(cluster.setup.server_conf).read()
        text = re.sub(r"(?m)^listen = .*$", "listen = 127.0.0.1:%d" % self.port, text)
        text = re.sub(r"(?m)^state_dir = .*$", "state_dir = state-%s" % self.name, text)
        text = re.sub(r"(?m)^control_socket = .*$", "control_socket = %s.sock" % self.name, text)
        text = re.sub(r"(?m)^drain_timeout = .*$", "drain_timeout = %g\nmetrics_listen = "
                      "127.0.0.1:%d\nnode_id = %s" % (cluster.drain_timeout, self.metrics,
                                                      self.name), text)
        text = text.replace("log_level = debug", "log_level = %s" % cluster.log_level)
        keys = dict(cluster.server_keys)
        if cluster.access:
            keys["access"] = cluster.access + keys.get("access", "")
        if cluster.state:       # the shared store; usage written often enough for a test
            keys["server"] = "state = %s\nreport_flush = 0.5\n%s" % (cluster.state,
                                                                     keys.get("server", ""))
        if cluster.mode == "http":      # HAProxy terminates TLS and says who the client is
            text = re.sub(r"(?m)^tls = .*$", "tls = False", text)
            keys["access"] = "trusted_proxies = 127.0.0.1\n" + keys.get("access", "")
        if cluster.proxy_protocol:      # HAProxy's PROXY header says who the client is
            keys["server"] = "proxy_protocol = on\n" + keys.get("server", "")
            keys["access"] = "trusted_proxies = %s\n" % HAPROXY_SOURCE + keys.get("access", "")
        for section, lines in keys.items():
            text = add_keys(text, section, lines)
        with open(self.conf, "w") as handle:
            handle.write(text)
        self.daemon = None
        self.starts = 0

    def start(self):
        self.daemon = Daemon("server", self.conf, self.log_path)
        self.starts += 1
        wait_port(self.port)
        return self

    @property
    def running(self):
        return self.daemon is not None and self.daemon.proc.poll() is None

    def send(self, sig):
        self.daemon.proc.send_signal(sig)

    def wait_exit(self, timeout):
        """-> the exit code, once the process has ended (at most ``timeout`` s)."""
        code = self.daemon.proc.wait(timeout)
        self.daemon.log.close()
        return code

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.daemon is not None:
            self.daemon.stop(sig, timeout)

    def get(self, path):
        """(status, body) of GET ``path`` on the metrics listener; (None, error) if down."""
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.metrics, path),
                                        timeout=2) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return None, str(exc)

    def tunnels(self):
        """``afb_tunnels_open`` of this node (0 when it does not answer)."""
        status, text = self.get("/metrics")
        found = re.search(r"(?m)^afb_tunnels_open (\S+)$", text or "") if status == 200 else None
        return int(float(found.group(1))) if found else 0

    def output(self):
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")


class Cluster:
    """N nodes sharing one key set, HAProxy in front, and the client config pointed at it."""

    def __init__(self, directory, nodes=3, drain_timeout=10.0, shipped_backoff=True,
                 log_level="info", inter=CHECK_INTER, balance="leastconn", open_timeout=10,
                 mode="tcp", proxy_protocol=False, access="", state=None, server_keys=None,
                 fast_open=True):
        """``mode``: HAProxy's, ``tcp`` (TLS passthrough) or ``http`` (TLS termination);
        ``proxy_protocol``: HAProxy sends, the nodes read PROXY v2 headers (tcp only);
        ``access``: more ``[access]`` lines for every node;
        ``state``: the nodes' ``[server] state`` (a ``redis://`` URL: one store for all);
        ``server_keys``: {section: "key = value\\n"...} more for every node's config."""
        self.dir = str(directory)
        self.mode = mode
        self.proxy_protocol = proxy_protocol
        self.access = access
        self.drain_timeout = drain_timeout
        self.log_level = log_level
        self.state = state
        self.server_keys = server_keys or {}
        self.setup = Setup(directory, open_timeout=open_timeout, fast_open=fast_open)
        haproxy_port = free_port()
        self.setup.server_port = haproxy_port       # the client's URL: HAProxy
        self.setup.write()
        if shipped_backoff:
            shipped_reconnect(self.setup)
        self.nodes = [Node(self, index + 1) for index in range(nodes)]
        pem = None
        if mode == "http":      # the nodes' certificate and key, now HAProxy's: the same pin
            pem = os.path.join(self.dir, "haproxy.pem")
            with open(pem, "w") as handle:
                for part in ("cert", "key"):
                    with open(self.setup.paths[part]) as source:
                        handle.write(source.read())
            os.chmod(pem, 0o600)
        self.haproxy = HAProxy(directory, [(n.name, n.port, n.metrics) for n in self.nodes],
                               port=haproxy_port, balance=balance, inter=inter, mode=mode,
                               pem=pem, proxy_protocol=proxy_protocol)
        self.clients = []
        self.proxies = []       # the SOCKS5 address of each client started

    @property
    def proxy(self):
        """The first client's SOCKS5 address."""
        return ("127.0.0.1", self.setup.proxy_port)

    def client_conf(self, index):
        """-> (path, SOCKS port) of client ``index``'s config: the cluster's (same user,
        token and HAProxy), with a port and control socket of its own (0: the setup's)."""
        text = open(self.setup.client_conf).read()
        port = self.setup.proxy_port if index == 0 else free_port()
        text = re.sub(r"(?m)^listen = .*$", "listen = 127.0.0.1:%d" % port, text)
        text = re.sub(r"(?m)^control_socket = .*$", "control_socket = client-%d.sock" % index,
                      text)
        path = os.path.join(self.dir, "client-%d.conf" % index)
        with open(path, "w") as handle:
            handle.write(text)
        return path, port

    def start_clients(self, count, timeout=20):
        """``count`` more clients, each started once the previous one's tunnel is up,
        so that leastconn gives each tunnel to a node with the fewest."""
        for _ in range(count):
            before, index = sum(self.spread().values()), len(self.clients)
            self.start_client(*self.client_conf(index), name="client-%d" % index)
            if not wait_until(lambda b=before: sum(self.spread().values()) > b, timeout):
                raise AssertionError("client %d: no tunnel after %d s; per node: %s"
                                     % (index, timeout, self.spread()))

    def spread(self):
        """{node name: tunnels open on it now} (0 for a node that does not answer)."""
        return {node.name: node.tunnels() for node in self.nodes}

    def start(self, client=True):
        for node in self.nodes:
            node.start()
        self.haproxy.start()
        self.wait_up(self.nodes)
        if client:
            self.start_client()
        return self

    def start_client(self, conf=None, port=None, name="client"):
        daemon = Daemon("client", conf or self.setup.client_conf,
                        os.path.join(self.dir, "%s.log" % name))
        self.clients.append(daemon)
        self.proxies.append(("127.0.0.1", port or self.setup.proxy_port))
        wait_port(port or self.setup.proxy_port)
        return daemon

    def wait_up(self, nodes, timeout=15):
        """Until HAProxy takes each of ``nodes`` for up (their /health said 200)."""
        names = {node.name for node in nodes}

        def up():
            states = self.haproxy.states()
            return all(states.get(name, "").startswith("UP") for name in names)
        if not wait_until(up, timeout):
            raise AssertionError("HAProxy still has %s after %d s: %s" % (
                sorted(names), timeout, self.haproxy.states()))

    def holder(self, timeout=15):
        """The node holding the client's tunnel now (the only one with a tunnel open)."""
        found = []

        def one():
            found[:] = [node for node in self.nodes if node.running and node.tunnels() > 0]
            return len(found) == 1
        if not wait_until(one, timeout, 0.05):
            raise AssertionError("tunnels per node: %s" % {
                node.name: node.tunnels() for node in self.nodes})
        return found[0]

    def stop(self):
        for client in self.clients:
            client.stop(signal.SIGKILL)
        for node in self.nodes:
            node.stop(signal.SIGKILL)
        self.haproxy.stop()


#: The client's backoff starts again from reconnect_min only after a tunnel up this
#: long (afb/transport/tunnel_client.py HEALTHY_AFTER): a node dying after a while.
SETTLE = 3.2


def new_stream(proxy, port, deadline):
    """One SOCKS5 stream + echo of 4 bytes through ``proxy`` to 127.0.0.1:``port``,
    tried again until it works or ``deadline`` (monotonic); -> when it worked, or None."""
    from tests.support import recv_exact, socks_connect

    while time.monotonic() < deadline:
        try:
            sock = socks_connect(proxy, "127.0.0.1", port,
                                 timeout=max(0.1, deadline - time.monotonic()))
            try:
                sock.sendall(b"ping")
                if recv_exact(sock, 4) == b"ping":
                    return time.monotonic()
            finally:
                sock.close()
        except OSError:
            time.sleep(0.02)
    return None


def failovers(cluster, echo_port, kills, settle=SETTLE):
    """``kills`` times: SIGKILL the node holding the tunnel, time the first new stream
    that works after it, start the node again; -> the times (s; None: none in 10 s)."""
    waits = []
    for _ in range(kills):
        holder = cluster.holder()
        time.sleep(settle)
        if new_stream(cluster.proxy, echo_port, time.monotonic() + 5) is None:
            raise AssertionError("no stream works before the kill")
        killed = time.monotonic()
        holder.send(signal.SIGKILL)
        done = new_stream(cluster.proxy, echo_port, killed + 10)
        waits.append(None if done is None else done - killed)
        holder.wait_exit(5)
        if cluster.holder() is holder:
            raise AssertionError("the tunnel is still on the killed node")
        holder.start()
        cluster.wait_up([holder])
    return waits
