"""Token buckets for rate_limit, the pure rules."""

from __future__ import annotations

import pytest

from guard.proxy.ratelimit import TokenBuckets, retry_after_header


def test_burst_then_average() -> None:
    b = TokenBuckets(average=10, burst=5)
    assert [b.take(b"a", 0.0) for _ in range(5)] == [0.0] * 5
    wait = b.take(b"a", 0.0)
    assert wait == pytest.approx(0.1)  # one token per 1/10 s
    assert b.take(b"a", 0.05) == pytest.approx(0.05)
    assert b.take(b"a", 0.1) == 0.0
    assert b.take(b"b", 0.1) == 0.0  # another client has its own bucket


def test_refill_is_capped_at_burst() -> None:
    b = TokenBuckets(average=1, burst=3)
    for _ in range(3):
        b.take(b"a", 0.0)
    # An hour idle gives back burst tokens, not 3600.
    assert [b.take(b"a", 3600.0) for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert b.take(b"a", 3600.0) > 0


def test_keys_are_bounded() -> None:
    b = TokenBuckets(average=1, burst=1, max_keys=3)
    for key in (b"a", b"b", b"c", b"d"):
        b.take(key, 0.0)
    assert len(b) == 3
    assert b.take(b"a", 0.0) == 0.0  # evicted: a new, full bucket


def test_retry_after_is_whole_seconds() -> None:
    assert retry_after_header(0.01) == b"1"
    assert retry_after_header(1.2) == b"2"
    with pytest.raises(ValueError):
        TokenBuckets(average=0, burst=1)
