"""Logs for many nodes (issue 14, part 5): ``log_format = json`` and the node's name.

The formatters on records made by the logging module itself, then a real
``afb server`` with ``log_format = json`` whose log a shipper would read.
"""

import io
import json
import logging
import os
import socket
import struct
import subprocess
import sys

from afb import journald, logsetup
from tests.support import Setup, running, wait_log


def _record(msg, *args, level=logging.INFO, **extra):
    logger = logging.getLogger("afb.apps.server")
    return logger.makeRecord(logger.name, level, __file__, 1, msg, args, None, extra=extra)


def test_a_json_line_has_the_fields_and_only_those_given():
    fmt = logsetup.formatter("json", "vps-1")
    line = fmt.format(_record("%s: tunnel open", "tunnel alice@1.2.3.4", event="tunnel_open",
                              user="alice", peer="1.2.3.4"))
    assert "\n" not in line
    got = json.loads(line)
    assert got.pop("time").endswith("Z")
    assert got == {"level": "INFO", "node": "vps-1", "logger": "afb.apps.server",
                   "message": "tunnel alice@1.2.3.4: tunnel open", "event": "tunnel_open",
                   "user": "alice", "peer": "1.2.3.4"}


def test_a_json_line_escapes_newlines_and_carries_the_traceback():
    fmt = logsetup.formatter("json", "")
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("two\nlines", level=logging.ERROR)
        record.exc_info = sys.exc_info()
    line = fmt.format(record)
    assert "\n" not in line
    got = json.loads(line)
    assert got["message"] == "two\nlines" and "ValueError: boom" in got["exc"]
    assert got["node"] == socket.gethostname()       # node_id empty: the host name


def test_text_names_the_node_only_when_it_is_set():
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        logsetup.configure("info", stream=stream, fmt="text", node_id="")
        logging.getLogger("afb.t").info("one")
        logsetup.configure("info", stream=stream, fmt="text", node_id="edge-3")
        logging.getLogger("afb.t").info("two")
        logsetup.configure("debug")             # the level only: format and node kept
        logging.getLogger("afb.t").info("three")
        lines = stream.getvalue().splitlines()
        assert lines[0].endswith(" INFO afb.t: one")
        assert lines[1].endswith(" INFO [edge-3] afb.t: two")
        assert lines[2].endswith(" INFO [edge-3] afb.t: three")
    finally:
        logsetup.configure("info", fmt="text", node_id="")
        root.handlers[:] = before
        root.setLevel(level)


def test_a_json_server_logs_its_tunnels_with_user_event_and_bytes(tmp_path, http_target):
    """A real server and client: the tunnel's open and close as a shipper sees them."""
    setup = Setup(tmp_path)
    text = open(setup.server_conf).read().replace(
        "log_level = debug\n", "log_level = debug\nlog_format = json\nnode_id = vps-7\n")
    with open(setup.server_conf, "w") as handle:
        handle.write(text)
    url, _blob = http_target
    with running("server", setup, tmp_path / "server.log") as server:
        with running("client", setup, tmp_path / "client.log") as client:
            wait_log(server, "tunnel open")
            proxy = "socks5h://127.0.0.1:%d" % setup.proxy_port
            got = subprocess.run(["curl", "-s", "--max-time", "20", "-x", proxy,
                                  url + "/1000"], capture_output=True, check=True).stdout
            assert len(got) == 1000
            client.proc.terminate()
            client.proc.wait(10)
        wait_log(server, "tunnel_close")
        lines = [json.loads(line) for line in server.output().splitlines()
                 if line.startswith("{")]
    assert lines and all(line["node"] == "vps-7" for line in lines)
    opened = [line for line in lines if line.get("event") == "tunnel_open"]
    closed = [line for line in lines if line.get("event") == "tunnel_close"]
    assert opened[0]["user"] == "tester" and opened[0]["peer"].startswith("127.0.0.1:")
    assert closed[0]["user"] == "tester"
    assert closed[0]["bytes"]["down"] >= 1000 and closed[0]["bytes"]["up"] > 0


# --- the journal's native protocol (afb/journald.py) ------------------------------

def _fields(datagram):
    """{KEY: value} of a native-protocol datagram (both the text and the binary form)."""
    out, rest = {}, datagram
    while rest:
        line, sep, after = rest.partition(b"\n")
        if b"=" in line:
            key, _eq, value = line.partition(b"=")
            out[key.decode()] = value.decode()
            rest = after
        else:
            size = struct.unpack("<Q", after[:8])[0]
            out[line.decode()] = after[8:8 + size].decode()
            assert after[8 + size:9 + size] == b"\n"
            rest = after[9 + size:]
        assert sep
    return out


def test_a_journal_entry_has_the_message_priority_and_afb_fields(tmp_path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "journal.sock"))
    listener.settimeout(5)
    handler = journald.JournalHandler(io.StringIO(), address=str(tmp_path / "journal.sock"))
    handler.setFormatter(logsetup.formatter("text", "vps-1", journal=True))
    record = _record("%s: tunnel closed\nsecond line", "tunnel alice@1.2.3.4",
                     level=logging.WARNING, event="tunnel_close", user="alice",
                     bytes={"up": 10, "down": 2000})
    record.node = "vps-1"
    try:
        handler.emit(record)
        got = _fields(listener.recv(65536))
    finally:
        handler.close()
        listener.close()
    assert got == {"MESSAGE": "WARNING [vps-1] afb.apps.server: tunnel alice@1.2.3.4: tunnel "
                              "closed\nsecond line",
                   "PRIORITY": "4", "SYSLOG_IDENTIFIER": "afb", "LOGGER": "afb.apps.server",
                   "AFB_NODE": "vps-1", "AFB_USER": "alice", "AFB_EVENT": "tunnel_close",
                   "AFB_BYTES_UP": "10", "AFB_BYTES_DOWN": "2000"}


def test_without_a_journal_socket_the_line_goes_to_stderr(tmp_path):
    stream = io.StringIO()
    handler = journald.JournalHandler(stream, address=str(tmp_path / "none.sock"))
    handler.setFormatter(logsetup.formatter("text", "", journal=True))
    try:
        handler.emit(_record("still %s", "logged"))
    finally:
        handler.close()
    assert stream.getvalue() == "INFO afb.apps.server: still logged\n"


def test_journal_stream_must_be_stderr_itself(tmp_path):
    with open(tmp_path / "err", "w") as stream:
        stat = os.fstat(stream.fileno())
        assert journald.under_journal({"JOURNAL_STREAM": "%d:%d" % (stat.st_dev, stat.st_ino)},
                                      stream)
        assert not journald.under_journal({"JOURNAL_STREAM": "%d:%d" % (stat.st_dev,
                                                                          stat.st_ino + 1)},
                                          stream)
        assert not journald.under_journal({}, stream)
        assert not journald.under_journal({"JOURNAL_STREAM": "junk"}, stream)
