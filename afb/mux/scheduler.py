"""Fair writer scheduling, sans-IO: interactive streams ahead of bulk ones.

One writer per WebSocket drains this scheduler.  Session frames (PING, PONG,
WINDOW, GOAWAY, RST) jump the queue; stream frames keep their order within a
stream (OPEN before DATA before FIN).  Streams take turns as in fq_codel's
flow queueing (RFC 8290, section 4), deficit round robin with two lists:

* a stream that had nothing queued and was on no list becomes **new**: it
  goes to the tail of the *new* list with a credit of one quantum.  The
  new list is served before the old one, so the first bytes of a request,
  a keystroke or an echo leave ahead of every bulk stream's backlog;
* a new stream that used its quantum moves to the tail of the *old* list;
  one that ran dry while old streams wait moves there too (empty), so a
  stream cannot stay "new" by sending in small bursts;
* old streams take turns, deficit round robin: a stream whose credit is
  used up gets one more quantum and goes to the tail.  An old stream found
  empty on its turn leaves the lists; its next frame makes it new again.

**Priority streams** (:meth:`FairScheduler.prioritize`: the client's
``[qos] priority_ports`` / ``priority_hosts``, e.g. SSH, DNS, games) have a
third list served before both: strictly first, round robin among
themselves a quantum each.  A bulk transfer to a priority destination
therefore takes the whole tunnel while it sends -- what the admin asked for
by naming it (README: priority rules).  The mark ends with the stream's
FIN or RST.

A stream alone on the lists may fill the whole batch.  Every stream on the
old list is visited once per round, so a bulk stream always progresses (at
least a quantum per round of the others).  The two lists cost little:
in-process, 16 KiB frames, 15-25 us more per MiB than the single round
robin before them (under 1 % of the two daemons' ~2.9 s of CPU per GiB
downloaded).  A batch becomes one WebSocket message; how soon an
interactive frame leaves therefore depends on the size of the batch being
written and on what the kernel still holds unsent below it (the writer
keeps both small on slow links: see :mod:`afb.transport.frame_writer`).

What waits here is memory the peer makes us hold: every frame is charged to
an optional :class:`~afb.mux.budget.ByteBudget` (payload plus
:data:`FRAME_COST` for the frame's header and bookkeeping objects) and
released when the writer takes it, so the tunnel's relays can stop reading
their sockets while the peer does not read its WebSocket.
"""

from collections import deque

from afb.codec.frames import DATA, FIN, HEADER_SIZE, RST, header
from afb.mux.budget import ByteBudget

DEFAULT_QUANTUM = 32 * 1024
#: What a queued frame costs besides its payload: the header, the frame's
#: list and its slot in a deque (about 130 bytes measured with sys.getsizeof).
FRAME_COST = 128

_IDLE, _NEW, _OLD, _URGENT = 0, 1, 2, 3
#: Frames after which a stream sends nothing more: its priority mark ends.
_LAST = (FIN, RST)


class _Flow:
    """One stream's queued frames ([type, flags, payload] lists) and its turn state."""

    __slots__ = ("frames", "credit", "state")

    def __init__(self):
        self.frames = deque()
        self.credit = 0
        self.state = _IDLE


class FairScheduler:
    """Queues of frames waiting for the writer, and the order they leave in."""

    def __init__(self, quantum=DEFAULT_QUANTUM, budget=None):
        self.quantum = quantum
        self.budget = budget if budget is not None else ByteBudget()
        self._control = deque()   # encoded frames
        self._flows = {}          # stream id -> _Flow (on a list, or with frames queued)
        self._new = deque()       # stream ids: new streams, served first
        self._old = deque()       # stream ids: the others, deficit round robin
        self._urgent = deque()    # stream ids: priority streams, served before both
        self._priority = set()    # stream ids marked by prioritize(), until their FIN/RST
        self.queued_bytes = 0     # payload bytes waiting, all streams
        self.control_bytes = 0    # encoded control frames waiting
        self.new_turns = 0        # times a stream was let in through the new list
        self._frames = 0          # stream frames waiting

    def __bool__(self):
        return self._frames > 0 or bool(self._control)

    def push_control(self, encoded_frame):
        """Queue an already encoded frame ahead of all stream data."""
        self._control.append(encoded_frame)
        cost = len(encoded_frame)
        self.control_bytes += cost
        self.budget.charge(cost + FRAME_COST)

    def push(self, stream_id, ftype, payload=b"", flags=0):
        """Queue a frame of ``stream_id`` behind that stream's earlier frames."""
        flow = self._flows.get(stream_id)
        if flow is None:
            flow = self._flows[stream_id] = _Flow()
        if flow.state == _IDLE:
            flow.credit = self.quantum
            if stream_id in self._priority:
                flow.state = _URGENT
                self._urgent.append(stream_id)
            else:
                flow.state = _NEW
                self._new.append(stream_id)
                self.new_turns += 1
        flow.frames.append([ftype, flags, payload])
        self._frames += 1
        self.queued_bytes += len(payload)
        self.budget.charge(len(payload) + FRAME_COST)

    def prioritize(self, stream_id):
        """Send ``stream_id``'s frames ahead of every other stream's until its FIN or RST."""
        self._priority.add(stream_id)
        flow = self._flows.get(stream_id)
        if flow is not None and flow.state in (_NEW, _OLD):
            self._list(flow.state).remove(stream_id)
            flow.state = _URGENT
            self._urgent.append(stream_id)

    def _list(self, state):
        return self._new if state == _NEW else self._old if state == _OLD else self._urgent

    def queued(self, stream_id):
        """Payload bytes still waiting for ``stream_id``."""
        flow = self._flows.get(stream_id)
        return sum(len(item[2]) for item in flow.frames) if flow else 0

    def drop(self, stream_id):
        """Forget what ``stream_id`` still had queued (it was reset); return the bytes dropped."""
        self._priority.discard(stream_id)
        flow = self._flows.pop(stream_id, None)
        if flow is None:
            return 0
        if flow.state != _IDLE:
            self._list(flow.state).remove(stream_id)
        queue = flow.frames
        dropped = sum(len(item[2]) for item in queue)
        self.queued_bytes -= dropped
        self._frames -= len(queue)
        self.budget.release(dropped + FRAME_COST * len(queue))
        return dropped

    def _next_turn(self, flows_list, stream_id, flow):
        """``stream_id``, at the head of ``flows_list``, ran dry or used its turn up."""
        flows_list.popleft()
        if not flow.frames:
            if flows_list is self._new and self._old:
                flow.state = _OLD     # ran dry while others wait: no new turn soon
                self._old.append(stream_id)
            else:
                flow.state = _IDLE
                del self._flows[stream_id]
            return
        # Turn used up: one more quantum, at the tail of the old list (a
        # priority stream: of its own list).
        flow.credit += self.quantum
        if flows_list is self._urgent:
            self._urgent.append(stream_id)
        else:
            flow.state = _OLD
            self._old.append(stream_id)

    def clear(self):
        """Forget everything queued (a resumed tunnel's dead WebSocket): budget released."""
        priority = set(self._priority)          # the streams go on, on the next link
        for stream_id in list(self._flows):
            self.drop(stream_id)
        self._priority = priority
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
        released = size + FRAME_COST * done
        done = 0
        payload_taken = 0
        new = self._new
        old = self._old
        urgent = self._urgent
        priority = self._priority
        flows = self._flows
        quantum = self.quantum
        while size < limit:
            if urgent:
                flows_list = urgent
            elif new:
                flows_list = new
            elif old:
                flows_list = old
            else:
                break
            stream_id = flows_list[0]
            flow = flows[stream_id]
            queue = flow.frames
            if not queue or flow.credit <= 0:
                self._next_turn(flows_list, stream_id, flow)
                continue
            # Alone on the lists, a stream may fill the batch.
            alone = len(new) + len(old) + len(urgent) == 1
            turn = limit - size if alone else min(flow.credit, limit - size)
            spent = 0
            while queue and spent < turn:
                item = queue[0]
                ftype, flags, payload = item
                length = len(payload)
                room = turn - spent - HEADER_SIZE
                if room < 1:
                    room = 1
                if ftype == DATA and length > room:
                    view = payload if isinstance(payload, memoryview) else memoryview(payload)
                    item[2] = view[room:]
                    payload = view[:room]
                    length = room
                else:
                    queue.popleft()
                    done += 1
                    if priority and ftype in _LAST:
                        priority.discard(stream_id)
                parts.append(header(ftype, stream_id, length, flags))
                if length:
                    parts.append(payload)
                size += HEADER_SIZE + length
                spent += HEADER_SIZE + length
                payload_taken += length
            credit = flow.credit - spent
            if alone and credit <= 0:
                # It had the writer to itself: a fresh quantum, and not new any more.
                credit = quantum
                if flows_list is new:
                    new.popleft()
                    flow.state = _OLD
                    old.append(stream_id)
            flow.credit = credit
        self._frames -= done
        self.queued_bytes -= payload_taken
        self.budget.release(released + payload_taken + FRAME_COST * done)
        return parts, size
