"""Property tests of protocol.limits.TokenBucket: the caller passes the time in,
so hypothesis drives the clock (forwards, standing still, and backwards)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocol as p

rates = st.floats(0.01, 1000)
capacities = st.integers(1, 200)
starts = st.floats(0, 10**7)
#: Seconds between two calls; negative steps are a clock going backwards.
steps = st.lists(st.floats(-5, 5) | st.floats(0, 0.1) | st.just(0.0), max_size=80)
counts = st.sampled_from([1.0, 1.0, 1.0, 0.5, 2.0, 3.0])
#: The bucket forgives this much float dust per take (tokens), and no more.
DUST = 1e-6


@given(rates, capacities, starts, steps, st.lists(counts, min_size=80, max_size=80))
def test_never_more_than_capacity(
    rate: float, capacity: int, start: float, gaps: list[float], ns: list[float]
) -> None:
    bucket = p.TokenBucket(rate, capacity, start)
    now = start
    assert bucket.peek(now) == capacity  # starts full
    for gap, n in zip(gaps, ns, strict=False):
        now += gap
        before = bucket.peek(now)
        assert 0 <= before <= capacity
        wait = bucket.take(now, n)
        assert wait >= 0
        assert bucket.peek(now) == (before if wait else max(0.0, before - n))
        assert 0 <= bucket.peek(now) <= capacity


@given(rates, capacities, starts, st.lists(st.floats(0, 2) | st.just(0.0), max_size=120))
def test_accepted_count_is_bounded_by_capacity_plus_refill(
    rate: float, capacity: int, start: float, gaps: list[float]
) -> None:
    """Over any interval [t0, t1] the bucket lets through at most
    ``capacity + rate * (t1 - t0)`` messages."""
    bucket = p.TokenBucket(rate, capacity, start)
    now, accepted = start, []
    for gap in gaps:
        now += gap
        if bucket.take(now) == 0:
            accepted.append(now)
    for i, t0 in enumerate(accepted):
        for j in range(i, len(accepted)):
            count = j - i + 1
            assert count <= capacity + rate * (accepted[j] - t0) + DUST * count


@given(rates, capacities, starts, st.floats(0, 1), st.integers(0, 200), counts)
def test_retry_hint_is_exact(
    rate: float, capacity: int, start: float, refill: float, drained: int, n: float
) -> None:
    """A refused ``take`` says how long to wait; after exactly that wait it succeeds."""
    bucket = p.TokenBucket(rate, capacity, start)
    for _ in range(min(drained, capacity)):  # spend part or all of the tokens
        bucket.take(start)
    now = start + refill / rate
    wait = bucket.take(now, min(n, capacity))
    if wait:
        assert wait > 0
        assert bucket.take(now + wait, min(n, capacity)) == 0


@given(rates, capacities, starts, st.floats(0.001, 10**6), st.integers(0, 50))
def test_a_backwards_clock_never_mints_tokens(
    rate: float, capacity: int, start: float, back: float, spent: int
) -> None:
    bucket = p.TokenBucket(rate, capacity, start)
    for _ in range(min(spent, capacity)):
        bucket.take(start)
    left = bucket.peek(start)
    assert bucket.peek(start - back) == left
    assert (bucket.take(start - back) == 0) == (left >= 1)
    # Coming back to ``start`` refills nothing: that time was already counted.
    assert bucket.peek(start) == (left - 1 if left >= 1 else left)


@given(rates, capacities, starts, st.floats(0, 10**4))
def test_refill_is_continuous_up_to_capacity(
    rate: float, capacity: int, start: float, elapsed: float
) -> None:
    bucket = p.TokenBucket(rate, capacity, start)
    bucket.take(start, capacity)
    expected = min(capacity, rate * elapsed)
    assert bucket.peek(start + elapsed) == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_wait_takes_nothing() -> None:
    bucket = p.TokenBucket(1.0, 2, 0.0)
    assert bucket.wait(0.0, 2) == 0.0
    assert bucket.peek(0.0) == 2
    assert bucket.wait(0.0, 3) == 1.0  # more than capacity: the hint is still arithmetic


@pytest.mark.parametrize(("rate", "capacity"), [(0, 1), (-1, 1), (1, 0), (1, 0.5)])
def test_invalid_buckets(rate: float, capacity: float) -> None:
    with pytest.raises(ValueError, match="positive rate"):
        p.TokenBucket(rate, capacity, 0.0)


def test_rate_limit_defaults_follow_seed_5_13() -> None:
    # The whole minute's allowance at once, as the seed's 60-second window allows.
    assert p.DEFAULT_RATE_LIMITS["CATS"] == p.RateLimit(1000, 1000)
    assert p.DEFAULT_RATE_LIMITS["AFAD"] == p.RateLimit(1000, 1000)
    assert p.DEFAULT_RATE_LIMITS["DASHBOARD"] == p.RateLimit(100, 100)
    assert p.RateLimit(100, 100) == p.FALLBACK_RATE_LIMIT  # the seed's `?? 100`
    bucket = p.RateLimit(60, 5).bucket(10.0)
    assert (bucket.rate, bucket.capacity, bucket.peek(10.0)) == (1.0, 5, 5)
