"""Shared helpers for the afb benchmarks (bench/throughput, bench/compare, ...).

Nothing here imports afb at module level (only :func:`spki_pin` loads
``afb.keys`` lazily, as a fallback), so the rivals benchmark can use it for
other tunnels too.  Everything talks to loopback only.

Pieces:

* :func:`ensure_venv` -- re-exec the calling script under ``<repo>/.venv/bin/python``;
* :func:`free_port`, :func:`wait_port` -- loopback ports;
* :func:`cpu_seconds` -- user+system CPU time of a process from ``/proc``;
* :func:`start_blob_server` -- a fast HTTP server in its own process:
  ``GET /blob?size=N`` streams N bytes (a 4 MiB random buffer, repeated) with
  a Content-Length; ``POST``/``PUT /sink`` reads and discards the body
  (Content-Length or chunked) and replies with the byte count;
* :func:`start_afb_pair` -- keys, token, configs, ``afb server`` and
  ``afb client`` in a directory; returns an :class:`AfbPair`;
* :func:`curl_download`, :func:`curl_upload`, :func:`sparse_file` -- curl
  transfers, directly or through a SOCKS5 proxy;
* :class:`Processes` / :func:`stop_process` -- SIGTERM, then SIGKILL, by PID;
* :func:`machine_info`, :func:`median`, :func:`parse_size`.

Run ``python bench/common.py serve-blob --port N`` to start the blob server by
hand.
"""

import ctypes
import json
import os
import shutil
import signal
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
VENV = os.path.join(REPO, ".venv")
VENV_PYTHON = os.path.join(VENV, "bin", "python")
VENV_AFB = os.path.join(VENV, "bin", "afb")
RESULTS_DIR = os.path.join(BENCH_DIR, "results")

LOOPBACK = "127.0.0.1"
GiB = 1 << 30
MiB = 1 << 20
BLOB_BUFFER = 4 * MiB
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: Environment variables that would make curl (or anything else) use a proxy.
PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy",
             "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "FTP_PROXY")


# --- the interpreter ------------------------------------------------------------

def ensure_venv(script=None):
    """Re-exec the running script under the project's venv unless already in it."""
    if os.environ.get("AFB_BENCH_NO_REEXEC"):
        return
    try:
        in_venv = os.path.samefile(sys.prefix, VENV)
    except OSError:
        in_venv = False
    if in_venv:
        return
    if not os.path.exists(VENV_PYTHON):
        sys.exit("bench: %s not found; run `make venv` in %s first" % (VENV_PYTHON, REPO))
    script = os.path.abspath(script or sys.argv[0])
    os.execv(VENV_PYTHON, [VENV_PYTHON, script] + sys.argv[1:])


def clean_env(**extra):
    """os.environ without proxy variables (so curl goes where it is told)."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_ENV}
    env.update(extra)
    return env


# --- ports and processes -----------------------------------------------------------

def free_port(host=LOOPBACK):
    """A TCP port that was free a moment ago on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_port(port, host=LOOPBACK, timeout=15.0, proc=None):
    """Wait until something accepts TCP connections on host:port.

    Raises RuntimeError if ``proc`` (a Popen) exits first, TimeoutError after
    ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(int(timeout / 0.05) + 2):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process %d exited with %s before listening on %s:%d"
                               % (proc.pid, proc.returncode, host, port))
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect((host, port))
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    raise TimeoutError("nothing listens on %s:%d after %.0f s" % (host, port, timeout))


def cpu_seconds(pid):
    """User + system CPU seconds used so far by process ``pid`` (its threads included)."""
    with open("/proc/%d/stat" % pid, "rb") as handle:
        data = handle.read()
    fields = data[data.rindex(b")") + 2:].split()
    # After "pid (comm) ": state is field 3, utime field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _die_with_parent():
    """preexec_fn: ask Linux to SIGTERM the child when the benchmark dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def spawn(argv, log_path=None, **kwargs):
    """Popen ``argv`` with output to ``log_path``, in its own session (Ctrl-C on
    the terminal reaches only the benchmark, which then stops its children)."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent, **kwargs)
    finally:
        if log_path:
            log.close()


def stop_process(proc, timeout=10.0):
    """SIGTERM ``proc`` (a Popen), SIGKILL it after ``timeout`` s; returns its exit code."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.wait(5)


class Processes:
    """Processes started by a benchmark; ``stop_all`` stops them, newest first."""

    def __init__(self):
        self.procs = []

    def add(self, proc):
        self.procs.append(proc)
        return proc

    def spawn(self, argv, log_path=None, **kwargs):
        return self.add(spawn(argv, log_path, **kwargs))

    def stop_all(self, timeout=10.0):
        while self.procs:
            proc = self.procs.pop()
            try:
                stop_process(proc, timeout)
            except Exception as exc:   # keep stopping the others
                print("bench: could not stop pid %d: %s" % (proc.pid, exc), file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()


# --- the blob HTTP server ------------------------------------------------------------

class _BlobHandler(socketserver.BaseRequestHandler):
    """One connection to the blob/sink server (see _serve_blob); ``blob`` is set there."""

    blob = None

    def handle(self):
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = sock.makefile("rb", buffering=256 * 1024)
        try:
            for _ in range(1000):            # keep-alive requests per connection
                if not self.one_request():
                    break
        except (OSError, ValueError):
            pass
        finally:
            self.rfile.close()

    def reply(self, status, body=b"", headers=(), length=None):
        lines = ["HTTP/1.1 %s" % status,
                 "Content-Length: %d" % (len(body) if length is None else length)]
        lines += list(headers)
        self.request.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body)

    def one_request(self):
        line = self.rfile.readline(8192)
        if not line:
            return False
        parts = line.decode("latin-1").split()
        if len(parts) != 3:
            self.reply("400 Bad Request", headers=["Connection: close"])
            return False
        method, target, _version = parts
        headers = self.read_headers()
        url = urlsplit(target)
        if url.path == "/blob" and method in ("GET", "HEAD"):
            self.send_blob(method, parse_qs(url.query))
        elif url.path == "/sink" and method in ("POST", "PUT"):
            self.take_body(headers)
        elif url.path == "/" and method == "GET":
            self.reply("200 OK", b"afb bench blob server\n")
        else:
            self.reply("404 Not Found", b"not found\n")
        return True

    def read_headers(self):
        headers = {}
        for _ in range(100):
            hline = self.rfile.readline(8192)
            if hline in (b"\r\n", b"\n", b""):
                break
            name, _, value = hline.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return headers

    def send_blob(self, method, query):
        try:
            size = parse_size(query.get("size", ["1M"])[0])
        except ValueError:
            self.reply("400 Bad Request", b"bad size\n")
            return
        self.reply("200 OK", headers=["Content-Type: application/octet-stream"], length=size)
        if method == "GET":
            send = self.request.sendall
            left = size
            while left >= BLOB_BUFFER:
                send(self.blob)
                left -= BLOB_BUFFER
            if left:
                send(self.blob[:left])

    def take_body(self, headers):
        if headers.get("expect", "").lower() == "100-continue":
            self.request.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            count = self.read_chunked()
        else:
            count = self.discard(int(headers.get("content-length", "0")))
        self.reply("200 OK", b"%d\n" % count, headers=["Content-Type: text/plain"])

    def discard(self, size):
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        left = size
        while left > 0:
            got = self.rfile.readinto(view[:min(left, len(buf))])
            if not got:
                raise ValueError("body ended early")
            left -= got
        return size

    def read_chunked(self):
        total = 0
        for _ in range(1 << 40):
            size_line = self.rfile.readline(1024)
            if not size_line:
                raise ValueError("chunked body ended early")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                for _ in range(100):     # trailers up to the empty line
                    if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                        break
                return total
            total += self.discard(size)
            self.rfile.readline(16)    # CRLF after the chunk
        return total


def _serve_blob(host, port):
    """Run the blob/sink HTTP server in this process (threaded, one thread per connection)."""
    _BlobHandler.blob = memoryview(os.urandom(BLOB_BUFFER))

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 128

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    Server.address_family = family
    with Server((host, port), _BlobHandler) as server:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        server.serve_forever(poll_interval=0.5)


def start_blob_server(procs=None, host=LOOPBACK, port=None, log_path=None):
    """Start the blob server in its own process; returns ``(port, Popen)``.

    With ``procs`` (a :class:`Processes`), the process is registered there.
    """
    port = port or free_port(host)
    argv = [sys.executable, os.path.abspath(__file__), "serve-blob", "--host", host,
            "--port", str(port)]
    proc = spawn(argv, log_path)
    if procs is not None:
        procs.add(proc)
    try:
        wait_port(port, host, timeout=15, proc=proc)
    except Exception:
        if procs is None:
            stop_process(proc)
        raise
    return port, proc


# --- curl --------------------------------------------------------------------------

CURL_FORMAT = ("%{http_code} %{size_download} %{size_upload} %{speed_download} "
               "%{speed_upload} %{time_total} %{time_starttransfer}")


def curl_available():
    return shutil.which("curl") is not None


def _run_curl(args, timeout, stdin=None):
    argv = ["curl", "-sS", "--noproxy", "", "-o", "/dev/null", "-w", CURL_FORMAT,
            "--max-time", "%d" % max(1, int(timeout))] + args
    started = time.monotonic()
    res = subprocess.run(argv, stdin=stdin or subprocess.DEVNULL, capture_output=True,
                         timeout=timeout + 15, env=clean_env())
    wall = time.monotonic() - started
    if res.returncode != 0:
        raise RuntimeError("curl failed (exit %d): %s %s" % (
            res.returncode, res.stderr.decode(errors="replace").strip(),
            res.stdout.decode(errors="replace").strip()))
    fields = res.stdout.decode().split()
    out = {
        "http_code": int(fields[0]),
        "size_download": int(float(fields[1])),
        "size_upload": int(float(fields[2])),
        "speed_download": float(fields[3]),
        "speed_upload": float(fields[4]),
        "time_total": float(fields[5]),
        "time_starttransfer": float(fields[6]),
        "wall": wall,
    }
    if out["http_code"] != 200:
        raise RuntimeError("curl got HTTP %d" % out["http_code"])
    return out


def _proxy_args(socks=None, http_proxy=None):
    """curl options for a SOCKS5 (names resolved by the proxy) or HTTP CONNECT proxy."""
    if socks:
        return ["--socks5-hostname", socks]
    if http_proxy:
        return ["-p", "-x", "http://" + http_proxy]
    return []


def curl_download(port, size, host=LOOPBACK, socks=None, http_proxy=None, timeout=600):
    """GET /blob?size=N from the blob server; checks the size; returns curl's figures."""
    url = "http://%s:%d/blob?size=%d" % (host, port, size)
    out = _run_curl(_proxy_args(socks, http_proxy) + [url], timeout)
    if out["size_download"] != size:
        raise RuntimeError("downloaded %d bytes, expected %d" % (out["size_download"], size))
    out["bytes"] = size
    out["seconds"] = out["time_total"]
    return out


def sparse_file(path, size, warm=True):
    """A file of ``size`` zero bytes that takes no disk space (reads cost no I/O).

    With ``warm``, it is read once so that the page cache holds it: otherwise
    the first upload pays for filling the cache and is several times slower.
    """
    with open(path, "wb") as handle:
        handle.truncate(size)
    if warm:
        buf = bytearray(4 * MiB)
        with open(path, "rb", buffering=0) as handle:
            for _ in range(size // len(buf) + 2):
                if not handle.readinto(buf):
                    break
    return path


def curl_upload(port, path, size, host=LOOPBACK, socks=None, http_proxy=None, timeout=600):
    """PUT the file ``path`` (``size`` bytes) to /sink; checks the count the server read."""
    url = "http://%s:%d/sink" % (host, port)
    args = _proxy_args(socks, http_proxy) + ["-H", "Expect:", "-T", path, url]
    out = _run_curl(args, timeout)
    if out["size_upload"] != size:
        raise RuntimeError("uploaded %d bytes, expected %d" % (out["size_upload"], size))
    out["bytes"] = size
    out["seconds"] = out["time_total"]
    return out


# --- afb -------------------------------------------------------------------------------

SERVER_CONF = """\
# afb benchmark server (generated by bench/common.py)
[server]
listen = {host}:{port}
path = {path}
tls = {tls}
cert = {keys}/server.crt
key = {keys}/server.key
state_dir = {state}
log_level = {log_level}
drain_timeout = 2
{server_control}
[auth]
jwt_public_key = {keys}/jwt.pub
jwt_private_key = {keys}/jwt.key

[e2e]
key = {keys}/e2e.key
mode = {e2e_mode}

[tunnel]
{server_tunnel}
[acl]
# loopback destinations are the whole point of a benchmark
allow_private = true
{allow_key} = {allow}
"""

CLIENT_CONF = """\
# afb benchmark client (generated by bench/common.py)
[client]
server = {scheme}://{host}:{port}{path}
listen = {host}:{proxy_port}
token_file = {keys}/client.token
pin = {pin}
log_level = {log_level}
drain_timeout = 2
{client_control}
[e2e]
server_key = {e2e_key}

[tunnel]
{client_tunnel}
"""


def spki_pin(cert_path):
    """The SPKI pin of a PEM certificate (afb.keys, imported only here)."""
    from afb.keys import spki_pin as _pin

    with open(cert_path, "rb") as handle:
        return _pin(handle.read())


def e2e_public_key(key_path):
    """The base64 E2E public key of a server's e2e.key (afb, imported only here)."""
    from afb.codec import aead
    from afb.keys import load_static_key

    return aead.public_key_b64(load_static_key(key_path))


class AfbPair:
    """A running ``afb server`` + ``afb client``; see :func:`start_afb_pair`."""

    def __init__(self, directory, tls, host, server_port, proxy_port, server, client, pin,
                 e2e=True):
        self.directory = directory
        self.tls = tls
        self.e2e = e2e                  # end-to-end encryption inside the WebSocket
        self.host = host
        self.server_port = server_port
        self.proxy_port = proxy_port
        self.server = server            # Popen
        self.client = client            # Popen
        self.pin = pin

    @property
    def server_pid(self):
        return self.server.pid

    @property
    def client_pid(self):
        return self.client.pid

    @property
    def socks(self):
        """``host:port`` of the client's SOCKS5/HTTP proxy (for curl)."""
        return "%s:%d" % (self.host, self.proxy_port)

    @property
    def url(self):
        return "%s://%s:%d/t" % ("wss" if self.tls else "ws", self.host, self.server_port)

    def cpu(self):
        """``(client CPU s, server CPU s)`` so far."""
        return cpu_seconds(self.client.pid), cpu_seconds(self.server.pid)

    def alive(self):
        return self.server.poll() is None and self.client.poll() is None

    def logs(self, lines=20):
        """The last ``lines`` of both logs (for error messages)."""
        out = []
        for name in ("server.log", "client.log"):
            path = os.path.join(self.directory, name)
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    tail = handle.readlines()[-lines:]
            except OSError:
                continue
            out.append("--- %s\n%s" % (path, "".join(tail)))
        return "\n".join(out)

    def stop(self, timeout=10.0):
        """SIGTERM client then server (SIGKILL after ``timeout`` s each)."""
        for proc in (self.client, self.server):
            stop_process(proc, timeout)


def _allow_key(checkout):
    """The [acl] key that opens private destinations in this afb: ``allow_private_to``,
    or ``allow`` in revisions from before it existed (a --base checkout)."""
    spec = os.path.join(checkout or REPO, "afb", "configspec", "server.spec")
    with open(spec, encoding="utf-8") as handle:
        return "allow_private_to" if "allow_private_to" in handle.read() else "allow"


def _control_lines(checkout, directory):
    """``control_socket`` lines for both configs: the pair's own sockets in ``directory``
    (never /run/afb, which several pairs would share), or none before the key existed."""
    spec = os.path.join(checkout or REPO, "afb", "configspec", "server.spec")
    with open(spec, encoding="utf-8") as handle:
        if "control_socket" not in handle.read():
            return {"server_control": "", "client_control": ""}
    return {role + "_control": "control_socket = %s\n" % os.path.join(directory, role + ".sock")
            for role in ("server", "client")}


def afb_command(checkout=None):
    """``(argv prefix, env)`` that runs ``afb``: this checkout's, or ``checkout``'s (a
    directory holding another revision, see :func:`base_checkout`) with this venv."""
    if checkout is None:
        return [VENV_AFB], clean_env()
    return [VENV_PYTHON, "-m", "afb"], clean_env(PYTHONPATH=checkout)


def base_checkout(rev, directory):
    """A copy of afb at git revision ``rev`` in ``directory`` (made once), with this
    checkout's C masker when its source is the same (else built), so that two
    revisions run side by side on one venv."""
    target = os.path.join(directory, "afb-" + rev.replace("/", "_"))
    if not os.path.isdir(os.path.join(target, "afb")):
        os.makedirs(target, exist_ok=True)
        archive = subprocess.run(["git", "-C", REPO, "archive", rev, "afb", "setup.py",
                                  "README.rst"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
        import glob
        built = glob.glob(os.path.join(REPO, "afb", "_xormask*.so"))
        same = subprocess.run(["git", "-C", REPO, "diff", "--quiet", rev, "--", "afb/_xormask.c"])
        if built and same.returncode == 0:
            shutil.copy(built[0], os.path.join(target, "afb"))
        else:
            subprocess.run([VENV_PYTHON, "setup.py", "-q", "build_ext", "--inplace"], cwd=target,
                           capture_output=True)
    return target


def _afb(args, cwd=None, timeout=60, checkout=None):
    argv, env = afb_command(checkout)
    res = subprocess.run(argv + args, capture_output=True, text=True, cwd=cwd,
                         timeout=timeout, env=env)
    if res.returncode != 0:
        raise RuntimeError("afb %s failed (exit %d): %s%s" % (
            " ".join(args), res.returncode, res.stdout, res.stderr))
    return res.stdout


def start_afb_pair(directory, tls, procs=None, host=LOOPBACK, allow=(), path="/t",
                   log_level="warning", server_tunnel=None, client_tunnel=None,
                   probe_port=None, timeout=30.0, e2e=True, checkout=None):
    """Keys, token, configs, then ``afb server`` and ``afb client`` in ``directory``.

    ``tls`` picks wss:// (pinned self-signed certificate) or ws://.  ``e2e``
    (on by default, as ``afb keygen`` users run it): the client pins the
    server's E2E key and the server requires it; off: ``[e2e] mode = off``.  ``allow``
    lists extra destinations for the server's [acl] allow_private_to (which beats
    the server's refusal of its own address, e.g. ``127.0.0.1:PORT`` for a
    local benchmark server).  ``server_tunnel`` / ``client_tunnel`` are dicts
    of extra [tunnel] settings.  With ``probe_port`` (a blob server port), the
    pair is ready only once a small download goes through the tunnel.

    Processes are registered in ``procs`` when given (so a failure here still
    leaves them to the caller's cleanup).  ``checkout``: run another revision's afb
    (:func:`base_checkout`).  Returns an :class:`AfbPair`.
    """
    directory = os.path.abspath(directory)
    keys = os.path.join(directory, "keys")
    os.makedirs(directory, exist_ok=True)
    pin = e2e_key = None
    if not os.path.exists(os.path.join(keys, "server.crt")):
        out = _afb(["keygen", "--dir", keys], checkout=checkout)
        printed = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        pin, e2e_key = printed.get("pin"), printed.get("e2e public key")
    pin = pin or spki_pin(os.path.join(keys, "server.crt"))
    if e2e and not e2e_key:
        e2e_key = e2e_public_key(os.path.join(keys, "e2e.key"))
    _afb(["token", "issue", "--key", os.path.join(keys, "jwt.key"), "--sub", "bench",
          "--ttl", "1d", "--out", os.path.join(keys, "client.token")], checkout=checkout)
    server_port = free_port(host)
    proxy_port = free_port(host)
    while proxy_port == server_port:
        proxy_port = free_port(host)
    fmt = dict(host=host, port=server_port, proxy_port=proxy_port, path=path,
               tls="true" if tls else "false", scheme="wss" if tls else "ws", keys=keys,
               state=os.path.join(directory, "state"), log_level=log_level,
               pin=pin if tls else '""',
               e2e_mode="required" if e2e else "off", e2e_key=e2e_key if e2e else '""',
               allow=", ".join(allow) + ("," if len(allow) == 1 else "") if allow else '""',
               allow_key=_allow_key(checkout), **_control_lines(checkout, directory),
               server_tunnel="".join("%s = %s\n" % kv for kv in dict(
                   # conc10k opens 10,000 streams in one tunnel (the default allows 2048 a user)
                   {"max_streams_per_user": 0}, **(server_tunnel or {})).items()),
               client_tunnel="".join("%s = %s\n" % kv for kv in (client_tunnel or {}).items()))
    server_conf = os.path.join(directory, "server.conf")
    client_conf = os.path.join(directory, "client.conf")
    with open(server_conf, "w", encoding="utf-8") as handle:
        handle.write(SERVER_CONF.format(**fmt))
    with open(client_conf, "w", encoding="utf-8") as handle:
        handle.write(CLIENT_CONF.format(**fmt))

    local = Processes() if procs is None else procs
    argv, env = afb_command(checkout)
    server = local.spawn(argv + ["server", "-c", server_conf],
                         os.path.join(directory, "server.log"), cwd=directory, env=env)
    client = None
    try:
        wait_port(server_port, host, timeout=timeout, proc=server)
        client = local.spawn(argv + ["client", "-c", client_conf],
                             os.path.join(directory, "client.log"), cwd=directory, env=env)
        wait_port(proxy_port, host, timeout=timeout, proc=client)
        pair = AfbPair(directory, tls, host, server_port, proxy_port, server, client, pin,
                       e2e=e2e)
        if probe_port:
            _probe(pair, probe_port, timeout)
        return pair
    except BaseException:
        if procs is None:
            local.stop_all()
        raise


def _probe(pair, port, timeout):
    """Wait until a 1 KiB download goes through the tunnel."""
    deadline = time.monotonic() + timeout
    last = None
    for _ in range(int(timeout / 0.2) + 1):
        if not pair.alive():
            break
        try:
            curl_download(port, 1024, host=pair.host, socks=pair.socks, timeout=5)
            return
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            last = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    raise RuntimeError("the tunnel %s does not carry traffic: %s\n%s"
                       % (pair.url, last or "a process exited", pair.logs()))


# --- numbers and the machine -------------------------------------------------------

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20,
          "MB": 1 << 20, "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


# --- new-stream latency: an echo server and one SOCKS5 stream ---------------------------------

class EchoServer:
    """A threaded TCP echo server on loopback, in this process (latency tests)."""

    def __init__(self, host=LOOPBACK):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def recv_exact(sock, size):
    """Exactly ``size`` bytes from ``sock``; EOFError if it ends first."""
    buf = bytearray()
    for _ in range(size + 1):
        if len(buf) >= size:
            break
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise EOFError("EOF after %d of %d bytes" % (len(buf), size))
        buf += chunk
    return bytes(buf)


def new_stream_echo(proxy_host, proxy_port, target_port, payload):
    """Seconds for: TCP to the proxy, SOCKS5 CONNECT 127.0.0.1:port, one echo, close."""
    started = time.perf_counter()
    sock = socket.create_connection((proxy_host, proxy_port), timeout=10)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"\x05\x01\x00")
        if recv_exact(sock, 2) != b"\x05\x00":
            raise RuntimeError("the SOCKS5 proxy refused the no-auth method")
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
                     + struct.pack("!H", target_port))
        reply = recv_exact(sock, 10)
        if reply[1] != 0:
            raise RuntimeError("SOCKS5 CONNECT failed with code %d" % reply[1])
        sock.sendall(payload)
        if recv_exact(sock, len(payload)) != payload:
            raise RuntimeError("the echo came back different")
    finally:
        sock.close()
    return time.perf_counter() - started


def parse_size(text):
    """'1G', '256M', '64k', '1048576' -> bytes (binary units)."""
    text = str(text).strip().upper()
    digits = text.rstrip("KMGIB")
    unit = text[len(digits):]
    if not digits or unit not in _UNITS:
        raise ValueError("bad size %r (use e.g. 256M, 1G)" % text)
    value = float(digits) * _UNITS[unit]
    if value <= 0 or value != int(value):
        raise ValueError("bad size %r" % text)
    return int(value)


def format_size(size):
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return "%d %s" % (size // scale, unit)
    return "%d B" % size


def median(values):
    return statistics.median(values) if values else None


def machine_info():
    """nproc, CPU model, kernel, Python and curl versions."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    curl = None
    if curl_available():
        try:
            curl = subprocess.run(["curl", "--version"], capture_output=True, text=True,
                                  timeout=10).stdout.split("\n", 1)[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return {"nproc": os.cpu_count() if not hasattr(os, "sched_getaffinity")
            else len(os.sched_getaffinity(0)),
            "cpu_model": model, "kernel": os.uname().release,
            "python": sys.version.split()[0], "curl": curl}


def write_json(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")
    os.replace(tmp, path)


def _main(argv):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve-blob", help="run the blob/sink HTTP server")
    p.add_argument("--host", default=LOOPBACK)
    p.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "serve-blob":
        if args.host not in ("127.0.0.1", "::1", "localhost") and not args.host.startswith("127."):
            parser.error("the blob server listens on loopback only")
        _serve_blob(args.host, args.port)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
