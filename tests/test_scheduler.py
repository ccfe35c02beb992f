"""The writer's scheduler on bytes: new streams first, fairness among bulk ones, invariants."""

from hypothesis import given, settings
from hypothesis import strategies as st

from afb.codec import frames
from afb.mux.budget import ByteBudget
from afb.mux.scheduler import FairScheduler


def _decode(parts):
    message = b"".join(bytes(p) for p in parts)
    return [(t, s, bytes(p)) for t, _f, s, p in frames.iter_frames(message)]


def _drain(sched, limit):
    """Every batch until empty, decoded: a list of lists of (type, stream, payload)."""
    batches = []
    while sched:
        parts, size = sched.next_batch(limit)
        assert parts, "a batch is never empty while something is queued"
        batches.append(_decode(parts))
    return batches


def _bytes_per_stream(decoded):
    sent = {}
    for _t, stream_id, payload in decoded:
        sent[stream_id] = sent.get(stream_id, 0) + len(payload)
    return sent


def test_a_new_stream_goes_ahead_of_a_bulk_backlog():
    sched = FairScheduler(quantum=1000)
    sched.push(1, frames.DATA, b"B" * 1_000_000)
    sched.next_batch(16_000)                       # the bulk stream is old now
    sched.push(3, frames.DATA, b"i" * 10)
    decoded = _decode(sched.next_batch(16_000)[0])
    assert decoded[0] == (frames.DATA, 3, b"i" * 10)


def test_a_stream_that_sends_little_stays_ahead_of_bulk_streams():
    sched = FairScheduler(quantum=1000)
    for bulk in (1, 5, 7):
        sched.push(bulk, frames.DATA, bytes(10_000_000))
    sched.next_batch(64_000)
    for _ in range(50):                            # an echo: one small frame, then quiet
        sched.push(3, frames.DATA, b"k")
        decoded = _decode(sched.next_batch(64_000)[0])
        assert decoded[0] == (frames.DATA, 3, b"k")


def test_one_byte_frames_of_many_streams_all_leave_in_order():
    sched = FairScheduler(quantum=3)
    expected = {}
    for i in range(200):
        stream_id = 1 + 2 * (i % 37)
        byte = bytes([i % 256])
        sched.push(stream_id, frames.DATA, byte)
        expected[stream_id] = expected.get(stream_id, b"") + byte
    got = {}
    for batch in _drain(sched, 25):
        for _t, stream_id, payload in batch:
            got[stream_id] = got.get(stream_id, b"") + payload
    assert got == expected and sched.queued_bytes == 0


def test_bulk_streams_share_the_writer_evenly():
    sched = FairScheduler(quantum=4096)
    streams = [1, 3, 5, 7, 9]
    for stream_id in streams:
        sched.push(stream_id, frames.DATA, bytes(5_000_000))
    sent = {}
    for _ in range(200):
        for stream_id, count in _bytes_per_stream(_decode(sched.next_batch(64 * 1024)[0])).items():
            sent[stream_id] = sent.get(stream_id, 0) + count
    shares = [sent[s] for s in streams]
    assert max(shares) - min(shares) <= 2 * 4096, shares


def test_a_bulk_stream_keeps_most_of_the_writer_beside_a_stream_of_small_requests():
    sched = FairScheduler(quantum=1000)
    sched.push(1, frames.DATA, bytes(10_000_000))
    bulk = 0
    next_id = 3
    for _ in range(300):
        for _ in range(10):                        # ten small new streams before every batch
            sched.push(next_id, frames.DATA, bytes(500))
            next_id += 2
        per_stream = _bytes_per_stream(_decode(sched.next_batch(16 * 1024)[0]))
        assert per_stream.get(1, 0) >= 16 * 1024 - 10 * 510 - 1000
        bulk += per_stream.get(1, 0)


def test_under_overload_a_bulk_stream_still_gets_its_turn_every_round():
    sched = FairScheduler(quantum=1000)
    sched.push(1, frames.DATA, bytes(10_000_000))
    next_id = 3
    since_bulk = 0
    most_between = 0
    others = {}
    bulk = 0
    for _ in range(300):
        for _ in range(10):                        # more new data than the writer can take
            sched.push(next_id, frames.DATA, bytes(2000))
            next_id += 2
        per_stream = _bytes_per_stream(_decode(sched.next_batch(16 * 1024)[0]))
        for stream_id, count in per_stream.items():
            if stream_id != 1:
                others[stream_id] = others.get(stream_id, 0) + count
        if per_stream.get(1):
            bulk += per_stream[1]
            since_bulk = 0
        else:
            since_bulk += 1
            most_between = max(most_between, since_bulk)
    # A round visits every old stream once: the bulk stream is never passed over
    # for longer than it takes to serve each stream ahead of it one quantum.
    assert bulk >= max(others.values())
    assert most_between <= len(sched._old) * 1000 // (16 * 1024 - 10 * 1000) + 2


def test_a_new_stream_gets_one_quantum_then_waits_its_turn():
    sched = FairScheduler(quantum=1000)
    sched.push(1, frames.DATA, bytes(100_000))
    sched.next_batch(5000)
    sched.push(3, frames.DATA, bytes(100_000))
    decoded = _decode(sched.next_batch(3000)[0])
    assert [(s, len(p)) for _t, s, p in decoded] == [(3, 990), (1, 990), (3, 990)]


def test_a_stream_that_runs_dry_cannot_stay_new():
    sched = FairScheduler(quantum=1000)
    sched.push(1, frames.DATA, bytes(100_000))
    sched.next_batch(2000)
    sched.push(3, frames.DATA, bytes(500))          # new, drains within its quantum
    sched.next_batch(600)
    sched.push(3, frames.DATA, bytes(500))          # still on the old list: no new turn
    assert sched.new_turns == 2
    decoded = _decode(sched.next_batch(1200)[0])
    assert decoded[0][1] == 1


def test_alone_a_stream_fills_the_batch():
    sched = FairScheduler(quantum=1000)
    sched.push(1, frames.DATA, bytes(100_000))
    parts, size = sched.next_batch(50_000)
    assert size == 50_000


def test_control_frames_still_go_first():
    sched = FairScheduler(quantum=100)
    sched.push(3, frames.DATA, b"x")
    sched.push_control(frames.frame(frames.PING, 0, b"12345678"))
    assert [t for t, _s, _p in _decode(sched.next_batch(1000)[0])] == [frames.PING, frames.DATA]


def test_drop_takes_a_stream_off_its_list():
    budget = ByteBudget()
    sched = FairScheduler(quantum=100, budget=budget)
    sched.push(1, frames.DATA, bytes(1000))
    sched.push(3, frames.DATA, bytes(1000))
    sched.next_batch(150)
    assert sched.drop(1) > 0 and sched.drop(1) == 0
    assert [s for _t, s, _p in _drain(sched, 10_000)[0]] == [3]
    assert budget.used == 0 and not sched


_ops = st.lists(st.one_of(
    st.tuples(st.just("push"), st.integers(0, 6), st.sampled_from([frames.DATA, frames.FIN]),
              st.integers(0, 3000)),
    st.tuples(st.just("control"), st.integers(0, 40)),
    st.tuples(st.just("batch"), st.integers(1, 5000)),
    st.tuples(st.just("drop"), st.integers(0, 6)),
    st.tuples(st.just("prioritize"), st.integers(0, 6)),
), max_size=80)


@settings(max_examples=300, deadline=None)
@given(_ops, st.integers(1, 4000))
def test_invariants_order_every_byte_leaves_budget_released(ops, quantum):
    budget = ByteBudget()
    sched = FairScheduler(quantum=quantum, budget=budget)
    counter = 0
    pushed = {}       # stream -> list of (type, payload) pushed since its last drop
    got = {}

    def take(limit):
        parts, size = sched.next_batch(limit)
        assert parts
        assert size <= limit + frames.HEADER_SIZE + 40    # control frames are taken whole
        for ftype, stream_id, payload in _decode(parts):
            if stream_id:
                got.setdefault(stream_id, []).append((ftype, payload))

    for op in ops:
        if op[0] == "push":
            _k, index, ftype, length = op
            stream_id = 1 + 2 * index
            payload = bytes((counter + i) % 251 for i in range(length)) if ftype == frames.DATA \
                else b""
            counter += 1
            sched.push(stream_id, ftype, payload)
            pushed.setdefault(stream_id, []).append((ftype, payload))
        elif op[0] == "control":
            sched.push_control(frames.frame(frames.PING, 0, bytes(op[1])))
        elif op[0] == "batch":
            if sched:
                take(op[1])
        elif op[0] == "prioritize":
            sched.prioritize(1 + 2 * op[1])
        else:
            stream_id = 1 + 2 * op[1]
            sched.drop(stream_id)             # what it still had is gone: check what follows
            pushed.pop(stream_id, None)
            got.pop(stream_id, None)
    while sched:
        take(1 + quantum)
    assert sched.queued_bytes == 0 and sched.control_bytes == 0
    assert budget.used == 0
    for stream_id, items in pushed.items():
        want_data = b"".join(p for t, p in items if t == frames.DATA)
        got_data = b"".join(p for t, p in got.get(stream_id, []) if t == frames.DATA)
        assert got_data == want_data
        want_fins = [i for i, (t, _p) in enumerate(items) if t == frames.FIN]
        got_types = [t for t, p in got.get(stream_id, []) if t == frames.FIN or p]
        assert got_types.count(frames.FIN) == len(want_fins)
        # A FIN leaves after every byte pushed before it.
        if want_fins:
            before = sum(len(p) for t, p in items[:want_fins[-1]] if t == frames.DATA)
            seen = 0
            for t, p in got[stream_id]:
                if t == frames.FIN:
                    last_fin_at = seen
                seen += len(p)
            assert last_fin_at == before


def test_a_priority_stream_goes_first_even_when_it_sends_in_bulk():
    sched = FairScheduler(quantum=1000)
    sched.push(1, frames.DATA, b"B" * 100_000)
    sched.push(3, frames.DATA, b"P" * 100_000)
    sched.prioritize(3)                            # already queued: moved to the front
    first = _bytes_per_stream(_decode(sched.next_batch(16_000)[0]))
    assert first.get(3, 0) >= 15_000 and not first.get(1)
    sched.push(5, frames.DATA, b"n" * 10)          # a new stream waits for the priority one
    assert 5 not in _bytes_per_stream(_decode(sched.next_batch(16_000)[0]))


def test_a_new_priority_stream_leaves_ahead_of_new_ones_and_the_mark_ends_with_fin():
    sched = FairScheduler(quantum=1000)
    sched.prioritize(7)
    sched.push(5, frames.DATA, b"n")
    sched.push(7, frames.DATA, b"p")
    decoded = _decode(sched.next_batch(16_000)[0])
    assert [s for _t, s, _p in decoded] == [7, 5]
    sched.push(7, frames.FIN)
    sched.next_batch(16_000)
    assert not sched._priority                     # no leak once the stream is done
    sched.prioritize(9)
    sched.push(9, frames.DATA, b"x" * 50)
    assert sched.drop(9) == 50 and not sched._priority and not sched


def test_priority_streams_share_their_list_fairly():
    sched = FairScheduler(quantum=1000)
    for stream_id in (3, 5):
        sched.prioritize(stream_id)
        sched.push(stream_id, frames.DATA, bytes(50_000))
    sched.push(1, frames.DATA, bytes(50_000))
    sent = _bytes_per_stream(_decode(sched.next_batch(20_000)[0]))
    assert 1 not in sent and abs(sent[3] - sent[5]) <= 1000 + frames.HEADER_SIZE
    batches = _drain(sched, 20_000)
    assert sum(_bytes_per_stream(b).get(1, 0) for b in batches) == 50_000
