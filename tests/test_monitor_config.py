"""The monitoring keys (metrics_listen, report_*, [alerts]): values, lines, start-up checks."""

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afb.config_values import parse_local_listen, parse_rate
from tests.support import Setup
from tests.test_config import errors_of, write
from tests.test_startup_checks import afb as run_afb
from tests.test_startup_checks import put, refused


@pytest.mark.parametrize("text,rate", [("0", 0), ("1500", 1500), ("10M", 10e6), ("10MB/s", 10e6),
                                       ("2.5 G", 2.5e9), ("500k", 500e3), ("80Mbit", 10e6),
                                       ("8 kbit/s", 1000), ("800bps", 100)])
def test_rates(text, rate):
    assert parse_rate(text) == rate


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False),
       st.sampled_from(["", "k", "M", "G"]), st.sampled_from(["", "B/s", "bit", " b"]))
def test_rates_read_back(number, unit, suffix):
    text = "%.3f%s%s" % (number, unit, suffix)
    value = parse_rate(text)
    expected = round(number, 3) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[unit]
    assert value == pytest.approx(expected / 8 if suffix == "bit" else expected)


@given(st.text(max_size=12))
def test_any_rate_text_parses_or_says_why(text):
    try:
        assert parse_rate(text) >= 0
    except ValueError as exc:
        assert str(exc).startswith('bad rate "')


def test_local_listen():
    assert parse_local_listen("") is None
    assert parse_local_listen(" 9100 ") == ("127.0.0.1", 9100)
    assert parse_local_listen("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert parse_local_listen("[::1]:9100") == ("::1", 9100)
    for bad in ("0", "70000", "host", "::1:9100"):
        with pytest.raises(ValueError):
            parse_local_listen(bad)


def test_bad_values_have_their_line(tmp_path):
    path = write(tmp_path, """\
        [server]
        metrics_listen = 70000
        report_flush = 0
        [alerts]
        max_rate_down = 10Q
        alert_command = 'sh -c "exit 1'
        anomaly_factor = -1
        """)
    assert errors_of(path, "server") == [
        '%s:2: [server] metrics_listen: bad port \'70000\' (1-65535) (a port, e.g. 9100, means '
        '127.0.0.1:9100; empty: off)' % path,
        '%s:3: [server] report_flush: value "0" is too small (min 0.5)' % path,
        '%s:5: [alerts] max_rate_down: bad rate "10Q" (use e.g. 0, 500K, 10M, 10MB/s, 80Mbit)'
        % path,
        '%s:6: [alerts] alert_command: cannot split the command: No closing quotation (quote it '
        'as in a shell)' % path,
        '%s:7: [alerts] anomaly_factor: value "-1" is too small (min 0)' % path]


def test_client_only_and_server_only_rules(tmp_path):
    path = write(tmp_path, """\
        [client]
        server = wss://127.0.0.1:8443/tunnel
        token = abc.def.ghi
        [alerts]
        max_auth_failures_per_source = 3
        """)
    assert errors_of(path, "client") == [
        "%s:5: [alerts] max_auth_failures_per_source: unknown key" % path]


@pytest.mark.parametrize("role", ["server", "client"])
def test_an_alert_command_that_cannot_run_is_refused_at_start(tmp_path, role):
    setup = Setup(tmp_path)
    conf = setup.server_conf if role == "server" else setup.client_conf
    original = open(conf).read()
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\ncat\n")
    os.chmod(hook, 0o644)
    line = put(conf, original, "alerts", "alert_command", "%s --flag" % hook)
    refused(role, conf, ["%s:%d: [alerts] alert_command: %s is not executable; fix: chmod +x %s"
                         % (conf, line, hook, hook)])
    line = put(conf, original, "alerts", "alert_command", "no-such-afb-hook")
    check = run_afb("config", "check", conf)
    assert check.returncode == 1
    assert check.stdout.startswith("%s:%d: [alerts] alert_command: no-such-afb-hook is not found "
                                   "in PATH" % (conf, line))
