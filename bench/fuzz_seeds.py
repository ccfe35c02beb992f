"""Seeds and dictionaries of ``bench/fuzz``'s targets (bench/fuzz_corpus/, ``bench/fuzz --seeds``).

A few valid inputs per target, built with the codecs' own encoders (and the
shipped config files without their comments), so that libFuzzer's coverage
starts past the first length or magic check; and, for the text protocols,
the words libFuzzer splices into inputs (``-dict``).  The first byte of a
stream parser's seed is how the fuzz target cuts the rest into ``receive``
calls (see bench/fuzz_targets.py).  The E2E hellos and the certificate are
signed or keyed afresh, so they differ at each ``--seeds``.
"""

import os

from fuzz_targets import _KEY, _STATIC, UDP_ENCODE, UDP_MODULE


def seeds():
    """``{target: {name: bytes}}``: a few valid inputs per target, from afb's encoders."""
    from afb.codec import aead
    from afb.codec import frames as f
    from afb.codec import websocket as ws
    from afb.codec.address import encode_address
    from afb.monitor.control_protocol import encode

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    connect = b"\x05\x01\x00" + encode_address("example.com", 443)
    out = {
        "socks5": {
            "connect-domain": b"\x00\x05\x01\x00" + connect,
            "connect-v6-trickle": b"\x03\x05\x01\x00\x05\x01\x00" + encode_address("::1", 80),
            "userpass": b"\x80\x05\x01\x02\x01\x01u\x01p\x05\x03\x00"
                        + encode_address("10.0.0.1", 53) + b"data",
        },
        "httpproxy": {
            "connect": b"\x00CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "get": b"\x05GET http://[::1]:8080/a?b#c HTTP/1.0\r\nConnection: x\r\nx: 1\n"
                   b"Content-Length: 3\r\n\r\nabc",
        },
        "http_head": {
            "upgrade": b"\x00GET /tunnel HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Key: x\r\n\r\n",
            "chunked": b"\x07POST http://h:1/%41/../b/./c HTTP/1.1\r\nTransfer-Encoding: chunked"
                       b"\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\n",
            "http09": b"\x00\r\nGET /index.html\n",
        },
        "ws_upgrade": {
            "101": b"\x00HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   b"Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
                   b"\r\n\r\n\x82\x00",
            "401": b"\x03HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
        },
        "frames": {
            "hello-open-data": f.frame(f.HELLO, 0, f.hello_payload(1, 262144, 1 << 20))
            + f.frame(f.OPEN, 1, f.open_payload(1, "example.com", 443, b"GET"), f.FLAG_NO_WAIT)
            + f.frame(f.DATA, 1, b"hello") + f.frame(f.WINDOW, 1, f.window_payload(4096)),
            "session": f.frame(f.PING, 0, f.ping_payload(7)) + f.frame(f.PONG, 0, f.ping_payload(7))
            + f.frame(f.GOAWAY, 0, f.goaway_payload(5, 1, "bye"))
            + f.frame(f.TOKEN, 0, f.token_payload("a.b.c")) + f.frame(f.TOKEN, 0, f.token_payload(
                error="no")) + f.frame(f.REFRESH, 0),
            "fail": f.frame(f.OPEN_FAIL, 3, f.open_fail_payload(5, "refused"))
            + f.frame(f.RST, 3, f.rst_payload(1)) + f.frame(f.FIN, 3)
            + f.frame(f.OPEN, 5, f.open_payload(3, "::1", 53)),
        },
        "websocket": {
            "masked-binary": ws.encode_header(ws.OP_BINARY, 5, mask_key=b"abcd")
            + ws.mask(b"hello", b"abcd") + ws.encode_header(ws.OP_PING, 0),
            "close": ws.encode_header(ws.OP_CLOSE, 9, mask_key=b"\x01\x02\x03\x04")
            + ws.mask(ws.encode_close(1000, "goodbye"), b"\x01\x02\x03\x04"),
            "long": ws.encode_header(ws.OP_TEXT, 300, fin=False) + b"x" * 300
            + ws.encode_header(ws.OP_CONTINUATION, 70000)[:10],
        },
        "address": {
            "ipv4": b"\x00" + encode_address("192.0.2.1", 80),
            "domain": b"\x01\x00" + encode_address("example.com", 443),
            "ipv6": b"\x02\x00\x00" + encode_address("2001:db8::1", 8080),
        },
        "control": {
            "requests": b"\x00" + encode({"v": 1, "cmd": "streams", "filter": "alice",
                                           "limit": 10, "id": 1})
            + encode({"cmd": "subscribe", "streams": True}) + encode({"cmd": "close_stream",
                                                                      "stream": "1/3"}),
            "bad": b"\x05{\"cmd\": \"disconnect_user\", \"user\": 3, \"id\": [1]}\n[1,2]\n",
        },
    }
    def rec(records):
        return b"".join(len(r).to_bytes(2, "big") + bytes(r) for r in records)
    sealer = aead.RecordSealer(1, _KEY, rekey_bytes=40)
    client = aead.ClientHandshake(aead.public_key_b64(_STATIC), b"token", 2)
    hello = client.start()
    server_hello = aead.ServerHandshake(_STATIC, b"token").respond(hello)[0]
    out["aead"] = {
        "records": b"\x00\x00" + rec([sealer.seal(b"hi"), sealer.seal(b"x" * 20),
                                       sealer.seal(b"after key update")]),
        "client-hello": b"\x01\x00" + hello,
        "server-hello": b"\x02\x01" + server_hello,
        "round-trip": b"\x03\x00" + b"plaintext " * 8,
    }
    out["der"] = {"cert": _self_signed_der()}
    out["proxy_protocol"] = {"v4": bytes([1, 0, 80, 0, 2, 0, 3, 0, 4]) * 3,
                             "text": b"\x00\x05::1%x" * 4}
    out["config"] = {}
    for role in ("client", "server"):
        with open(os.path.join(repo, "conf", "afb-%s.conf" % role), "rb") as handle:
            lines = [line for line in handle.read().splitlines()
                     if line.strip() and not line.lstrip().startswith(b"#")]
        out["config"]["shipped-" + role] = b"\n".join(lines) + b"\n"
    out["config"]["servers"] = (b"[client]\ntoken = x\n[servers]\n[[home]]\n"
                                b"server = wss://a.example/t\npin = \"\"\n[[b]]\n"
                                b"server = ws://127.0.0.1:8080/\n[tunnel]\nmax_buffer = 4M\n")
    out["udp"] = _udp_seeds()
    return out


def _self_signed_der():
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.derive_private_key(7, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz.example")])
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(when)
            .not_valid_after(when + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def _udp_seeds():
    """From the UDP codec's encoder once it exists; RFC 1928 section 7 bytes until then."""
    from afb.codec.address import encode_address

    try:
        encode = getattr(__import__(UDP_MODULE, fromlist=[UDP_ENCODE]), UDP_ENCODE)
    except (ImportError, AttributeError):
        def encode(host, port, payload, frag=0):
            return b"\x00\x00" + bytes([frag]) + encode_address(host, port) + payload
    return {"dns-v4": encode("192.0.2.53", 53, b"\x12\x34\x01\x00\x00\x01"),
            "domain": encode("dns.example", 853, b"query"),
            "v6-frag": encode("2001:db8::35", 53, b"x", 1)}


# --- dictionaries ----------------------------------------------------------------------

#: Tokens libFuzzer splices into inputs (-dict): the words of each text protocol.
DICTS = {
    "httpproxy": ["CONNECT ", "GET ", "OPTIONS * ", "http://", "https://", " HTTP/1.1", " HTTP/1.0",
                  "\r\n", "\r\n\r\n", "Host: ", "Content-Length: ", "Transfer-Encoding: chunked",
                  "Connection: ", "Proxy-Connection: keep-alive", "Proxy-Authorization: Basic ",
                  "[::1]", ":443", "@"],
    "http_head": ["GET ", "POST ", "HEAD ", " HTTP/1.1", " HTTP/1.0", " HTTP/2.0", "\r\n",
                  "\r\n\r\n", "Host: ", "Content-Length: ", "Transfer-Encoding: ", "chunked",
                  "Connection: ", "keep-alive", "close", "Upgrade: websocket", "http://", "/../",
                  "/./", "//", "%2e", "%00", "?", "#", "[::1]:80", "0\r\n\r\n", ";ext=1"],
    "ws_upgrade": ["HTTP/1.1 ", "101 ", "401 ", "Switching Protocols", "\r\n", "\r\n\r\n",
                   "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Accept: "],
    "control": ['"cmd"', '"id"', '"v"', '"snapshot"', '"streams"', '"subscribe"', '"unsubscribe"',
                '"logs"', '"close_stream"', '"disconnect_user"', '"reload"', '"filter"', '"sort"',
                '"desc"', '"limit"', '"level"', '"stream"', '"user"', "true", "false", "null",
                "NaN", "Infinity", "-1", "1e3", "100001", "{", "}", "[", "]", ":", ",", "\n",
                '"\\u0000"'],
    "config": ["[client]", "[server]", "[tunnel]", "[servers]", "[[", "]]", "[e2e]", "[acl]",
               "[qos]", "[alerts]", "[access]", "[auth]", "[decoy]", "[dns]", " = ", "\n", '"',
               "'", '"' * 3, "'" * 3, ",", "#", "yes", "no", "off", "8M", "1G", "64K", "80Mbit",
               "10s", "ws://", "wss://", "socks5://", "http://", "sha256//", "127.0.0.1:1080",
               "[::1]:443", "10.0.0.0/8", "example.com"],
}


def _dict_lines(tokens):
    """libFuzzer's dictionary format: one quoted token a line, bytes outside ASCII as \\xNN."""
    def quote(token):
        return "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "\\x%02x" % ord(c)
                       for c in token)
    return "".join('"%s"\n' % quote(token) for token in tokens)


def _spec_words():
    """The keys and option values of afb/configspec/*.spec (the config dictionary)."""
    import re

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    words = set()
    for role in ("client", "server"):
        with open(os.path.join(repo, "afb", "configspec", role + ".spec")) as handle:
            text = handle.read()
        words.update(re.findall(r"^\s*(\w+)\s*=", text, re.M))
        for args in re.findall(r"option\(([^)]*)\)", text):
            words.update(re.findall(r"'([^']+)'", args))
    return sorted(words)


def write_seeds(folder):
    for target, tokens in DICTS.items():
        if target == "config":
            tokens = tokens + _spec_words()
        with open(os.path.join(folder, target + ".dict"), "w") as handle:
            handle.write(_dict_lines(tokens))
    for target, items in seeds().items():
        os.makedirs(os.path.join(folder, target), exist_ok=True)
        for name, data in items.items():
            with open(os.path.join(folder, target, name), "wb") as handle:
                handle.write(data)
