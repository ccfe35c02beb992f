"""A tunnel client that floods the server with cheap work, for the CPU abuse tests.

    python tests/flood_client.py KIND --url URL --token T --pin P [--e2e-key K] --seconds S

It opens a real tunnel (token, pinned TLS, E2E, HELLO), then for ``S``
seconds sends as fast as it can (reconnecting if the server closes it):

* ``fragments``: messages of 1,000 empty continuation frames, each ended by a
  valid sealed record (a PING), so every message is legal but costs the
  server 1,001 frame headers;
* ``tiny``: tiny valid sealed messages, one DATA frame for a stream that
  does not exist in each;
* ``ping``: WebSocket pings (control frames outside the records);
* ``tunnel-ping``: sealed tunnel PING frames;
* ``opens`` (with ``--target HOST:PORT``): OPENs to that destination, 200 to
  a message, each on a new stream, none ever closed: it meets the server's
  stream limits (``max_streams``, ``max_streams_per_user``, ``[qos]
  max_new_streams_per_second``).  This kind reads what the server answers
  (unless ``--no-read``) and its last line also counts the OPEN_OKs, the
  OPEN_FAILs by code and reason, and RSTs, as JSON.

The other kinds never read what the server sends.  It prints one line at the
end: kind, messages sent, reconnects.  Talks only to the URL it is given
(loopback in the tests) and ends after ``S`` seconds whatever happens.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import collections  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gevent  # noqa: E402

from afb import PROTOCOL_VERSION  # noqa: E402
from afb.codec import frames  # noqa: E402
from afb.codec import websocket as wsc  # noqa: E402
from afb.transport import tls, wsclient  # noqa: E402
from afb.transport.secure_channel import client_secure  # noqa: E402

BATCH = 200


def frame_bytes(opcode, payload=b"", fin=True):
    """One masked client frame."""
    key = wsc.mask_key()
    return wsc.encode_header(opcode, len(payload), fin=fin, mask_key=key) + wsc.mask(payload, key)


class Tunnel:
    def __init__(self, args):
        headers = {"Authorization": "Bearer " + args.token}
        context = tls.client_context(pin=args.pin) if args.url.startswith("wss:") else None
        self.raw = wsclient.connect(args.url, headers=headers, ssl_context=context, pin=args.pin,
                                    timeout=10)
        self.ws = self.raw
        if args.e2e_key:
            self.ws = client_secure(self.raw, args.e2e_key,
                                    hashlib.sha256(args.token.encode()).digest(), None, 10)
        self.ws.send_message([frames.frame(frames.HELLO, 0, frames.hello_payload(
            PROTOCOL_VERSION, 256 * 1024, 1 << 20, os.urandom(16)))])
        self.sock = self.raw._sock
        self.next_id = 1
        self.answers = collections.Counter()

    def read_answers(self):
        """Count what the server answers (``opens``): OPEN_OK, OPEN_FAIL code: reason, RST."""
        while True:
            message = self.ws.recv_message()
            if message is None:
                self.answers["tunnel closed: %s" % (self.raw.peer_close_reason or "-")] += 1
                return
            for ftype, _flags, _sid, payload in frames.iter_frames(message):
                if ftype == frames.OPEN_FAIL:
                    code, reason = frames.parse_reason(payload)
                    self.answers["OPEN_FAIL 0x%02x %s" % (code, re.sub(r"\d+", "N", reason))] += 1
                elif ftype in (frames.OPEN_OK, frames.RST):
                    self.answers[frames.frame_name(ftype)] += 1

    def opens(self, target):
        host, _, port = target.rpartition(":")
        ids = range(self.next_id, self.next_id + 2 * BATCH, 2)
        self.next_id += 2 * BATCH
        self.ws.send_message([frames.frame(frames.OPEN, sid, frames.open_payload(
            frames.CMD_CONNECT, host, int(port)), frames.FLAG_NO_WAIT) for sid in ids])
        gevent.sleep(0)                     # the reader's turn
        return BATCH

    def record(self, plaintext):
        """One message's payload as the server expects it (sealed with E2E)."""
        if self.ws is self.raw:
            return plaintext
        return bytes(self.ws.sealer.seal_view([plaintext]))

    def flood_once(self, kind, target=None):
        if kind == "opens":
            return self.opens(target)
        if kind == "ping":
            self.sock.sendall(b"".join(frame_bytes(wsc.OP_PING, b"p") for _ in range(BATCH)))
        elif kind == "fragments":
            empty = frame_bytes(wsc.OP_CONTINUATION, b"", fin=False)
            ping = frames.frame(frames.PING, 0, frames.ping_payload(1))
            parts = [frame_bytes(wsc.OP_BINARY, b"", fin=False), empty * 999,
                     frame_bytes(wsc.OP_CONTINUATION, self.record(ping))]
            self.sock.sendall(b"".join(parts))
        elif kind == "tiny":
            data = frames.frame(frames.DATA, 999_999, b"x")
            self.sock.sendall(b"".join(frame_bytes(wsc.OP_BINARY, self.record(data))
                                       for _ in range(BATCH)))
        elif kind == "tunnel-ping":
            ping = frames.frame(frames.PING, 0, frames.ping_payload(1))
            self.sock.sendall(b"".join(frame_bytes(wsc.OP_BINARY, self.record(ping))
                                       for _ in range(BATCH)))
        else:
            raise SystemExit("unknown flood kind %r" % kind)
        return 1 if kind == "fragments" else BATCH


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("kind")
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--pin", default=None)
    parser.add_argument("--e2e-key", default=None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--target", default="127.0.0.1:9", help="opens: the destination")
    parser.add_argument("--no-read", action="store_true", help="opens: ignore the answers")
    args = parser.parse_args()
    end = time.monotonic() + args.seconds
    sent = reconnects = 0
    tunnel = None
    answers = collections.Counter()
    readers = []
    while time.monotonic() < end:
        try:
            if tunnel is None:
                tunnel = Tunnel(args)
                answers = tunnel.answers        # (a reconnect starts counting again)
                if args.kind == "opens" and not args.no_read:
                    readers.append(gevent.spawn(tunnel.read_answers))
            sent += tunnel.flood_once(args.kind, args.target)
        except OSError as exc:
            reconnects += 1
            tunnel = None
            if reconnects > 1000:
                print("giving up: %s" % exc)
                break
            time.sleep(0.05)                 # a moment before it dials again
    if args.kind == "opens":
        gevent.sleep(0.5)                   # the last answers
        print("%s: %d OPENs sent, %d reconnects; answers %s" % (
            args.kind, sent, reconnects, json.dumps(dict(answers), sort_keys=True)), flush=True)
        gevent.killall(readers)
        return
    print("%s: %d messages sent, %d reconnects" % (args.kind, sent, reconnects), flush=True)


if __name__ == "__main__":
    main()
