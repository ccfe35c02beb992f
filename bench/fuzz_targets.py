"""The atheris targets of ``bench/fuzz``: one per parser, each run in its own process.

A target is a builder that imports its codec (inside atheris's
instrumentation, so that libFuzzer's coverage is afb's own branches) and
returns ``one_input(data)``.  ``EXPECTED[name]`` is the error hierarchy the
parser is allowed to raise on bad bytes (afb/errors.py: the one a caller
catches and answers with its reply code, HTTP status or close code);
any other exception, or a broken invariant (``AssertionError``: a round trip
that does not give the same value back, a result that depends on how the
bytes were split), is a crash.

The first input byte of the stream parsers (SOCKS5, HTTP proxy, HTTP head,
upgrade answer, control lines) chooses how the rest is cut into ``receive``
calls (0: all at once; n: n bytes at a time), the way a slow or hostile
client trickles bytes; SOCKS5 and HTTP proxy requests are also parsed whole
and the two results compared.  Seeds (bench/fuzz_seeds.py) are built with the
codecs' own encoders so that coverage starts past the first length check.

Usage: ``python bench/fuzz_targets.py TARGET [libFuzzer flags] CORPUS_DIR...``
(``bench/fuzz`` does this); ``--seeds DIR`` writes the seed corpus.
"""

import os
import sys

#: The UDP header codec of SOCKS5 UDP ASSOCIATE (issue 15, part 1): the module
#: and functions the ``udp`` target calls.
UDP_MODULE = "afb.codec.socks5_udp"
UDP_PARSE = "parse_udp_header"       # (data) -> UdpDatagram(frag, host, port, data)
UDP_ENCODE = "build_udp_datagram"    # (host, port, data, frag=0) -> bytes

#: What a target prints when its module is missing (it exits 0; libFuzzer's crashes exit 77).
SKIP_MARK = "fuzz target skipped:"

#: target -> dotted names of the exception classes it may raise on bad input.
EXPECTED = {
    "socks5": ("afb.errors.SocksError",),
    "httpproxy": ("afb.errors.HttpProxyError",),
    "http_head": ("afb.errors.HttpRequestError",),
    "ws_upgrade": ("afb.errors.ProtocolError",),
    "frames": ("afb.errors.ProtocolError", "afb.errors.AddressError"),
    "websocket": ("afb.errors.ProtocolError",),
    "aead": ("afb.errors.ProtocolError",),
    "address": ("afb.errors.AddressError",),
    "der": ("afb.codec.der.DerError",),
    "proxy_protocol": (),
    "control": ("afb.monitor.control_protocol.ControlError",),
    "config": ("afb.errors.ConfigError",),
    "udp": ("afb.errors.SocksError", "afb.errors.ProtocolError"),
}
#: Modules instrumented for coverage, per target (default: afb).
INSTRUMENT = {"config": ["afb", "configobj"]}
#: Longest input per target (libFuzzer -max_len).
#: http_head and control reach their line limits (8 KiB; 64 + 32 * first byte), a JSON
#: line its nesting limit (about 1,000 levels).
MAX_LEN = {"config": 8192, "der": 2048, "http_head": 10000, "control": 8192}

_KEY = bytes(range(32))              # the AEAD target's fixed record key
_STATIC = bytes(range(1, 33))        # and its server's static X25519 key


def _chunks(data):
    """``data[1:]`` cut as ``data[0]`` says (0: whole): the trickle of a slow client."""
    if not data:
        return [b""]
    step, body = data[0], data[1:]
    if step == 0:
        return [body]
    return [body[i:i + step] for i in range(0, len(body), step)] or [b""]


def _resolve(dotted):
    module, _, name = dotted.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


# --- local proxy protocols -------------------------------------------------------

def build_socks5():
    from afb.codec.address import encode_address
    from afb.codec.socks5 import Socks5Parser
    from afb.errors import SocksError

    def run(parts, auth):
        parser = Socks5Parser((lambda user, password: user == "u") if auth else None)
        sent = b""
        for i, part in enumerate(parts):
            try:
                out, request = parser.receive(part)
            except SocksError as exc:
                return ("error", type(exc), sent + exc.response)
            sent += out
            if request is not None:
                return ("ok", sent, request, parser.leftover + b"".join(parts[i + 1:]))
        return ("more", sent)

    def one_input(data):
        auth = bool(data[:1]) and data[0] & 0x80
        parts = _chunks(data)
        result = run(parts, auth)
        assert result == run([b"".join(parts)], auth), "trickled and whole results differ"
        if result[0] == "ok":
            request = result[2]
            assert 0 <= request.port <= 0xFFFF
            encode_address(request.host, request.port)    # what the client sends on: OPEN
    return one_input


def build_httpproxy():
    from afb.codec.httpproxy import HttpProxyParser, response, sniff
    from afb.errors import HttpProxyError

    def run(parts, max_head):
        parser = HttpProxyParser(max_head=max_head)
        for i, part in enumerate(parts):
            try:
                request = parser.receive(part)
            except HttpProxyError as exc:
                return ("error", exc.http_status)
            if request is not None:
                return ("ok", request, parser.leftover + b"".join(parts[i + 1:]), parser.headers)
        return ("more",)

    def one_input(data):
        max_head = 64 + (data[0] if data else 0) * 16
        parts = _chunks(data)
        result = run(parts, max_head)
        assert result == run([b"".join(parts)], max_head), "trickled and whole results differ"
        sniff(data[1] if len(data) > 1 else 0)
        if result[0] == "ok":
            request = result[1]
            assert 0 < request.port <= 0xFFFF
            assert not request.forward or request.forward.endswith(b"\r\n\r\n")
        elif result[0] == "error":
            response(result[1], "refused")
    return one_input


def build_http_head():
    from afb.codec.http_head import ChunkedSkipper, HeadReader, body_length, normalize_path

    def one_input(data):
        reader = HeadReader()
        head = None
        for part in _chunks(data):
            head = reader.feed(part)
            if head is not None:
                break
        if head is None:
            return
        head.environ("192.0.2.1")
        _ = head.keep_alive
        length = body_length(head)             # what the decoy does next (front_door)
        if length == "chunked":
            ChunkedSkipper().feed(reader.leftover)
        else:
            assert isinstance(length, int) and length >= 0
        normalize_path(head.uri)
    return one_input


def build_ws_upgrade():
    from afb.codec.ws_upgrade import UpgradeResponse, check_accept

    def one_input(data):
        answer = UpgradeResponse()
        for part in _chunks(data):
            if answer.feed(part):
                assert 0 <= answer.status <= 999
                check_accept(answer, "dGhlIHNhbXBsZSBub25jZQ==")
                return
    return one_input


# --- tunnel ---------------------------------------------------------------------------

def build_frames():
    from afb.codec import frames as f

    parsers = {
        f.HELLO: lambda p: f.parse_hello(p, 1), f.OPEN: f.parse_open, f.WINDOW: f.parse_window,
        f.OPEN_FAIL: f.parse_reason, f.RST: f.parse_reason, f.TOKEN: f.parse_token,
        f.PING: f.parse_ping, f.PONG: f.parse_ping, f.GOAWAY: f.parse_goaway,
    }

    def one_input(data):
        try:
            f.parse_hello_message(data, 1)
        except f.ProtocolError:
            pass
        for ftype, flags, stream_id, payload in f.iter_frames(data):
            assert f.frame(ftype, stream_id, payload, flags) in data
            parse = parsers.get(ftype)
            if parse is None:
                continue
            value = parse(payload)
            if ftype == f.OPEN:
                command, host, port, early = value
                again = f.parse_open(f.open_payload(command, host, port, early))
                assert again[1:] == (host, port, early), "OPEN round trip"
            elif ftype == f.WINDOW:
                assert f.parse_window(f.window_payload(value)) == value
    return one_input


def build_websocket():
    from afb.codec import websocket as ws

    def one_input(data):
        offset = 0
        while True:
            parsed = ws.parse_header(data, offset)
            if parsed is None:
                return
            fin, opcode, masked, key, length, header_len = parsed
            again = ws.parse_header(ws.encode_header(opcode, length, fin, key))
            assert again[:5] == parsed[:5], "header round trip"
            start = offset + header_len
            payload = data[start:start + length]
            if len(payload) < length:
                return
            if masked:
                clear = ws.mask(payload, key)
                assert ws.mask_python(payload, key) == clear
                masker = ws.Masker(key)
                assert masker.process(payload[:3]) + masker.process(payload[3:]) == clear
                buf = bytearray(payload)
                ws.mask_inplace(buf, key)
                assert buf == clear
                payload = clear
            if opcode == ws.OP_CLOSE:
                code, reason = ws.decode_close(payload)
                if code != ws.CLOSE_NO_STATUS:
                    assert ws.decode_close(ws.encode_close(code, reason))[0] == code
                    ws.describe_close(code, reason)
            offset = start + length
    return one_input


def build_aead():
    from afb.codec import aead

    server_key = aead.private_key_from(_STATIC)
    server_pub = aead.public_key_b64(server_key)

    def open_records(body, cipher):
        opener = aead.RecordOpener(cipher, _KEY)
        while len(body) >= 2:
            size = int.from_bytes(body[:2], "big")
            record, body = body[2:2 + size], body[2 + size:]
            (opener.open_view if size & 1 else opener.open)(record)

    def round_trip(body, cipher):
        rekey = 33 + (body[0] if body else 0)
        sealer = aead.RecordSealer(cipher, _KEY, rekey_bytes=rekey, use_into=bool(rekey & 1))
        opener = aead.RecordOpener(cipher, _KEY)
        parts = [body[i:i + 7] for i in range(0, len(body), 7)]
        for part in parts:
            assert opener.open(sealer.seal([part, part])) == part + part
        record = bytearray(sealer.seal(body))
        record[len(body) % len(record)] ^= 1 + (rekey & 0x7F)
        try:
            opener.open(bytes(record))
        except aead.RecordError:
            return
        raise AssertionError("a modified record was opened")

    def one_input(data):
        if len(data) < 2:
            return
        mode, cipher, body = data[0] % 4, 1 + (data[1] & 1), data[2:]
        if mode == 0:
            open_records(body, cipher)
        elif mode == 1:
            aead.ServerHandshake(server_key, b"token").respond(body)
        elif mode == 2:
            client = aead.ClientHandshake(server_pub, b"token", cipher)
            client.start()
            client.finish(body)
        else:
            round_trip(body, cipher)
    return one_input


def build_address():
    from afb.codec.address import decode_address, encode_address

    def one_input(data):
        offset = data[0] % 4 if data else 0
        decoded = decode_address(data, offset)
        if decoded is not None:
            host, port, end = decoded
            assert offset < end <= len(data)
            again = decode_address(encode_address(host, port))
            assert again[:2] == (host, port), "address round trip"
        text = data.decode("utf-8", "replace")
        encoded = encode_address(text, int.from_bytes(data[:2].ljust(2, b"\0"), "big"))
        assert decode_address(encoded) is not None
    return one_input


def build_der():
    from afb.codec.der import subject_public_key_info

    def one_input(data):
        spki = subject_public_key_info(data)
        assert spki in data and spki[:1] == b"\x30"
    return one_input


def build_proxy_protocol():
    import atheris

    from afb.codec.proxy_protocol import proxy_v1_header

    def one_input(data):
        fdp = atheris.FuzzedDataProvider(data)
        pairs = []
        for _ in range(2):
            kind = fdp.ConsumeIntInRange(0, 3)
            if kind == 0:
                host = fdp.ConsumeUnicodeNoSurrogates(40)
            elif kind == 1:
                host = ".".join(str(fdp.ConsumeIntInRange(0, 300)) for _ in range(4))
            elif kind == 2:
                host = ":".join("%x" % fdp.ConsumeIntInRange(0, 0x1ffff) for _ in range(8))
            else:
                host = "::ffff:%d.%d.%d.%d%%eth0" % tuple(fdp.ConsumeIntInRange(0, 255)
                                                          for _ in range(4))
            pairs.append((host, fdp.ConsumeIntInRange(-1, 70000)))
        line = proxy_v1_header(*pairs)
        assert line.startswith(b"PROXY ") and line.endswith(b"\r\n") and line.count(b"\n") == 1
    return one_input


# --- control socket and config files -----------------------------------------------

def build_control():
    from afb.monitor import control_protocol as proto

    def one_input(data):
        splitter = proto.LineSplitter(max_line=64 + (data[0] if data else 0) * 32)
        for part in _chunks(data):
            for line in splitter.feed(part):
                if line is proto.TOO_LONG:
                    continue
                try:                                    # as control_server._answer
                    request = proto.parse_request(line)
                except proto.ControlError as exc:
                    proto.encode(proto.error_message(exc))
                    continue
                proto.encode({"v": proto.VERSION, "type": "ok"}, request.id)
    return one_input


def config_folder(pid):
    """The config target's scratch folder in process ``pid``."""
    import tempfile

    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return os.path.join(base, "afb-fuzz-config-%d" % pid)


def build_config():
    from afb.config import guess_role, load_config

    # In tmpfs: a million writes.  Named by pid: bench/fuzz removes it when the
    # process is gone (libFuzzer ends with exit(), past Python's atexit).
    folder = config_folder(os.getpid())
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "afb.conf")

    def one_input(data):
        with open(path, "wb") as handle:
            handle.write(data)
        load_config(path, guess_role(path))
    return one_input


def build_udp():
    try:
        module = __import__(UDP_MODULE, fromlist=[UDP_PARSE])
    except ImportError:
        return None
    parse = getattr(module, UDP_PARSE)
    encode = getattr(module, UDP_ENCODE, None)

    def one_input(data):
        value = parse(data)
        if value is None or encode is None:
            return
        if not isinstance(value, tuple):                   # a dataclass
            value = (value.frag, value.host, value.port, value.data)
        frag, host, port, payload = value
        again = parse(encode(host, port, payload, frag))
        if not isinstance(again, tuple):
            again = (again.frag, again.host, again.port, again.data)
        assert again[:3] == (frag, host, port) and bytes(again[3]) == bytes(payload), \
            "UDP header round trip"
    return one_input


BUILDERS = {name: globals()["build_" + name] for name in EXPECTED}


# --- entry point -----------------------------------------------------------------------

def main(argv):
    if argv[:1] == ["--seeds"]:
        from fuzz_seeds import write_seeds

        write_seeds(argv[1])
        return 0
    import atheris

    name, args = argv[0], argv[1:]
    # str methods (startswith, endswith) feed libFuzzer's table of compared
    # values.  atheris's "RegEx" hook is not used: it fails on bytes patterns
    # and on ``match(string, pos)`` (atheris 3.0), both common here.
    atheris.enabled_hooks.add("str")
    with atheris.instrument_imports(include=INSTRUMENT.get(name, ["afb"])):
        test = BUILDERS[name]()
        expected = tuple(_resolve(dotted) for dotted in EXPECTED[name])
    if test is None:
        print("%s %s: %s.%s not found" % (SKIP_MARK, name, UDP_MODULE, UDP_PARSE), flush=True)
        return 0

    def one_input(data):
        try:
            test(data)
        except expected:
            pass

    atheris.Setup([sys.argv[0]] + args, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
