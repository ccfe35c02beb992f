"""A real redis-server for the tests: loopback port and unix socket in a temp dir, no disk.

Never the system's service: its own process, ``--save '' --appendonly no``,
stopped (SIGTERM, by PID) when the test ends; ``stop()`` / ``start()`` again
on the same port for the tests of an outage, ``pause()`` / ``resume()``
(SIGSTOP / SIGCONT) for a Redis that stops answering.
"""

import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.support import free_port, wait_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port`` and ``directory``/redis.sock."""

    def __init__(self, directory, password=None):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.socket = os.path.join(self.dir, "redis.sock")
        self.password = password
        self.proc = None
        self.start()

    @property
    def url(self):
        auth = ":%s@" % self.password if self.password else ""
        return "redis://%s127.0.0.1:%d/0" % (auth, self.port)

    @property
    def unix_url(self):
        auth = ":%s@" % self.password if self.password else ""
        return "unix://%s%s?db=1" % (auth, self.socket)

    def start(self):
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--unixsocket", self.socket, "--unixsocketperm", "700", "--dir", self.dir,
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--logfile", os.path.join(self.dir, "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout=10)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket) and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def flush(self):
        import redis

        redis.Redis.from_url(self.url).flushall()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (make apt-deps)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def clean_redis(redis_server):
    """The module's Redis, emptied before the test."""
    if redis_server.proc is None:
        redis_server.start()
    redis_server.flush()
    return redis_server
