"""LogLimiter: a few lines per key, then one summary line per interval."""

import logging

from afb.ratelog import LogLimiter


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _limiter(caplog, **kw):
    caplog.set_level(logging.INFO, logger="test.ratelog")
    clock = Clock()
    return LogLimiter(logging.getLogger("test.ratelog"), clock=clock, **kw), clock


def test_a_flood_from_one_key_gives_burst_lines_then_one_summary(caplog):
    limiter, clock = _limiter(caplog, interval=60, burst=3)
    for i in range(1000):
        limiter.info("192.0.2.7", "refused upgrade", "refused upgrade from %s (%d)", "192.0.2.7", i)
    assert len(caplog.records) == 3
    assert limiter.suppressed == 997
    clock.now += 61
    assert limiter.flush() == 1
    assert caplog.records[-1].getMessage() == \
        '192.0.2.7: 997 more lines like "refused upgrade" in the last 60 s'
    assert limiter.flush() == 0 and len(limiter) == 0


def test_keys_are_limited_separately_and_a_new_interval_starts_afresh(caplog):
    limiter, clock = _limiter(caplog, interval=10, burst=1)
    assert limiter.info("a", "x", "a1") and limiter.info("b", "x", "b1")
    assert not limiter.info("a", "x", "a2")
    clock.now += 11
    assert limiter.info("a", "x", "a3")          # the summary of a's interval comes first
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["a1", "b1", 'a: 1 more lines like "x" in the last 10 s', "a3"]


def test_the_key_table_is_bounded_and_held_lines_are_still_summarised(caplog):
    limiter, clock = _limiter(caplog, interval=60, burst=1, max_keys=16)
    for i in range(16):
        limiter.info("held%d" % i, "x", "first")
        limiter.info("held%d" % i, "x", "second")
    for i in range(1000):
        limiter.info("new%d" % i, "x", "line")
    assert len(limiter) <= 16
    clock.now += 61
    limiter.flush()
    summaries = [r for r in caplog.records if "more lines like" in r.getMessage()]
    assert len(summaries) == 16                   # nobody's held lines were lost


def test_a_disabled_level_costs_nothing(caplog):
    caplog.set_level(logging.WARNING, logger="test.ratelog")
    limiter = LogLimiter(logging.getLogger("test.ratelog"), burst=1)
    assert not limiter.info("k", "x", "hidden")
    assert len(limiter) == 0 and not caplog.records
