"""A real nginx for the tests: Debian's binary, everything under a temporary prefix, loopback only.

:class:`Nginx` runs it in the foreground with a given ``nginx.conf`` text and
waits for its ports; :data:`DEBIAN_HTTP` is the ``http {}`` preamble of
Debian's default ``/etc/nginx/nginx.conf`` (plus ``server_tokens off`` and
paths kept inside the prefix), the reference the built-in decoy imitates.
"""

import os
import shutil
import signal
import socket
import subprocess

import gevent


def _nginx_binary():
    found = shutil.which("nginx")
    if found:
        return found
    for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(path, os.X_OK):
            return path
    return None


NGINX = _nginx_binary()
#: As root, workers would switch to nobody, who cannot enter tmp_path.
USER = "user root;\n" if os.geteuid() == 0 else ""

#: Debian's nginx.conf http{} settings (Debian 12 and 13 ship the same file:
#: no keepalive_timeout, so nginx's compiled-in 75 s) + server_tokens off.
DEBIAN_HTTP = """\
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    server_tokens off;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    gzip on;
"""


def temp_paths(prefix):
    """The http{} lines that keep logs and temporary files under *prefix*."""
    return ("    access_log {p}/access.log;\n    client_body_temp_path {p}/tmp/client_body;\n"
            "    proxy_temp_path {p}/tmp/proxy;\n    fastcgi_temp_path {p}/tmp/fastcgi;\n"
            "    uwsgi_temp_path {p}/tmp/uwsgi;\n    scgi_temp_path {p}/tmp/scgi;\n"
            ).format(p=prefix)


def main_conf(prefix, http_body):
    """A whole nginx.conf: one worker, pid and error log in *prefix*, and *http_body*."""
    return ("%sworker_processes 1;\npid %s/nginx.pid;\nerror_log %s/error.log info;\n"
            "events {\n    worker_connections 768;\n}\nhttp {\n%s%s}\n"
            % (USER, prefix, prefix, temp_paths(prefix), http_body))


class Nginx:
    """nginx in the foreground with everything under ``prefix``, listening on ``ports``."""

    def __init__(self, prefix, conf_text, ports):
        self.prefix = str(prefix)
        os.makedirs(os.path.join(self.prefix, "tmp"), exist_ok=True)
        self.conf = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf, "w") as handle:
            handle.write(conf_text)
        self.proc = subprocess.Popen(
            [NGINX, "-p", self.prefix + "/", "-c", self.conf, "-e", self.error_log,
             "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            for port in ports:
                self._wait(port)
        except BaseException:
            self.stop()
            raise

    def _wait(self, port):
        for _ in range(200):
            if self.proc.poll() is not None:
                raise AssertionError("nginx exited with %s:\n%s"
                                     % (self.proc.returncode, self.log()))
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return
            except OSError:
                gevent.sleep(0.05)
        raise AssertionError("nginx does not listen on %d:\n%s" % (port, self.log()))

    @property
    def error_log(self):
        return os.path.join(self.prefix, "error.log")

    def log(self):
        try:
            with open(self.error_log, encoding="utf-8", errors="replace") as handle:
                return handle.read()[-4000:]
        except OSError:
            return "(no error log)"

    def stop(self):
        """SIGQUIT (graceful), then SIGKILL, to our nginx master by its PID only."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
