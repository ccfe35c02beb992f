"""A userspace ``netem``: delay, jitter (hence reordering) and loss for the packets of a veth.

Why: this kernel is built without ``sch_netem`` (CONFIG_NET_SCH_NETEM unset),
so ``tc qdisc ... netem delay 100ms loss 5%`` fails; it has iptables' NFQUEUE
target and the nfnetlink_queue subsystem, though.  So the tests send the
packets arriving on each end of a veth to a queue (``iptables -j NFQUEUE``,
inside the namespaces the test made, never in the host's) and one of these
processes in each namespace,
reads each packet's id from the queue (metadata only: the payload stays in the
kernel) and gives its verdict later: ACCEPT after ``delay`` +- ``jitter`` ms
(each packet its own draw, so packets closer together than the jitter come
out of order, as with netem's jitter), or DROP with probability ``loss``.  It
speaks nfnetlink_queue in pure Python (a netlink socket, a few structs):
no C library to build.

What it measures: nothing itself; it makes a slow lossy path (``--delay 100
--jitter 10 --loss 0.05`` on both ends of a link = 200 ms RTT, 5 % loss each
way, reordering) on which the fault tests check that streams stay byte-exact,
and ``tests/latency_load.py`` uses it for the 40 ms RTT of issue 13's
"20 Mbit/s, 40 ms RTT" case.  Measured here (20 ms each way, no loss, a plain
TCP transfer of 40 MiB over the veth): 28.8 MB/s in 1.45 s (slow start
included), ~10 us of this process's CPU per packet; a TCP connect took 42.0 ms
(median of 20; max 56), so it adds ~2 ms to the asked 40.

Run: ``python tests/userspace_netem.py --queue 3 --delay 100 --jitter 10
--loss 0.05``; it prints ``ready`` once bound, and on SIGTERM prints one JSON
line of counts (``seen``, ``dropped``) and exits.  :func:`rules` gives the
iptables commands that feed the queue from a device.
"""

import argparse
import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33

NLMSG = struct.Struct("=IHHII")         # length, type, flags, sequence, port id
NFGEN = struct.Struct("!BBH")           # family, version, queue number (big-endian)
NLA = struct.Struct("=HH")              # attribute length, type


def rules(device, queue):
    """The iptables argv lists (without the namespace prefix) sending every packet
    that arrives on ``device`` to ``queue``.  On arrival, not on the way out: a
    locally sent packet held in the queue still counts against its TCP socket's
    small-queue budget (TSQ: about 1 ms of data at the pacing rate), so the sender
    stalled and 20 ms each way on a plain veth carried ~280 KB/s; a received
    packet belongs to no local socket.  So each namespace of a link runs one of
    these for its own direction.  iptables-legacy: its NFQUEUE target is built in,
    where the nftables ``queue`` expression is not (NFT_QUEUE).  ``--queue-bypass``:
    once this process is gone the packets pass (without it they are dropped: the
    link would die with the netem)."""
    return [["iptables-legacy", "-A", "INPUT", "-i", device, "-j", "NFQUEUE", "--queue-num",
             str(queue), "--queue-bypass"]]


def _attr(kind, payload):
    pad = (4 - len(payload) % 4) % 4
    return NLA.pack(NLA.size + len(payload), kind) + payload + b"\0" * pad


def _message(kind, queue, attrs, flags=NLM_F_REQUEST, seq=0):
    body = NFGEN.pack(socket.AF_UNSPEC, 0, queue) + b"".join(attrs)
    return NLMSG.pack(NLMSG.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq,
                      0) + body


def _attrs(data):
    """{type: payload} of a packed attribute list."""
    out = {}
    while len(data) >= NLA.size:
        length, kind = NLA.unpack_from(data)
        if length < NLA.size:
            break
        out[kind & 0x3FFF] = data[NLA.size:length]
        data = data[(length + 3) & ~3:]
    return out


class Queue:
    """A bound nfnetlink queue: :meth:`packets` yields the ids of the packets that
    arrive, :meth:`verdict` settles one."""

    def __init__(self, number, maxlen=1000):
        self.number = number
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        # A notice lost to a full socket would leave its packet in the kernel's
        # queue for good; at most ``maxlen`` (netem's default limit, 1,000) wait
        # there, so they always fit in the buffer: beyond, the kernel drops the
        # packet (a loss TCP repairs), as netem does.
        self.sock.setsockopt(270, NETLINK_NO_ENOBUFS, 1)      # SOL_NETLINK
        self.sock.bind((0, 0))
        self._ask(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)), 1)
        self._ask(_attr(NFQA_CFG_PARAMS, struct.pack("!IBxxx", 0, NFQNL_COPY_META)), 2)
        self._ask(_attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)), 3)

    def _ask(self, attr, seq):
        self.sock.send(_message(NFQNL_MSG_CONFIG, self.number, [attr], NLM_F_REQUEST | NLM_F_ACK,
                                seq))
        while True:
            data = self.sock.recv(65536)
            length, kind, _flags, got_seq, _pid = NLMSG.unpack_from(data)
            if kind == NLMSG_ERROR and got_seq == seq:
                error = struct.unpack_from("=i", data, NLMSG.size)[0]
                if error:
                    raise OSError(-error, "nfnetlink_queue config: %s" % os.strerror(-error))
                return

    def packets(self, data):
        """The packet ids in one datagram read from the socket."""
        ids = []
        while len(data) >= NLMSG.size:
            length, kind, _flags, _seq, _pid = NLMSG.unpack_from(data)
            if length < NLMSG.size:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                header = _attrs(data[NLMSG.size + NFGEN.size:length]).get(NFQA_PACKET_HDR)
                if header:
                    ids.append(struct.unpack_from("!I", header)[0])
            data = data[(length + 3) & ~3:]
        return ids

    def verdict(self, packet_id, verdict):
        try:
            self.sock.send(_message(NFQNL_MSG_VERDICT, self.number,
                                    [_attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict,
                                                                         packet_id))]))
        except OSError:
            pass                # the packet went with its queue (rule removed, namespace gone)


def run(queue_number, delay, jitter, loss, seed=None):
    """Settle every packet of the queue until SIGTERM; the counts."""
    rng = random.Random(seed)
    queue = Queue(queue_number)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    due = []                    # heap of (monotonic time, sequence, packet id)
    counts = {"seen": 0, "dropped": 0}
    order = 0
    print("ready", flush=True)
    while not stop:
        now = time.monotonic()
        while due and due[0][0] <= now:
            queue.verdict(heapq.heappop(due)[2], NF_ACCEPT)
        wait = max(0.0, due[0][0] - now) if due else 0.5
        try:
            readable, _, _ = select.select([queue.sock], [], [], wait)
        except InterruptedError:
            continue
        if not readable:
            continue
        while True:
            try:
                data = queue.sock.recv(262144, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            now = time.monotonic()
            for packet_id in queue.packets(data):
                counts["seen"] += 1
                if loss and rng.random() < loss:
                    counts["dropped"] += 1
                    queue.verdict(packet_id, NF_DROP)
                    continue
                hold = max(0.0, delay + rng.uniform(-jitter, jitter)) / 1000.0
                order += 1
                heapq.heappush(due, (now + hold, order, packet_id))
    for _when, _order, packet_id in due:
        queue.verdict(packet_id, NF_ACCEPT)
    print(json.dumps(counts), flush=True)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="ms, each packet")
    parser.add_argument("--jitter", type=float, default=0.0, help="ms, +- uniform")
    parser.add_argument("--loss", type=float, default=0.0, help="probability, 0-1")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    run(args.queue, args.delay, args.jitter, args.loss, args.seed)


if __name__ == "__main__":
    sys.exit(main())
