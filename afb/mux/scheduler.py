"""Fair writer scheduling, sans-IO.

One writer per WebSocket drains this scheduler.  Session frames (PING, PONG,
WINDOW, GOAWAY, RST) jump the queue; stream frames keep their order within a
stream (OPEN before DATA before FIN) and streams take turns, deficit round
robin, a quantum of payload bytes each.  A batch becomes one WebSocket message,
so a bulk download delays an interactive stream by at most one batch.

What waits here is memory the peer makes us hold: every frame is charged to
an optional :class:`~afb.mux.budget.ByteBudget` (payload plus
:data:`FRAME_COST` for the frame's header and bookkeeping objects) and
released when the writer takes it, so the tunnel's relays can stop reading
their sockets while the peer does not read its WebSocket.
"""

from collections import deque

from afb.codec.frames import DATA, HEADER_SIZE, header
from afb.mux.budget import ByteBudget

DEFAULT_QUANTUM = 32 * 1024
#: What a queued frame costs besides its payload: the header, the frame's
#: list and its slot in a deque (about 130 bytes measured with sys.getsizeof).
FRAME_COST = 128


class FairScheduler:
    """Queues of frames waiting for the writer, and the order they leave in."""

    def __init__(self, quantum=DEFAULT_QUANTUM, budget=None):
        self.quantum = quantum
        self.budget = budget if budget is not None else ByteBudget()
        self._control = deque()   # encoded frames
        self._queues = {}         # stream id -> deque of [type, flags, payload]
        self._active = deque()    # stream ids with queued frames, in turn order
        self.queued_bytes = 0     # payload bytes waiting, all streams
        self.control_bytes = 0    # encoded control frames waiting

    def __bool__(self):
        return bool(self._control) or bool(self._active)

    def push_control(self, encoded_frame):
        """Queue an already encoded frame ahead of all stream data."""
        self._control.append(encoded_frame)
        cost = len(encoded_frame)
        self.control_bytes += cost
        self.budget.charge(cost + FRAME_COST)

    def push(self, stream_id, ftype, payload=b"", flags=0):
        """Queue a frame of ``stream_id`` behind that stream's earlier frames."""
        queue = self._queues.get(stream_id)
        if queue is None:
            queue = self._queues[stream_id] = deque()
        if not queue:
            self._active.append(stream_id)
        queue.append([ftype, flags, payload])
        self.queued_bytes += len(payload)
        self.budget.charge(len(payload) + FRAME_COST)

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
        self.budget.release(dropped + FRAME_COST * len(queue))
        try:
            self._active.remove(stream_id)
        except ValueError:
            pass
        return dropped

    def clear(self):
        """Forget everything queued (a resumed tunnel's dead WebSocket): budget released."""
        for stream_id in list(self._queues):
            self.drop(stream_id)
        self.budget.release(self.control_bytes + FRAME_COST * len(self._control))
        self._control.clear()
        self.control_bytes = 0

    def next_batch(self, limit):
        """Take frames for one message of about ``limit`` bytes: ``(parts, size)``.

        ``parts`` alternates headers and payloads (bytes or memoryviews) to
        send in order as one message.  The batch can exceed ``limit`` by at
        most one header; it is never empty while anything is queued.
        """
        parts = []
        size = 0
        done = 0                  # frames taken whole (each was charged FRAME_COST)
        control = self._control
        while control and size < limit:
            encoded = control.popleft()
            parts.append(encoded)
            size += len(encoded)
            done += 1
        self.control_bytes -= size
        payload_taken = size
        active = self._active
        queues = self._queues
        while active and size < limit:
            stream_id = active[0]
            queue = queues[stream_id]
            # Alone, a stream may fill the batch; with company it gets a quantum.
            turn = self.quantum if len(active) > 1 else limit
            turn = min(turn, limit - size)
            while queue and turn > 0:
                item = queue[0]
                ftype, flags, payload = item
                length = len(payload)
                if ftype == DATA and length > turn:
                    view = payload if isinstance(payload, memoryview) else memoryview(payload)
                    piece = view[:turn]
                    item[2] = view[turn:]
                    length = turn
                    payload = piece
                else:
                    queue.popleft()
                    done += 1
                parts.append(header(ftype, stream_id, length, flags))
                if length:
                    parts.append(payload)
                size += HEADER_SIZE + length
                turn -= HEADER_SIZE + length
                payload_taken += length
                self.queued_bytes -= length
            active.popleft()
            if queue:
                active.append(stream_id)
            else:
                del queues[stream_id]
        self.budget.release(payload_taken + FRAME_COST * done)
        return parts, size
