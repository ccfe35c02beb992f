from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

import pytest  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from tests.support import EchoTarget, InProcessTunnel, Setup  # noqa: E402

BLOB = os.urandom(3 * 1024 * 1024 + 17)


def _blob_app(environ, start_response):
    size = int(environ.get("PATH_INFO", "/").rsplit("/", 1)[-1] or len(BLOB))
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(size))])
    return [BLOB[:size]]


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


@pytest.fixture
def tunnel(setup):
    with InProcessTunnel(setup) as running:
        yield running


@pytest.fixture
def echo():
    target = EchoTarget()
    yield target
    target.close()


@pytest.fixture(params=["127.0.0.1", "::1"])
def http_target(request):
    server = WSGIServer((request.param, 0), _blob_app, log=None)
    server.start()
    host = "[%s]" % request.param if ":" in request.param else request.param
    yield "http://%s:%d" % (host, server.server_port), BLOB
    server.stop()


def pytest_pycollect_makemodule(module_path, parent):
    """tests/test_tui_*.py: one child pytest each, unpatched (tests/tui_isolation.py says why)."""
    if module_path.name.startswith("test_tui_"):
        from tests.tui_isolation import TuiFile

        return TuiFile.from_parent(parent, path=module_path)
    return None
