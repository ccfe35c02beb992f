"""Rival tunnels, loopback targets and the load worker for ``bench/compare``.

Everything here listens and connects on 127.0.0.1 only.

Peers -- each exposes a local SOCKS5 port (or, for socat, a plain relay) that
the same clients (curl, PySocks, iperf3 under proxychains4) drive:

========== =================================================================
name        what runs
========== =================================================================
direct      nothing: the clients go straight to the target (baseline)
microsocks  ``microsocks`` (plain SOCKS5 server, no tunnel)
socat       ``socat TCP-LISTEN,fork TCP:target``: one relay per target, no
            SOCKS at all (a plain-relay baseline)
v2ray-ws    v2ray 4.x: socks inbound -> VLESS over ws -> VLESS inbound -> freedom
v2ray-wss   the same over wss (TLS, self-signed ECDSA P-256 cert)
ss-ws       ss-local -> ss-v2ray-plugin (websocket) -> ss-server (aes-256-gcm)
ss-wss      the same with the plugin in tls mode
trojan      trojan client (socks5) -> trojan server (TLS); fallback is the
            loopback blob HTTP server
afb-ws      ``afb client`` -> ws:// -> ``afb server`` (bench/common.start_afb_pair),
            end-to-end encryption (E2E) inside the WebSocket on, as by default
afb-wss     the same over wss://
afb-wss-noe2e  afb over wss:// with E2E off (``[e2e] mode = off``), for reference
py-floor    ``bench/floor_socks.py``: the least a SOCKS5 server can be in CPython
            (one epoll loop, no auth/ACL/log); opt-in, a baseline: the floor
            for any one-hop Python proxy
py-tunnel-floor  ``bench/floor_tunnel.py`` client + server: the least a
            two-process tunnel can be in CPython (plain TCP, 9-byte frames, no
            TLS/E2E/flow control); opt-in, a baseline: the floor for afb's shape
========== =================================================================

A peer object has ``name``, ``kind`` ("direct", "socks" or "relay"),
``start(tmpdir, targets)`` -> ``(host, port)`` of its SOCKS5 port (None for
direct and socat), ``relay(target_port)`` (socat only), ``pids()`` (the
processes to sample for CPU and RSS; their live descendants are added by
:func:`tree_pids`), ``alive()`` and ``stop()``.

Subcommands (run by bench/compare, under the venv's python)::

    python bench/peers.py serve-targets --echo-port N --close-port N
    python bench/peers.py worker MODE --target HOST:PORT [--socks HOST:PORT] ...

``serve-targets`` runs the echo and close-timing targets (gevent).  ``worker``
runs one measurement (echo, page, close, conc) through PySocks under gevent and
prints one JSON line.
"""

import sys

sys.dont_write_bytecode = True   # no bench/__pycache__

if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] in ("worker", "serve-targets"):
    from gevent import monkey

    monkey.patch_all()

import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import time
import uuid

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import common  # noqa: E402  (bench/common.py, written alongside bench/throughput)
from common import LOOPBACK, free_port, wait_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

#: Debian packages each peer needs (bench/compare installs the missing ones).
PACKAGES = {
    "direct": [],
    "microsocks": ["microsocks"],
    "socat": ["socat"],
    "v2ray-ws": ["v2ray"],
    "v2ray-wss": ["v2ray", "openssl"],
    "ss-ws": ["shadowsocks-libev", "shadowsocks-v2ray-plugin"],
    "ss-wss": ["shadowsocks-libev", "shadowsocks-v2ray-plugin", "openssl"],
    "trojan": ["trojan", "openssl"],
    "afb-ws": [],
    "afb-wss": [],
    "afb-wss-noe2e": [],
    "py-floor": [],
    "py-tunnel-floor": [],
}
#: Debian packages each bench/compare test needs beyond curl.
TEST_PACKAGES = {"iperf3": ["iperf3", "proxychains4"]}
#: Binaries that show a package is installed.
BINARIES = {
    "microsocks": "microsocks", "socat": "socat", "v2ray": "v2ray",
    "shadowsocks-libev": "ss-server", "shadowsocks-v2ray-plugin": "ss-v2ray-plugin",
    "trojan": "trojan", "openssl": "openssl", "curl": "curl",
    "iperf3": "iperf3", "proxychains4": "proxychains4",
}


# --- processes, CPU and memory ---------------------------------------------------------

def raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _children_map():
    """{ppid: [pid, ...]} over every process in /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        try:
            ppid = int(data[data.rindex(b")") + 2:].split()[1])
        except (ValueError, IndexError):
            continue
        out.setdefault(ppid, []).append(int(entry))
    return out


def tree_pids(pids):
    """``pids`` plus all their live descendants (ss-server's plugin, socat's forks)."""
    pids = [p for p in pids if p]
    if not pids:
        return []
    kids = _children_map()
    seen, todo = [], list(pids)
    for _ in range(100000):
        if not todo:
            break
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(kids.get(pid, ()))
    return seen


def proc_cpu(pid):
    """utime+stime+cutime+cstime of ``pid`` in seconds (reaped children included:
    socat's per-connection forks end up there), 0.0 if it is gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read()
    except OSError:
        return 0.0
    fields = data[data.rindex(b")") + 2:].split()
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


def tree_cpu(pids):
    return sum(proc_cpu(p) for p in tree_pids(pids))


def proc_rss_kib(pid):
    try:
        with open("/proc/%d/statm" % pid, "rb") as handle:
            return int(handle.read().split()[1]) * PAGE_SIZE // 1024
    except (OSError, ValueError, IndexError):
        return 0


def tree_rss_kib(pids):
    return sum(proc_rss_kib(p) for p in tree_pids(pids))


class RssSampler:
    """Samples the summed RSS of a peer's process tree every ``interval`` s in a thread."""

    def __init__(self, pids_fn, interval=0.05, max_seconds=600):
        import threading

        self.pids_fn = pids_fn
        self.interval = interval
        self.max_seconds = max_seconds
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        deadline = time.monotonic() + self.max_seconds
        for _ in range(int(self.max_seconds / self.interval) + 1):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            try:
                rss = tree_rss_kib(self.pids_fn())
            except Exception:   # a process vanished mid-scan
                rss = 0
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def _log_tail(path, lines=15):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def gen_cert(directory, name="localhost"):
    """A self-signed ECDSA P-256 certificate for ``name`` (SAN also 127.0.0.1)."""
    os.makedirs(directory, exist_ok=True)
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    if not (os.path.exists(cert) and os.path.exists(key)):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30", "-subj", "/CN=" + name,
             "-addext", "subjectAltName=DNS:%s,IP:127.0.0.1" % name,
             "-keyout", key, "-out", cert],
            check=True, capture_output=True, timeout=30)
    return cert, key


# --- peers --------------------------------------------------------------------------------

class Peer:
    name = "?"
    kind = "socks"
    note = ""

    def __init__(self):
        self.procs = common.Processes()
        self.dir = None
        self.socks = None

    def binaries(self):
        return [BINARIES[p] for p in PACKAGES.get(self.name, ()) if p in BINARIES]

    def missing(self):
        return [b for b in self.binaries() if shutil.which(b) is None]

    def _spawn(self, argv, log_name, **kwargs):
        return self.procs.spawn(argv, os.path.join(self.dir, log_name), cwd=self.dir, **kwargs)

    def _wait(self, port, proc, what, timeout=15):
        try:
            wait_port(port, LOOPBACK, timeout=timeout, proc=proc)
        except Exception as exc:
            logs = "".join("--- %s\n%s" % (n, _log_tail(os.path.join(self.dir, n)))
                           for n in sorted(os.listdir(self.dir)) if n.endswith(".log"))
            raise RuntimeError("%s: %s did not listen: %s\n%s"
                               % (self.name, what, exc, logs)) from exc

    def start(self, tmpdir, targets):
        """Start the peer in ``tmpdir``; returns the SOCKS5 (host, port) or None."""
        self.dir = os.path.abspath(tmpdir)
        os.makedirs(self.dir, exist_ok=True)
        self.socks = self._start(targets)
        return self.socks

    def _start(self, targets):
        raise NotImplementedError

    def pids(self):
        return [p.pid for p in self.procs.procs if p.poll() is None]

    def alive(self):
        return all(p.poll() is None for p in self.procs.procs)

    def stop(self):
        # Descendants first (by PID: ss-server's plugin, socat's forks), then our own.
        own = [p.pid for p in self.procs.procs]
        extra = [p for p in tree_pids(own) if p not in own]
        for pid in extra:
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        self.procs.stop_all(timeout=5)
        deadline = time.monotonic() + 3
        for pid in extra:
            for _ in range(60):
                if not os.path.exists("/proc/%d" % pid) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.socks = None


class Direct(Peer):
    name = "direct"
    kind = "direct"
    note = "no proxy (baseline)"

    def _start(self, targets):
        return None


class Microsocks(Peer):
    name = "microsocks"
    note = "plain SOCKS5 server, one thread per connection"

    def _start(self, targets):
        port = free_port()
        proc = self._spawn(["microsocks", "-i", LOOPBACK, "-p", str(port)], "microsocks.log")
        self._wait(port, proc, "microsocks")
        return (LOOPBACK, port)


class PyFloor(Peer):
    name = "py-floor"
    note = ("bench/floor_socks.py: one CPython epoll loop, plain sockets, no auth, ACL or "
            "logging; the floor for any one-hop Python proxy")

    def _start(self, targets):
        port = free_port()
        proc = self._spawn([sys.executable, os.path.join(BENCH_DIR, "floor_socks.py"), str(port)],
                           "floor_socks.log")
        self._wait(port, proc, "floor_socks")
        return (LOOPBACK, port)


class PyTunnelFloor(Peer):
    name = "py-tunnel-floor"
    note = ("bench/floor_tunnel.py: a CPython client (SOCKS5) + server over one plain TCP "
            "connection, 9-byte frames, no TLS, E2E, flow control, auth or logging; the "
            "floor for any two-process Python tunnel")

    def _start(self, targets):
        script = os.path.join(BENCH_DIR, "floor_tunnel.py")
        server_port, socks_port = free_port(), free_port()
        server = self._spawn([sys.executable, script, "server", str(server_port)],
                             "tunnel_server.log")
        self._wait(server_port, server, "floor_tunnel server")
        client = self._spawn([sys.executable, script, "client", str(socks_port),
                              str(server_port)], "tunnel_client.log")
        self._wait(socks_port, client, "floor_tunnel client")
        return (LOOPBACK, socks_port)


class Socat(Peer):
    name = "socat"
    kind = "relay"
    note = ("plain TCP relay per target (fork, nodelay, -b 65536); no SOCKS handshake; "
            "its RSS is summed over one forked process per stream (shared pages counted "
            "in each)")

    def __init__(self):
        super().__init__()
        self.relays = {}

    def _start(self, targets):
        self.relays = {}
        return None

    def relay(self, target_port):
        """The port of a socat relay to 127.0.0.1:target_port (started on first use)."""
        if target_port not in self.relays:
            port = free_port()
            proc = self._spawn(
                ["socat", "-b", "65536",
                 "TCP4-LISTEN:%d,bind=%s,reuseaddr,fork,backlog=4096,nodelay" % (port, LOOPBACK),
                 "TCP4:%s:%d,nodelay" % (LOOPBACK, target_port)],
                "socat-%d.log" % target_port)
            self._wait(port, proc, "socat relay to %d" % target_port)
            self.relays[target_port] = port
        return self.relays[target_port]

    def stop(self):
        super().stop()
        self.relays = {}


class V2ray(Peer):
    """v2ray 4.x (Debian's 4.34): VLESS over ws or wss."""

    def __init__(self, tls):
        super().__init__()
        self.tls = tls
        self.name = "v2ray-wss" if tls else "v2ray-ws"
        self.note = "v2ray %s, VLESS over %s" % (_v2ray_version(), "wss" if tls else "ws")

    def _stream(self, server, cert=None, key=None):
        stream = {"network": "ws", "wsSettings": {"path": "/vl"}}
        if self.tls:
            stream["security"] = "tls"
            if server:
                stream["tlsSettings"] = {"certificates": [
                    {"certificateFile": cert, "keyFile": key}]}
            else:
                stream["tlsSettings"] = {"serverName": "localhost", "allowInsecure": True}
        return stream

    def configs(self, directory, server, client, fallback_port=None):
        """Write server.json and client.json in ``directory``: the server listens on
        ``server`` (host, port), the client's SOCKS5 port is ``client`` (host, port)
        and it dials ``server``; returns (server argv, client argv, env).  Also
        used by bench/latency_under_load with the two in network namespaces."""
        cert, key = gen_cert(os.path.join(directory, "tls")) if self.tls else (None, None)
        uid = str(uuid.uuid4())
        server_conf = {
            "log": {"loglevel": "warning", "access": "none"},
            "inbounds": [{"listen": server[0], "port": server[1], "protocol": "vless",
                          "settings": {"clients": [{"id": uid}], "decryption": "none"},
                          "streamSettings": self._stream(True, cert, key)}],
            "outbounds": [{"protocol": "freedom", "settings": {}}],
        }
        client_conf = {
            "log": {"loglevel": "warning", "access": "none"},
            "inbounds": [{"listen": client[0], "port": client[1], "protocol": "socks",
                          "settings": {"auth": "noauth", "udp": False}}],
            "outbounds": [{"protocol": "vless",
                           "settings": {"vnext": [{"address": server[0], "port": server[1],
                                                   "users": [{"id": uid, "encryption": "none"}]}]},
                           "streamSettings": self._stream(False)}],
        }
        for name, conf in (("server.json", server_conf), ("client.json", client_conf)):
            with open(os.path.join(directory, name), "w") as handle:
                json.dump(conf, handle, indent=1)
        env = common.clean_env(V2RAY_LOCATION_ASSET=directory)
        return (["v2ray", "-config", os.path.join(directory, "server.json")],
                ["v2ray", "-config", os.path.join(directory, "client.json")], env)

    def _start(self, targets):
        sport, cport = free_port(), free_port()
        server, client, env = self.configs(self.dir, (LOOPBACK, sport), (LOOPBACK, cport))
        proc = self._spawn(server, "server.log", env=env)
        self._wait(sport, proc, "v2ray server")
        proc = self._spawn(client, "client.log", env=env)
        self._wait(cport, proc, "v2ray client")
        return (LOOPBACK, cport)


def _v2ray_version():
    try:
        out = subprocess.run(["v2ray", "-version"], capture_output=True, text=True, timeout=10)
        return out.stdout.split()[1]
    except Exception:
        return "4.x"


class Shadowsocks(Peer):
    """shadowsocks-libev with ss-v2ray-plugin (websocket, optionally tls)."""

    METHOD = "aes-256-gcm"

    def __init__(self, tls):
        super().__init__()
        self.tls = tls
        self.name = "ss-wss" if tls else "ss-ws"
        self.note = "shadowsocks-libev %s + v2ray-plugin %s" % (
            self.METHOD, "tls (wss)" if tls else "websocket (ws)")

    def _start(self, targets):
        sport, cport = free_port(), free_port()
        password = uuid.uuid4().hex
        sopts, copts = ["server", "path=/ss", "loglevel=none"], ["path=/ss", "loglevel=none"]
        if self.tls:
            cert, key = gen_cert(os.path.join(self.dir, "tls"))
            sopts += ["tls", "host=localhost", "cert=" + cert, "key=" + key]
            copts += ["tls", "host=localhost", "cert=" + cert]
        base = ["-k", password, "-m", self.METHOD, "-t", "300", "--plugin", "ss-v2ray-plugin"]
        proc = self._spawn(["ss-server", "-s", LOOPBACK, "-p", str(sport)] + base
                           + ["--plugin-opts", ";".join(sopts)], "server.log")
        self._wait(sport, proc, "ss-server + plugin")
        proc = self._spawn(["ss-local", "-s", LOOPBACK, "-p", str(sport), "-b", LOOPBACK,
                            "-l", str(cport)] + base + ["--plugin-opts", ";".join(copts)],
                           "client.log")
        self._wait(cport, proc, "ss-local")
        return (LOOPBACK, cport)


class Trojan(Peer):
    name = "trojan"
    note = "trojan (TLS per connection, no mux); fallback = loopback blob server"

    def configs(self, directory, server, client, fallback_port):
        """Write server.json and client.json in ``directory`` (see :meth:`V2ray.configs`);
        the server's fallback (what a non-trojan client reaches) is
        ``fallback_port`` on its own 127.0.0.1."""
        cert, key = gen_cert(os.path.join(directory, "tls"))
        password = uuid.uuid4().hex
        tcp = {"no_delay": True, "keep_alive": True, "reuse_port": False,
               "fast_open": False, "fast_open_qlen": 20}
        server_conf = {
            "run_type": "server", "local_addr": server[0], "local_port": server[1],
            "remote_addr": LOOPBACK, "remote_port": fallback_port,
            "password": [password], "log_level": 2,
            "ssl": {"cert": cert, "key": key, "key_password": "",
                    "cipher_tls13": ("TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:"
                                     "TLS_AES_256_GCM_SHA384"),
                    "prefer_server_cipher": True, "alpn": ["http/1.1"],
                    "reuse_session": True, "session_ticket": False, "session_timeout": 600,
                    "plain_http_response": "", "curves": "", "dhparam": ""},
            "tcp": dict(tcp, prefer_ipv4=True),
            "mysql": {"enabled": False},
        }
        client_conf = {
            "run_type": "client", "local_addr": client[0], "local_port": client[1],
            "remote_addr": server[0], "remote_port": server[1],
            "password": [password], "log_level": 2,
            "ssl": {"verify": True, "verify_hostname": True, "cert": cert, "sni": "localhost",
                    "alpn": ["http/1.1"], "reuse_session": True, "session_ticket": False,
                    "curves": ""},
            "tcp": tcp,
        }
        for name, conf in (("server.json", server_conf), ("client.json", client_conf)):
            with open(os.path.join(directory, name), "w") as handle:
                json.dump(conf, handle, indent=1)
        return (["trojan", "-c", os.path.join(directory, "server.json")],
                ["trojan", "-c", os.path.join(directory, "client.json")], common.clean_env())

    def _start(self, targets):
        sport, cport = free_port(), free_port()
        server, client, _env = self.configs(self.dir, (LOOPBACK, sport), (LOOPBACK, cport),
                                            targets["blob"])
        proc = self._spawn(server, "server.log")
        self._wait(sport, proc, "trojan server")
        proc = self._spawn(client, "client.log")
        self._wait(cport, proc, "trojan client")
        return (LOOPBACK, cport)


#: ``bench/compare --base REV`` sets this: the checkout the ``afb-*@base`` peers run.
BASE_CHECKOUT = None


class Afb(Peer):
    def __init__(self, tls, e2e=True, base=False):
        super().__init__()
        self.tls = tls
        self.e2e = e2e
        self.checkout = BASE_CHECKOUT if base else None
        self.name = ("afb-wss" if tls else "afb-ws") + ("" if e2e else "-noe2e") + \
            ("@base" if base else "")
        self.note = "afb %s, E2E %s (bench/common.start_afb_pair)%s" % (
            "wss" if tls else "ws", "on" if e2e else "off",
            ", at --base" if base else "")
        self.pair = None

    def missing(self):
        return [] if os.path.exists(common.VENV_AFB) else [common.VENV_AFB]

    def _start(self, targets):
        allow = ["%s:%d" % (LOOPBACK, p) for p in sorted(set(targets.values()))]
        self.pair = common.start_afb_pair(self.dir, self.tls, procs=self.procs, allow=allow,
                                          probe_port=targets["blob"], timeout=20, e2e=self.e2e,
                                          checkout=self.checkout)
        return (LOOPBACK, self.pair.proxy_port)

    def stop(self):
        super().stop()
        self.pair = None


def make_peer(name):
    table = {
        "direct": Direct, "microsocks": Microsocks, "socat": Socat,
        "v2ray-ws": lambda: V2ray(False), "v2ray-wss": lambda: V2ray(True),
        "ss-ws": lambda: Shadowsocks(False), "ss-wss": lambda: Shadowsocks(True),
        "trojan": Trojan, "afb-ws": lambda: Afb(False), "afb-wss": lambda: Afb(True),
        "afb-wss-noe2e": lambda: Afb(True, e2e=False), "py-floor": PyFloor,
        "py-tunnel-floor": PyTunnelFloor,
        "afb-ws@base": lambda: Afb(False, base=True), "afb-wss@base": lambda: Afb(True, base=True),
    }
    if name not in table:
        raise KeyError("unknown peer %r (known: %s)" % (name, ", ".join(table)))
    return table[name]()


ALL_PEERS = ["direct", "microsocks", "socat", "v2ray-ws", "v2ray-wss", "ss-ws", "ss-wss",
             "trojan", "afb-ws", "afb-wss", "afb-wss-noe2e"]
#: Opt-in peers (not in the default list): --peers py-floor,...; the @base ones need --base.
EXTRA_PEERS = ["py-floor", "py-tunnel-floor", "afb-ws@base", "afb-wss@base"]


# --- targets: echo and close-timing (gevent, own process) ------------------------------------

def _serve_targets(echo_port, close_port):
    import gevent
    from gevent.server import StreamServer

    closes = {}

    def echo(sock, _addr):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for _ in range(1 << 30):
                data = sock.recv(65536)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        finally:
            sock.close()

    def close_target(sock, _addr):
        """'C<id>\\n': send 16 bytes, wait 50 ms, note the monotonic time, close.
        'Q<id>\\n' (asked directly, not through a peer): that time, or 'none'."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.settimeout(30)
            line = b""
            for _ in range(64):
                if line.endswith(b"\n"):
                    break
                chunk = sock.recv(64)
                if not chunk:
                    return
                line += chunk
            kind, ident = line[:1], line[1:].strip().decode("ascii", "replace")
            if kind == b"C":
                sock.sendall(b"x" * 16)
                gevent.sleep(0.05)
                stamp = time.monotonic()
                sock.close()
                closes[ident] = stamp
                if len(closes) > 100000:
                    closes.clear()
            elif kind == b"Q":
                stamp = closes.pop(ident, None)
                sock.sendall(b"none\n" if stamp is None else b"%.9f\n" % stamp)
        except OSError:
            pass
        finally:
            sock.close()

    raise_nofile()
    servers = [StreamServer((LOOPBACK, echo_port), echo, backlog=4096),
               StreamServer((LOOPBACK, close_port), close_target, backlog=4096)]
    for srv in servers:
        srv.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Bounded in time: bench/compare stops us long before this.
    gevent.sleep(6 * 3600)


def start_targets(procs, directory, iperf3=False):
    """The blob server (bench/common) + the echo/close targets; returns a dict of ports.

    With ``iperf3``, the dict also holds a free port for bench/compare's iperf3 test,
    which starts a one-off ``iperf3 -s -1`` there for every run (nothing listens on it
    in between); like every target port, it is in the afb peers' [acl] allow."""
    blob, _proc = common.start_blob_server(procs, log_path=os.path.join(directory, "blob.log"))
    echo_port, close_port = free_port(), free_port()
    proc = procs.spawn([sys.executable, os.path.abspath(__file__), "serve-targets",
                        "--echo-port", str(echo_port), "--close-port", str(close_port)],
                       os.path.join(directory, "targets.log"))
    wait_port(echo_port, proc=proc)
    wait_port(close_port, proc=proc)
    targets = {"blob": blob, "echo": echo_port, "close": close_port}
    if iperf3:
        targets["iperf3"] = free_port()
    return targets


# --- the load worker (PySocks under gevent, own process) ---------------------------------------

def pct(values, q):
    """The q-th percentile (nearest rank) of ``values``."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def _summary(values_ms):
    return {"n": len(values_ms), "median_ms": statistics.median(values_ms) if values_ms else None,
            "p99_ms": pct(values_ms, 99), "max_ms": max(values_ms) if values_ms else None}


class _Dialer:
    def __init__(self, socks_addr, timeout):
        self.socks_addr = socks_addr
        self.timeout = timeout

    def connect(self, target):
        if self.socks_addr:
            import socks

            sock = socks.socksocket(socket.AF_INET, socket.SOCK_STREAM)
            sock.set_proxy(socks.SOCKS5, self.socks_addr[0], self.socks_addr[1], rdns=True)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(target)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return sock


def _echo_once(sock, payload):
    sock.sendall(payload)
    if common.recv_exact(sock, len(payload)) != payload:
        raise ValueError("echo mismatch")


def work_echo(dialer, target, count):
    """``count`` x (new stream + one 64-byte echo + close), then ``count`` echoes on one stream."""
    payload = os.urandom(64)
    new, errors = [], 0
    for _ in range(count):
        t0 = time.perf_counter()
        try:
            sock = dialer.connect(target)
            try:
                _echo_once(sock, payload)
            finally:
                sock.close()
        except Exception:
            errors += 1
            continue
        new.append((time.perf_counter() - t0) * 1000)
    same = []
    sock = dialer.connect(target)
    try:
        _echo_once(sock, payload)   # warm
        for _ in range(count):
            t0 = time.perf_counter()
            _echo_once(sock, payload)
            same.append((time.perf_counter() - t0) * 1000)
    finally:
        sock.close()
    return {"new_stream": _summary(new), "same_stream": _summary(same), "errors": errors}


def work_page(dialer, target, streams, size, rounds):
    """``rounds`` x (``streams`` fresh streams at once, each GET /blob?size=``size``)."""
    import gevent

    request = ("GET /blob?size=%d HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
               % (size, target[0], target[1])).encode()

    def fetch():
        sock = dialer.connect(target)
        try:
            sock.sendall(request)
            data = b""
            for _ in range(1000):
                head, sep, rest = data.partition(b"\r\n\r\n")
                if sep:
                    break
                chunk = sock.recv(65536)
                if not chunk:
                    raise EOFError("EOF in headers")
                data += chunk
            length = None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if not head.startswith(b"HTTP/1.1 200") or length != size:
                raise ValueError("bad response %r" % head[:80])
            got = len(rest)
            for _ in range(size + 1):
                if got >= size:
                    break
                chunk = sock.recv(65536)
                if not chunk:
                    raise EOFError("EOF in body")
                got += len(chunk)
            return got
        finally:
            sock.close()

    walls, failures = [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        jobs = [gevent.spawn(fetch) for _ in range(streams)]
        gevent.joinall(jobs, timeout=dialer.timeout * 2)
        wall = (time.perf_counter() - t0) * 1000
        bad = [j for j in jobs if not j.successful()]
        for job in jobs:
            job.kill(block=False)
        if bad:
            failures += 1
            continue
        walls.append(wall)
    return {"rounds": rounds, "failed_rounds": failures,
            "median_ms": statistics.median(walls) if walls else None,
            "min_ms": min(walls) if walls else None, "walls_ms": walls}


def work_close(dialer, target, control, count):
    """Time from the target's close to EOF here, ``count`` times."""
    deltas, errors = [], 0
    for _ in range(count):
        ident = uuid.uuid4().hex
        try:
            sock = dialer.connect(target)
            try:
                sock.sendall(b"C%s\n" % ident.encode())
                common.recv_exact(sock, 16)
                for _ in range(1 << 20):
                    if not sock.recv(65536):
                        break
                t_eof = time.monotonic()
            finally:
                sock.close()
            stamp = None
            for _ in range(20):   # the target notes the time right after close()
                q = socket.create_connection(control, timeout=5)
                try:
                    q.sendall(b"Q%s\n" % ident.encode())
                    reply = b""
                    for _ in range(10):
                        chunk = q.recv(64)
                        if not chunk:
                            break
                        reply += chunk
                finally:
                    q.close()
                if reply.strip() != b"none":
                    stamp = float(reply)
                    break
                time.sleep(0.01)
            if stamp is None:
                raise ValueError("target has no close time")
            deltas.append((t_eof - stamp) * 1000)
        except Exception:
            errors += 1
    out = _summary(deltas)
    out["errors"] = errors
    return out


def work_conc(dialer, target, count, parallel, hold, deadline_s):
    """Open ``count`` streams (at most ``parallel`` connecting at once), one 64-byte echo
    each, all held open until every one is done; then hold ``hold`` s and close."""
    import gevent
    from gevent.pool import Pool

    payload = os.urandom(64)
    socks_open, errors = [], {}

    def one():
        try:
            sock = dialer.connect(target)
        except Exception as exc:
            key = type(exc).__name__ + ": " + str(exc)[:80]
            errors[key] = errors.get(key, 0) + 1
            return
        try:
            _echo_once(sock, payload)
            socks_open.append(sock)
        except Exception as exc:
            key = type(exc).__name__ + ": " + str(exc)[:80]
            errors[key] = errors.get(key, 0) + 1
            sock.close()

    pool = Pool(parallel)
    t0 = time.perf_counter()
    for _ in range(count):
        pool.spawn(one)
    finished = pool.join(timeout=deadline_s)
    elapsed = time.perf_counter() - t0
    if not finished:
        pool.kill(block=False)
    ok = len(socks_open)
    # still open: prove it with one more echo on the first and last
    alive = 0
    for sock in socks_open[:1] + socks_open[-1:]:
        try:
            _echo_once(sock, payload)
            alive += 1
        except Exception:
            pass
    print(json.dumps({"event": "all_open", "ok": ok}), flush=True)
    gevent.sleep(hold)
    for sock in socks_open:
        sock.close()
    return {"count": count, "ok": ok, "seconds": elapsed, "finished": bool(finished),
            "recheck_ok": alive, "errors": errors}


def _hostport(text):
    host, _, port = text.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]") and not host.startswith("127."):
        raise SystemExit("loopback addresses only, not %r" % text)
    return (host.strip("[]"), int(port))


def _worker_main(args):
    raise_nofile()
    dialer = _Dialer(_hostport(args.socks) if args.socks else None, args.timeout)
    target = _hostport(args.target)
    if args.mode == "echo":
        out = work_echo(dialer, target, args.count)
    elif args.mode == "page":
        out = work_page(dialer, target, args.streams, args.size, args.rounds)
    elif args.mode == "close":
        out = work_close(dialer, target, _hostport(args.control), args.count)
    elif args.mode == "conc":
        out = work_conc(dialer, target, args.count, args.parallel, args.hold, args.deadline)
    else:
        raise SystemExit("unknown mode")
    print(json.dumps({"event": "result", "result": out}), flush=True)
    return 0


def _main(argv):
    import argparse

    parser = argparse.ArgumentParser(description="bench/compare helpers")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve-targets")
    p.add_argument("--echo-port", type=int, required=True)
    p.add_argument("--close-port", type=int, required=True)
    w = sub.add_parser("worker")
    w.add_argument("mode", choices=["echo", "page", "close", "conc"])
    w.add_argument("--target", required=True)
    w.add_argument("--socks", default="")
    w.add_argument("--control", default="")
    w.add_argument("--count", type=int, default=200)
    w.add_argument("--streams", type=int, default=48)
    w.add_argument("--size", type=int, default=20 * 1024)
    w.add_argument("--rounds", type=int, default=7)
    w.add_argument("--parallel", type=int, default=100)
    w.add_argument("--hold", type=float, default=1.0)
    w.add_argument("--deadline", type=float, default=90.0)
    w.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.cmd == "serve-targets":
        _serve_targets(args.echo_port, args.close_port)
        return 0
    return _worker_main(args)


if __name__ == "__main__":
    try:
        sys.exit(_main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
