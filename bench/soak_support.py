"""The processes of bench/soak: an echo server, a relay to cut, and the app load.

    python bench/soak_support.py echo                      # prints its port
    python bench/soak_support.py relay LISTEN_PORT TARGET_PORT
    python bench/soak_support.py load --proxy PORT --target PORT --streams N ...

Each is one asyncio loop on plain sockets (no gevent, no afb), on 127.0.0.1
only, in a process of its own, so that 10,000 streams take 10,000
descriptors in each process rather than 40,000 in one:

* ``echo`` sends back what it gets; EOF is answered with EOF.
* ``relay`` forwards the tunnel's TCP connection between ``afb client`` and
  ``afb server``; bench/soak kills it (SIGKILL: the kernel closes both
  sides) to reset the tunnel, and starts a new one on the same port.
* ``load`` opens ``--streams`` SOCKS5 streams through the client to the echo
  server (at most ``--open-rate`` a second), then sends ``--chunk`` bytes on
  each every ``--interval`` seconds (spread evenly over the interval) and
  checks every byte that comes back against what was sent (each stream
  walks one random pattern from its own offset: a wrong byte is counted,
  not only a wrong total).  A stream that ends or fails before the load is
  told to stop is *lost*.  One JSON line a second on stdout; on SIGTERM it
  stops sending, waits up to ``--drain`` seconds for every byte to come
  back, prints a last line with ``"final": true`` and exits.
"""

import argparse
import asyncio
import json
import os
import resource
import signal
import struct
import sys
import time

LOOPBACK = "127.0.0.1"
PATTERN = os.urandom(1 << 16)
DOUBLE = PATTERN + PATTERN          # any slice of up to len(PATTERN) bytes from any offset


def raise_nofile():
    """Lift the soft descriptor limit to the hard one; -> the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# --- echo and relay ----------------------------------------------------------------

async def _pump(reader, writer):
    try:
        while True:
            data = await reader.read(262144)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.transport.abort()


async def _serve(port, handler):
    server = await asyncio.start_server(handler, LOOPBACK, port, backlog=4096,
                                        reuse_address=True, limit=262144)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def echo():
    async def handle(reader, writer):
        await _pump(reader, writer)
        writer.close()

    asyncio.run(_serve(0, handle))


def relay(listen_port, target_port):
    async def handle(reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, target_port)
        except OSError:
            writer.transport.abort()
            return
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        writer.close()
        up_writer.close()

    asyncio.run(_serve(listen_port, handle))


# --- the load ------------------------------------------------------------------------

class Totals:
    def __init__(self):
        self.opened = self.failed_open = self.lost = self.wrong = 0
        self.sent = self.received = 0
        self.reasons = {}
        self.stopping = False

    def lose(self, reason):
        self.lost += 1
        key = reason[:80]
        self.reasons[key] = self.reasons.get(key, 0) + 1


async def _socks_open(proxy_port, target_port):
    reader, writer = await asyncio.open_connection(LOOPBACK, proxy_port)
    writer.write(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", target_port))
    reply = await reader.readexactly(12)
    if reply[:2] != b"\x05\x00" or reply[3] != 0x00:
        writer.transport.abort()
        raise OSError("SOCKS5 reply %s" % reply.hex())
    return reader, writer


async def _stream(index, args, totals, stop):
    try:
        reader, writer = await asyncio.wait_for(_socks_open(args.proxy, args.target), 30)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
        totals.failed_open += 1
        totals.reasons["open: %s" % (exc or type(exc).__name__)] = \
            totals.reasons.get("open: %s" % (exc or type(exc).__name__), 0) + 1
        return
    totals.opened += 1
    start = (index * 7919) % len(PATTERN)
    sent = received = 0

    async def check():
        nonlocal received
        while True:
            data = await reader.read(len(PATTERN))
            if not data:
                raise EOFError("closed by the proxy")
            at = (start + received) % len(PATTERN)
            expected = DOUBLE[at:at + len(data)]
            if data != expected:
                totals.wrong += sum(a != b for a, b in zip(data, expected, strict=True))
            received += len(data)
            totals.received += len(data)

    checker = asyncio.ensure_future(check())
    try:
        await asyncio.sleep(args.interval * index / args.streams)      # spread the sends
        while not stop.is_set():
            at = (start + sent) % len(PATTERN)
            chunk = DOUBLE[at:at + args.chunk]
            writer.write(chunk)
            sent += len(chunk)
            totals.sent += len(chunk)
            await writer.drain()
            try:
                await asyncio.wait_for(stop.wait(), args.interval)
            except asyncio.TimeoutError:
                pass
            if checker.done():
                break
        if not checker.done():                      # the drain: every byte back
            deadline = time.monotonic() + args.drain
            while received < sent and not checker.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        if checker.done():
            exc = checker.exception()
            totals.lose("%s" % (exc or "stream ended"))
        elif received < sent:
            totals.lose("%d of %d bytes not back after the drain" % (sent - received, sent))
    except OSError as exc:
        totals.lose("%s" % exc)
    finally:
        checker.cancel()
        writer.transport.abort()


async def _load(args):
    totals = Totals()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    tasks = []

    async def report(final=False):
        line = {"opened": totals.opened, "failed_open": totals.failed_open,
                "lost": totals.lost, "wrong_bytes": totals.wrong, "sent": totals.sent,
                "received": totals.received, "reasons": totals.reasons}
        if final:
            line["final"] = True
        print(json.dumps(line), flush=True)

    async def reporter():
        while True:
            await asyncio.sleep(1.0)
            await report()

    ticker = asyncio.ensure_future(reporter())
    for index in range(args.streams):
        tasks.append(asyncio.ensure_future(_stream(index, args, totals, stop)))
        if index % 100 == 99:
            await asyncio.sleep(100 / args.open_rate)
        if stop.is_set():
            break
    await stop.wait()
    await asyncio.gather(*tasks, return_exceptions=True)
    ticker.cancel()
    await report(final=True)


def load(argv):
    parser = argparse.ArgumentParser(prog="soak_support.py load")
    parser.add_argument("--proxy", type=int, required=True)
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--streams", type=int, default=10000)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--open-rate", type=float, default=1000.0)
    parser.add_argument("--drain", type=float, default=30.0)
    args = parser.parse_args(argv)
    asyncio.run(_load(args))


def main(argv):
    raise_nofile()
    role = argv[0] if argv else ""
    if role == "echo":
        echo()
    elif role == "relay":
        relay(int(argv[1]), int(argv[2]))
    elif role == "load":
        load(argv[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
