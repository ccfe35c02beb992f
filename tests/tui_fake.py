"""A fake afb control socket for the dashboard's tests and bench/tui.

An asyncio Unix server speaking docs/control-protocol.rst with data the test
chooses: ``subscribe`` gets a snapshot at once and then one every
``interval`` seconds (shorter than the daemons' second, so tests run fast),
``close_stream`` removes the stream and answers ``ok`` (``not_found`` for an
unknown id), ``logs`` answers from ``records``, anything else is an error as
the spec says.  Every request received is kept in ``commands``.  ``stop()``
closes the listener and every connection, as a daemon that dies would;
``start()`` again is the daemon coming back on the same path.
"""

import asyncio
import json
import os

T0 = 1796170000.0


def stream(n, tunnel=1, role="client", age=10.0, up=None, down=None, state="open",
           host=None, user=None):
    return {"id": "%d/%d" % (tunnel, n), "tunnel": tunnel,
            "user": user if user is not None else ("user%d" % (n % 7) if role == "server"
                                                   else None),
            "app": None if role == "server" else "127.0.0.1:%d" % (40000 + n),
            "host": host or "host%04d.example" % n, "port": 443,
            "resolved": "192.0.2.%d:443" % (n % 250) if role == "server" else None,
            "opened": T0 - age, "age": age, "state": state,
            "bytes_up": up if up is not None else 100 * n,
            "bytes_down": down if down is not None else 1000 * n + 17,
            "rate_up": float(n % 13) * 10, "rate_down": float(n % 11) * 1000, "buffered": 0}


DEVICES = [{"device": "192.168.1.20", "streams": 5, "priority_streams": 1,
            "priority_streams_total": 14, "bytes_up": 2_500_000, "bytes_down": 812_000_000,
            "rate_up": 12000.0, "rate_down": 1_950_000.0, "queued_down": 0, "weight": 2.0,
            "rate_limit_down": 2_000_000, "rate_limit_up": 500_000, "throttled_down": 42.7,
            "throttled_up": 0.0, "throttled_down_total": 90.1, "throttled_up_total": 0.0,
            "refused_streams": 0},
           {"device": "kid-tablet", "streams": 0, "priority_streams": 0,
            "priority_streams_total": 0, "bytes_up": 1000, "bytes_down": 64000,
            "rate_up": 0.0, "rate_down": 0.0, "queued_down": 0, "weight": 0.5,
            "rate_limit_down": 0, "rate_limit_up": 0, "throttled_down": 0.0,
            "throttled_up": 0.0, "refused_streams": 3}]


def snapshot(streams, role="client", time=T0, alerts=(), users=None, devices=None):
    up = sum(s["rate_up"] for s in streams)
    down = sum(s["rate_down"] for s in streams)
    if users is None and role == "server":
        users = [{"user": "alice", "tunnels": 2, "streams": 7, "peak_streams": 31,
                  "bytes_up": 1000, "bytes_down": 200000, "rate_up": 10.0, "rate_down": 2000.0,
                  "today_bytes_up": 5000, "today_bytes_down": 900000,
                  "rate_limit_up": 0, "rate_limit_down": 1048576, "throttled_up": 0.0,
                  "throttled_down": 75.5, "queued_up": 0, "queued_down": 65536,
                  "refused_streams": 0},
                 {"user": "bob", "tunnels": 1, "streams": 0, "peak_streams": 3,
                  "bytes_up": 12345678, "bytes_down": 987654321, "rate_up": 0.0,
                  "rate_down": 0.0, "today_bytes_up": 0, "today_bytes_down": 1500}]
    return {"v": 1, "type": "snapshot", "time": time, "role": role, "version": "0.1.0",
            "pid": 1234, "started": time - 7384.5, "uptime": 7384.5,
            "listen": "0.0.0.0:8443" if role == "server" else "127.0.0.1:1080",
            "server_url": None if role == "server" else "wss://vpn.example/secret/",
            "process": {"rss": 43122688, "fds": 31, "cpu": 12.5, "cpu_percent": 3.1},
            "totals": {"tunnels": 1, "streams": len(streams), "streams_total": 5012,
                       "bytes_up": 123456789, "bytes_down": 987654321,
                       "rate_up": up, "rate_down": down},
            "errors": {}, "tunnels": [{"id": 1, "peer": "wss://vpn.example/secret/",
                                      "user": "alice", "state": "open", "rtt": 0.0213,
                                      "reconnects": 0, "streams": len(streams),
                                      "cipher": None, "bytes_up": 1, "bytes_down": 2,
                                      "rate_up": up, "rate_down": down, "uptime": 512.3}],
            "users": users or [], "alerts": list(alerts), "streams": streams,
            **({"devices": devices} if devices is not None and role == "client" else {})}


RECORDS = [{"time": T0 - 3, "level": "INFO", "logger": "afb.apps.client",
            "message": "tunnel up to wss://vpn.example/secret/"},
           {"time": T0 - 2, "level": "WARNING", "logger": "afb.transport.session",
            "message": "alert=bandwidth download 12.1 MB/s > 10 MB/s"},
           {"time": T0 - 1, "level": "DEBUG", "logger": "afb.mux", "message": "window grown"}]


class FakeDaemon:
    def __init__(self, path, streams=(), role="client", interval=0.1, alerts=(),
                 records=RECORDS, devices=None):
        self.path = str(path)
        self.streams = list(streams)
        self.role, self.interval, self.alerts = role, interval, list(alerts)
        self.devices = devices
        self.records = list(records)
        self.commands = []
        self.snapshots_sent = 0
        self.raw_lines = []          # lines sent as they are (bad JSON tests)
        self._server = None
        self._connections = set()

    def snapshot(self):
        return snapshot(self.streams, self.role, alerts=self.alerts, devices=self.devices)

    async def start(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._server = await asyncio.start_unix_server(self._serve, self.path)
        return self

    async def stop(self):
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        await self._server.wait_closed()
        if os.path.exists(self.path):
            os.unlink(self.path)

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()

    def send_raw(self, line):
        """Have the next beat send ``line`` (bytes) before its snapshot."""
        self.raw_lines.append(line)

    async def _serve(self, reader, writer):
        self._connections.add(writer)
        beat = None
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                request = json.loads(line)
                self.commands.append(request)
                reply = self._answer(request)
                if request.get("cmd") == "subscribe":
                    self._send(writer, {"v": 1, "type": "log", "records": self.records})
                    beat = asyncio.ensure_future(self._beat(writer))
                elif reply is not None:
                    self._send(writer, reply)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            return
        finally:
            self._connections.discard(writer)
            if beat is not None:
                beat.cancel()
            writer.close()

    def _answer(self, request):
        cmd, rid = request.get("cmd"), request.get("id")
        if cmd == "subscribe":
            return None
        if cmd == "close_stream":
            ids = [s["id"] for s in self.streams]
            if request.get("stream") not in ids:
                reply = {"v": 1, "type": "error", "error": "not_found",
                         "message": "no stream %s" % request.get("stream")}
            else:
                self.streams = [s for s in self.streams if s["id"] != request["stream"]]
                reply = {"v": 1, "type": "ok"}
        elif cmd == "logs":
            reply = {"v": 1, "type": "logs", "records": self.records}
        else:
            reply = {"v": 1, "type": "error", "error": "unknown_command",
                     "message": "unknown command %r" % cmd}
        if rid is not None:
            reply["id"] = rid
        return reply

    async def _beat(self, writer):
        while True:
            for line in self.raw_lines:
                writer.write(line)
            self.raw_lines.clear()
            self._send(writer, self.snapshot())
            self.snapshots_sent += 1
            await asyncio.sleep(self.interval)

    @staticmethod
    def _send(writer, message):
        writer.write(json.dumps(message).encode() + b"\n")
