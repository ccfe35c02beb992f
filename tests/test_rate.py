"""The token bucket and the fair shares of afb.mux.rate, on a fake clock (issue 13)."""

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afb.mux.rate import FLOOR, HEADROOM, TokenBucket, default_burst, fair_shares


def test_a_full_bucket_grants_its_burst_then_the_rate():
    bucket = TokenBucket(1000, 500, now=0.0)
    assert bucket.take(800, 0.0) == 500
    assert bucket.take(1, 0.0) == 0
    assert bucket.wait_time(100, 0.0) == pytest.approx(0.1)
    assert bucket.take(100, 0.1) == 100
    assert bucket.allowance(10.0) == 500          # never more than the burst


def test_a_debt_is_repaid_before_the_next_read():
    bucket = TokenBucket(1000, 500, now=0.0)
    bucket.spend(1500, 0.0)                       # a read larger than the tokens
    assert bucket.allowance(0.0) == -1000
    assert bucket.wait_time(100, 0.0) == pytest.approx(1.1)
    assert bucket.allowance(1.1) == pytest.approx(100)


def test_unlimited_never_waits():
    bucket = TokenBucket(0)
    assert bucket.take(10**9, 0.0) == 10**9
    assert bucket.wait_time(10**9, 0.0) == 0.0
    assert bucket.allowance(0.0) == float("inf")


def test_a_new_rate_keeps_the_saved_tokens_within_the_new_burst():
    bucket = TokenBucket(1000, 1000, now=0.0)
    bucket.configure(100, 50, now=1.0)
    assert bucket.allowance(1.0) == 50
    assert bucket.wait_time(50, 1.0) == 0.0
    assert default_burst(0) == 64 * 1024 and default_burst(10e6) == 1e6


@settings(max_examples=200, deadline=None)
@given(rate=st.integers(1000, 10**8), burst=st.integers(1, 10**6),
       steps=st.lists(st.tuples(st.floats(0, 0.5), st.integers(0, 300_000)), min_size=1,
                      max_size=60))
def test_whatever_is_asked_no_more_than_burst_plus_rate_times_time_is_granted(rate, burst, steps):
    bucket = TokenBucket(rate, burst, now=0.0)
    now = granted = 0.0
    for delay, wanted in steps:
        now += delay
        got = bucket.take(wanted, now)
        assert 0 <= got <= wanted
        granted += got
        assert granted <= burst + rate * now + 1e-6 * (burst + rate * now)
        wait = bucket.wait_time(wanted, now)
        assert wait >= 0
        # After the wait what was asked (up to the burst) is there.
        if wait:
            later = copy.copy(bucket)
            assert later.allowance(now + wait) >= min(wanted, burst) - 1e-6 * burst


@settings(max_examples=100, deadline=None)
@given(rate=st.integers(10_000, 10**7),
       reads=st.lists(st.integers(1, 256 * 1024), min_size=5, max_size=200))
def test_a_reader_that_waits_as_told_moves_at_the_rate(rate, reads):
    """spend() (a debt) + wait_time() as the relay uses them: the long-run rate is exact."""
    bucket = TokenBucket(rate, 64 * 1024, now=0.0)
    now = moved = 0.0
    for size in reads:
        now += bucket.wait_time(1, now)
        bucket.spend(size, now)
        moved += size
    now += bucket.wait_time(1, now)     # repay the last debt
    assert moved <= 64 * 1024 + rate * now + 1
    assert moved >= rate * now - 1     # never idle while it wanted to move


def test_equal_weights_split_the_cap():
    shares = fair_shares(1000, {"a": (1, 900, True, 0), "b": (1, 100, True, 0)})
    assert shares == {"a": 500, "b": 500}


def test_weights_two_to_one():
    shares = fair_shares(900, {"a": (2, 0, True, 0), "b": (1, 0, True, 0)})
    assert shares == {"a": 600, "b": 300}


def test_what_a_light_user_leaves_goes_to_the_busy_one():
    light = 100 * 1024
    shares = fair_shares(1e6, {"a": (1, 500_000, True, 0), "b": (1, light, False, 0)})
    assert shares["b"] == pytest.approx(light * HEADROOM)
    assert shares["a"] == pytest.approx(1e6 - light * HEADROOM)


def test_a_user_limit_below_its_share_leaves_the_rest():
    shares = fair_shares(1e6, {"a": (1, 0, True, 0), "b": (1, 0, True, 100_000)})
    assert shares == {"a": 900_000, "b": 100_000}


def test_an_idle_user_gets_a_newcomer_share():
    shares = fair_shares(1e6, {"a": (1, 1e6, True, 0), "idle": (1, 0, False, 0)})
    assert shares["a"] == 1e6
    assert shares["idle"] == 500_000


@settings(max_examples=200, deadline=None)
@given(cap=st.integers(100_000, 10**9), users=st.dictionaries(
    st.text("abcdef", min_size=1, max_size=3),
    st.tuples(st.integers(1, 10), st.integers(0, 10**9), st.booleans(), st.integers(0, 10**9)),
    min_size=1, max_size=8))
def test_the_active_shares_never_exceed_the_cap(cap, users):
    shares = fair_shares(cap, users)
    assert set(shares) == set(users)
    active = [k for k, (_w, used, more, _l) in users.items() if used or more]
    assert sum(shares[k] for k in active) <= cap * (1 + 1e-9)
    for key, (_w, _used, _more, limit) in users.items():
        assert shares[key] >= 0
        if limit:
            assert shares[key] <= limit * (1 + 1e-9)
    # Throttled users without a limit share equally per weight what they get.
    greedy = [k for k in active if users[k][2] and not users[k][3]]
    per_weight = {round(shares[k] / users[k][0], 3) for k in greedy}
    assert len(per_weight) <= 1
    assert FLOOR > 0


def test_a_lone_user_below_the_cap_may_use_all_of_it():
    """Nobody was throttled: the rest of the cap is shared too (work-conserving)."""
    assert fair_shares(1e9, {"a": (1, 5e8, False, 0)}) == {"a": 1e9}
    shares = fair_shares(1e9, {"a": (1, 1e8, False, 0), "b": (3, 1e8, False, 2e8)})
    assert shares["b"] == 2e8 and shares["a"] == pytest.approx(8e8)
