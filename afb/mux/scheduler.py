"""Fair writer scheduling, sans-IO.

One writer per WebSocket drains this scheduler.  Session frames (PING, PONG,
WINDOW, GOAWAY, RST) jump the queue; stream frames keep their order within a
stream (OPEN before DATA before FIN) and streams take turns, deficit round
robin, a quantum of payload bytes each.  A batch becomes one WebSocket message,
so a bulk download delays an interactive stream by at most one batch.
"""

from collections import deque

from afb.codec.frames import DATA, HEADER_SIZE, header

DEFAULT_QUANTUM = 32 * 1024


class FairScheduler:
    """Queues of frames waiting for the writer, and the order they leave in."""

    def __init__(self, quantum=DEFAULT_QUANTUM):
        self.quantum = quantum
        self._control = deque()   # encoded frames
        self._queues = {}         # stream id -> deque of [type, flags, payload]
        self._active = deque()    # stream ids with queued frames, in turn order
        self.queued_bytes = 0     # payload bytes waiting, all streams

    def __bool__(self):
        return bool(self._control) or bool(self._active)

    def push_control(self, encoded_frame):
        """Queue an already encoded frame ahead of all stream data."""
        self._control.append(encoded_frame)

    def push(self, stream_id, ftype, payload=b"", flags=0):
        """Queue a frame of ``stream_id`` behind that stream's earlier frames."""
        queue = self._queues.get(stream_id)
        if queue is None:
            queue = self._queues[stream_id] = deque()
        if not queue:
            self._active.append(stream_id)
        queue.append([ftype, flags, payload])
        self.queued_bytes += len(payload)

    def queued(self, stream_id):
        """Payload bytes still waiting for ``stream_id``."""
        queue = self._queues.get(stream_id)
        return sum(len(item[2]) for item in queue) if queue else 0

    def drop(self, stream_id):
        """Forget what ``stream_id`` still had queued (it was reset); return the bytes dropped."""
        queue = self._queues.pop(stream_id, None)
        if not queue:
            return 0
        dropped = sum(len(item[2]) for item in queue)
        self.queued_bytes -= dropped
        try:
            self._active.remove(stream_id)
        except ValueError:
            pass
        return dropped

    def next_batch(self, limit):
        """Take frames for one message of about ``limit`` bytes: ``(parts, size)``.

        ``parts`` alternates headers and payloads (bytes or memoryviews) to
        send in order as one message.  The batch can exceed ``limit`` by at
        most one header; it is never empty while anything is queued.
        """
        parts = []
        size = 0
        control = self._control
        while control and size < limit:
            encoded = control.popleft()
            parts.append(encoded)
            size += len(encoded)
        active = self._active
        queues = self._queues
        while active and size < limit:
            stream_id = active[0]
            queue = queues[stream_id]
            # Alone, a stream may fill the batch; with company it gets a quantum.
            budget = self.quantum if len(active) > 1 else limit
            budget = min(budget, limit - size)
            while queue and budget > 0:
                item = queue[0]
                ftype, flags, payload = item
                length = len(payload)
                if ftype == DATA and length > budget:
                    view = payload if isinstance(payload, memoryview) else memoryview(payload)
                    piece = view[:budget]
                    item[2] = view[budget:]
                    length = budget
                    payload = piece
                else:
                    queue.popleft()
                parts.append(header(ftype, stream_id, length, flags))
                if length:
                    parts.append(payload)
                size += HEADER_SIZE + length
                budget -= HEADER_SIZE + length
                self.queued_bytes -= length
            active.popleft()
            if queue:
                active.append(stream_id)
            else:
                del queues[stream_id]
        return parts, size
