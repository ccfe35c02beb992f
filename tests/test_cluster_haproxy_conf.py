"""conf/haproxy.cfg (issue 14, part 6) is a config the real haproxy accepts (``haproxy -c``).

Its certificate paths point at placeholders made here (a self-signed pair);
``haproxy -c`` reads the files and resolves nothing else: it opens no socket.
"""

import subprocess

import pytest

from afb import keys
from tests.cluster import HAPROXY, haproxy_available
from tests.support import ROOT

pytestmark = pytest.mark.skipif(not haproxy_available(),
                                reason="haproxy is not installed (make installs it)")


def _example(tmp_path):
    made = keys.generate_server_keys(str(tmp_path), names=["afb-node"])
    cert, key = open(made["cert"]).read(), open(made["key"]).read()
    (tmp_path / "afb.pem").write_text(cert + key)
    text = open(ROOT + "/conf/haproxy.cfg").read()
    for placeholder, path in (("/etc/haproxy/certs/afb.pem", tmp_path / "afb.pem"),
                              ("/etc/haproxy/afb-nodes.crt", made["cert"]),
                              ("/run/haproxy/admin.sock", tmp_path / "admin.sock")):
        assert placeholder in text
        text = text.replace(placeholder, str(path))
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(text)
    return conf


def test_the_example_is_valid_and_has_no_warning(tmp_path):
    done = subprocess.run([HAPROXY, "-c", "-f", str(_example(tmp_path))],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    # haproxy 2.6 (Debian 12) says so; 3.0 (Debian 13) says nothing when all is well.
    assert "Configuration file is valid" in done.stdout or not done.stdout.strip(), done.stdout
    assert "WARNING" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_both_frontends_check_health_on_the_metrics_port_and_time_tunnels_out():
    text = open(ROOT + "/conf/haproxy.cfg").read()
    assert "mode tcp" in text and "mode http" in text
    assert text.count("http-check send meth GET uri /health") == 2
    assert "timeout tunnel 1h" in text and "timeout client-fin" in text
    assert "option redispatch" in text and "option forwardfor" in text
    servers = [line for line in text.splitlines() if line.strip().startswith("server ")]
    assert servers and all("check port 9100" in line for line in servers)
