"""Config loading: shipped files, every kind of error with its line, path resolution."""

import os
import textwrap

import pytest

from afb.config import check_config, load_config
from afb.config_values import parse_hostport
from afb.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIN = "sha256//" + "A" * 43 + "="

CLIENT_OK = """\
[client]
server = wss://127.0.0.1:8443/tunnel
token = abc.def.ghi
"""


def write(tmp_path, text, name="afb.conf"):
    """A config file, 0600 (some hold a token inline, which afb config check wants private)."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    os.chmod(path, 0o600)
    return str(path)


def errors_of(path, role):
    with pytest.raises(ConfigError) as info:
        load_config(path, role)
    assert info.value.errors == check_config(path, role)
    return info.value.errors


@pytest.mark.parametrize("name,role", [("afb-server.conf", "server"),
                                       ("afb-client.conf", "client")])
def test_shipped_conf_files_are_valid(name, role):
    cfg = load_config(os.path.join(ROOT, "conf", name), role)
    assert cfg.defaults == []  # every key is present in the shipped file


def test_shipped_conf_files_left_unedited_do_not_pass_the_check(tmp_path):
    """The examples name /etc/afb files (made missing here) and a placeholder server URL."""
    etc = str(tmp_path / "etc-afb")
    copies = {}
    for name in ("afb-server.conf", "afb-client.conf"):
        with open(os.path.join(ROOT, "conf", name)) as handle:
            copies[name] = write(tmp_path, handle.read().replace("/etc/afb", etc), name)
    server = copies["afb-server.conf"]
    lines = check_config(server)
    assert check_config(server, "server") == lines
    assert [line.split(": ")[1] for line in lines] == [
        "[server] cert", "[server] key", "[auth] jwt_public_key", "[e2e] key"]
    assert all("does not exist; make it with afb keygen --dir %s, or fix the path" % etc in line
               for line in lines)
    client = copies["afb-client.conf"]
    assert check_config(client) == [
        "%s:14: [client] server: wss://your.server.example/ is the example's placeholder: set "
        "the URL of your afb server, wss://HOST[:PORT]/PATH with the PATH of its [server] path"
        % client,
        "%s:24: [client] token_file: %s/client.token does not exist; put the user's token "
        "there: on the server, afb token issue --sub NAME --out NAME.token; here, install -m 600 "
        "NAME.token %s/client.token" % (client, etc, etc)]


def test_shipped_files_list_every_spec_key():
    server = load_config(os.path.join(ROOT, "conf", "afb-server.conf"), "server")
    assert server["tunnel"]["stream_window"] == 262144
    assert server["acl"]["allow"] == [] and server["server"]["tls"] is True
    client = load_config(os.path.join(ROOT, "conf", "afb-client.conf"), "client")
    assert client["client"]["token_file"] == "/etc/afb/client.token"


def test_defaults_filled_and_types(tmp_path):
    cfg = load_config(write(tmp_path, CLIENT_OK), "client")
    assert cfg["client"]["listen"] == "127.0.0.1:1080"
    assert cfg["client"]["fast_open"] is True
    assert cfg["tunnel"]["reconnect_max"] == 30.0
    assert cfg["tunnel"]["max_message"] == 1048576
    server = load_config(write(tmp_path, "[server]\n", "s.conf"), "server")
    assert server["auth"]["leeway"] == 30 and server["server"]["path"] == "/"


def test_out_of_range_has_section_key_and_line(tmp_path):
    path = write(tmp_path, CLIENT_OK + "[tunnel]\n\nstream_window = 10\n")
    assert errors_of(path, "client") == [
        '%s:6: [tunnel] stream_window: value "10" is too small (min 16384)' % path]


def test_too_big_and_bad_type(tmp_path):
    path = write(tmp_path, """\
        [server]
        handshake_timeout = soon
        [auth]
        leeway = 601
        """)
    errors = errors_of(path, "server")
    assert errors == [
        '%s:2: [server] handshake_timeout: value "soon" is not a valid float' % path,
        '%s:4: [auth] leeway: value "601" is too big (max 600)' % path,
    ]


def test_bad_option_and_list_for_scalar(tmp_path):
    path = write(tmp_path, """\
        [server]
        log_level = loud
        cert = a, b
        """)
    errors = errors_of(path, "server")
    assert errors[0].startswith("%s:2: [server] log_level: value \"loud\" is not one of" % path)
    assert "debug, info, warning, error" in errors[0]
    assert errors[1].startswith("%s:3: [server] cert: value \"a, b\" is a list" % path)


def test_unknown_key_and_unknown_section(tmp_path):
    path = write(tmp_path,
                 CLIENT_OK + "colour = blue\n[tunnel]\nping_interval = 5\n[extra]\nx = 1\n")
    assert errors_of(path, "client") == [
        "%s:4: [client] colour: unknown key" % path,
        "%s:7: [extra]: unknown section" % path,
    ]


def test_missing_required(tmp_path):
    path = write(tmp_path, "[client]\ntoken = x\n")
    assert errors_of(path, "client") == [
        "%s: [client] server: missing required value (or list servers in [servers], one "
        "[[NAME]] subsection each)" % path]


def test_syntax_error_has_line(tmp_path):
    path = write(tmp_path, "[server]\nlisten = 1.2.3.4:5\nthis is not ini\n")
    errors = errors_of(path, "server")
    assert len(errors) == 1 and errors[0].startswith("%s:3: " % path)
    assert "Invalid line" in errors[0]
    path = write(tmp_path, "[server]\npath = /a\npath = /b\n", "dup.conf")
    assert errors_of(path, "server") == ["%s:3: Duplicate keyword name" % path]


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.conf")
    errors = errors_of(path, "server")
    assert len(errors) == 1 and errors[0].startswith(path + ": cannot read")


@pytest.mark.parametrize("url", ["https://x/", "wss://", "ws://host:99999/", "x", '"wss://h/#frag"'])
def test_bad_server_url(tmp_path, url):
    path = write(tmp_path, "[client]\ntoken = t\nserver = %s\n" % url)
    errors = errors_of(path, "client")
    assert len(errors) == 1 and errors[0].startswith("%s:3: [client] server: " % path)


@pytest.mark.parametrize("pin", ["sha256//abc", "sha1//" + "A" * 27 + "=", "A" * 44,
                                 "sha256//" + "A" * 42 + "!="])
def test_bad_pin(tmp_path, pin):
    path = write(tmp_path, CLIENT_OK + "pin = %s\n" % pin)
    errors = errors_of(path, "client")
    assert len(errors) == 1
    assert errors[0].startswith("%s:4: [client] pin: pin must be sha256//" % path)


def test_good_pin_and_proxies(tmp_path):
    for proxy in ("socks5://127.0.0.1:1080", "socks5h://proxy.lan:9050", "http://[::1]:3128"):
        path = write(tmp_path, CLIENT_OK + "pin = %s\nupstream_proxy = %s\n" % (PIN, proxy))
        cfg = load_config(path, "client")
        assert cfg["client"]["pin"] == PIN and cfg["client"]["upstream_proxy"] == proxy


@pytest.mark.parametrize("proxy", ["ftp://h:1", "socks5://h", "http://u:p@h:1", "socks5://h:1/x"])
def test_bad_upstream_proxy(tmp_path, proxy):
    path = write(tmp_path, CLIENT_OK + "upstream_proxy = %s\n" % proxy)
    errors = errors_of(path, "client")
    assert len(errors) == 1 and errors[0].startswith("%s:4: [client] upstream_proxy: " % path)


def test_token_and_token_file(tmp_path):
    path = write(tmp_path, CLIENT_OK + "token_file = tok\n")
    assert errors_of(path, "client") == [
        "%s:3: [client] token: set exactly one of token and token_file" % path]
    path = write(tmp_path, "[client]\nserver = ws://127.0.0.1:1/\n", "none.conf")
    assert errors_of(path, "client") == [
        "%s:1: [client] token_file: set exactly one of token and token_file" % path]


def test_reconnect_order(tmp_path):
    path = write(tmp_path, CLIENT_OK + "[tunnel]\nreconnect_min = 5\nreconnect_max = 1\n")
    assert errors_of(path, "client") == [
        "%s:5: [tunnel] reconnect_min: must not exceed reconnect_max (1.0)" % path]


def test_bad_listen_and_path(tmp_path):
    path = write(tmp_path, "[server]\nlisten = ::1:443\npath = tunnel\n")
    errors = errors_of(path, "server")
    assert errors[0] == "%s:2: [server] listen: an IPv6 address needs brackets: [::1]:443" % path
    assert errors[1] == '%s:3: [server] path: path must start with "/"' % path


def test_relative_paths_resolved(tmp_path):
    sub = tmp_path / "etc"
    sub.mkdir()
    path = write(sub, """\
        [server]
        cert = certs/server.crt
        key = /abs/server.key
        state_dir = ../state
        [auth]
        jwt_public_key = jwt.pub
        [decoy]
        dir = site
        """)
    cfg = load_config(path, "server")
    assert cfg["server"]["cert"] == str(sub / "certs" / "server.crt")
    assert cfg["server"]["key"] == "/abs/server.key"
    assert cfg["server"]["state_dir"] == str(tmp_path / "state")
    assert cfg["auth"]["jwt_public_key"] == str(sub / "jwt.pub")
    assert cfg["auth"]["jwt_private_key"] == "/etc/afb/jwt.key"
    assert cfg["decoy"]["dir"] == str(sub / "site")
    client = load_config(write(sub, "[client]\nserver = wss://h/\ntoken_file = t\n", "c.conf"),
                         "client")
    assert client["client"]["token_file"] == str(sub / "t") and client["client"]["ca_file"] == ""


def test_acl_single_value_is_a_list(tmp_path):
    path = write(tmp_path, "[acl]\nallow = 93.184.216.0/24\ndeny = a.example, b.example\n"
                           "allow_private_to = 10.0.0.5:80\n")
    cfg = load_config(path, "server")
    assert cfg["acl"]["allow"] == ["93.184.216.0/24"]
    assert cfg["acl"]["deny"] == ["a.example", "b.example"]
    assert cfg["acl"]["allow_private_to"] == ["10.0.0.5:80"]


@pytest.mark.parametrize("entry,reason", [
    ("10.0.0.2/33", "bad network in ACL entry '10.0.0.2/33'"),
    ("300.1.1.1", "bad network in ACL entry '300.1.1.1'"),
    ("example.com:99999", "port out of range 1-65535 in ACL entry 'example.com:99999'"),
    ("ex ample.com", "bad host name in ACL entry 'ex ample.com'"),
])
@pytest.mark.parametrize("key", ["allow", "deny", "allow_private_to"])
def test_bad_acl_entries_have_their_line(tmp_path, key, entry, reason):
    path = write(tmp_path, "[server]\n[acl]\n\n%s = 1.1.1.1, %s\n" % (key, entry))
    [error] = errors_of(path, "server")
    assert error.startswith("%s:4: [acl] %s: %s" % (path, key, reason))


def test_allow_entries_of_private_addresses_name_the_key_they_belong_in(tmp_path):
    """allow used to mean "also these private destinations"; such a config is refused."""
    path = write(tmp_path, "[acl]\nallow = example.com, 127.0.0.1:8080, [fd00::5]:443\n")
    assert errors_of(path, "server") == [
        "%s:2: [acl] allow: %s only names %s addresses, which allow never opens: allow now lists "
        "the only destinations users may reach; move it to allow_private_to (and empty allow "
        "unless users should reach nothing else)" % (path, entry, reason)
        for entry, reason in [("127.0.0.1:8080", "loopback"), ("[fd00::5]:443", "unique local")]]
    path = write(tmp_path, "[acl]\nallow = 10.0.0.0/8\nallow_private = yes\n", "lan.conf")
    assert load_config(path, "server")["acl"]["allow"] == ["10.0.0.0/8"]   # only the LAN


def test_role_guess(tmp_path):
    assert check_config(write(tmp_path, CLIENT_OK)) == []
    path = write(tmp_path, "[tunnel]\nmax_message = 20000\n", "x.conf")
    [error] = check_config(path)
    assert "cannot tell" in error and "--role" in error
    lines = check_config(path, "server")        # valid; its key files are missing
    assert lines and all("/etc/afb/" in line for line in lines)


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:1080", ("127.0.0.1", 1080)),
    ("[::1]:443", ("::1", 443)),
    ("example.com:0", ("example.com", 0)),
    (" 0.0.0.0:443 ", ("0.0.0.0", 443)),
])
def test_parse_hostport(text, expected):
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["localhost", "::1:80", "[::1]80", "[zz]:80", "h:65536",
                                  "h:-1", ":80", "h:", "a b:1", ["h", "1"]])
def test_parse_hostport_rejects(text):
    with pytest.raises(ValueError):
        parse_hostport(text)


def test_key_where_a_section_belongs(tmp_path):
    path = write(tmp_path, "tunnel = 5\n" + CLIENT_OK)
    assert errors_of(path, "client") == [
        "%s:1: tunnel: must be a [tunnel] section, not a key" % path]
