"""Where a daemon's control socket goes when the config does not say (afb/apps/monitoring.py)."""

import pytest

from afb.apps import monitoring


class Cfg(dict):
    filename = None


def cfg(role, value="", filename=None, state_dir="/var/lib/afb"):
    config = Cfg({role: {"control_socket": value, "state_dir": state_dir}})
    config.filename = filename
    return config


def test_configured_and_off():
    assert monitoring.control_socket_path(cfg("client", "/x/y.sock"), "client") == "/x/y.sock"
    assert monitoring.control_socket_path(cfg("server", "off"), "server") is None


@pytest.mark.parametrize("filename, expected", [
    ("/etc/afb/client.conf", "client.sock"), ("/etc/afb/client-home.conf", "client-home.sock"),
    ("/etc/afb/afb-client.conf", "client.sock"), (None, "client.sock")])
def test_run_afb_by_default_one_socket_per_profile(monkeypatch, tmp_path, filename, expected):
    monkeypatch.setattr(monitoring, "RUN_DIR", str(tmp_path / "run"))
    path = monitoring.control_socket_path(cfg("client", filename=filename), "client")
    assert path == str(tmp_path / "run" / expected)


def test_fallbacks_when_run_cannot_be_written(monkeypatch, tmp_path):
    monkeypatch.setattr(monitoring, "_writable", lambda folder: False)   # (root writes all)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert monitoring.control_socket_path(cfg("server", state_dir="/srv/state"), "server") == \
        "/srv/state/server.sock"
    assert monitoring.control_socket_path(cfg("client"), "client") == \
        str(tmp_path / "xdg" / "afb" / "client.sock")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert monitoring.control_socket_path(cfg("client"), "client") == \
        str(tmp_path / ".local" / "state" / "afb" / "client.sock")
