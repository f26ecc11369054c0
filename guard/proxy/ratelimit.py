"""Token buckets per client for ``rate_limit: {average, burst, by}`` (pure, no IO).

Each key (client IP, a header's value, or the tenant) has a bucket of ``burst`` tokens
refilled at ``average`` per second; a request takes one or is refused with the seconds until
one is back (the 429's ``Retry-After``). Buckets are refilled lazily when touched, so an
idle client costs nothing, and at most ``max_keys`` are kept (least recently used evicted:
a full bucket is what a new one would be, so evicting one that is full loses nothing, and
a client spraying keys cannot grow memory).

With ``workers > 1`` each worker limits its own share (``average / workers``, ``burst /
workers``): the kernel spreads connections evenly, so the sum approximates the configured
limit without a shared counter on the hot path.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from guard.config.model import RateLimitConfig

MAX_KEYS = 100_000


class TokenBuckets:
    __slots__ = ("_buckets", "average", "burst", "max_keys")

    def __init__(self, average: float, burst: float, max_keys: int = MAX_KEYS) -> None:
        if average <= 0 or burst < 1:
            raise ValueError("rate limit needs average > 0 and burst >= 1")
        self.average = average
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[bytes, list[float]] = OrderedDict()  # key -> [tokens, at]

    def take(self, key: bytes, now: float) -> float:
        """0.0 when the request may pass (a token taken), else seconds until one is back."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            buckets[key] = [self.burst - 1.0, now]
            return 0.0
        buckets.move_to_end(key)
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.average)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.average

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_header(seconds: float) -> bytes:
    """Whole seconds, rounded up, at least 1 (RFC 9110 10.2.3 takes an integer)."""
    return str(max(1, math.ceil(seconds))).encode()


class RouteLimiter:
    """One route's ``rate_limit``: the key of a request, and its bucket's verdict."""

    __slots__ = ("_header", "buckets", "config")

    def __init__(self, config: RateLimitConfig, workers: int = 1) -> None:
        self.config = config
        share = max(1, workers)
        self.buckets = TokenBuckets(config.average / share, max(1.0, config.burst / share))
        by = config.by
        self._header = by[len("header:") :].lower().encode() if by.startswith("header:") else None

    def check(self, client_ip: str, headers: list[tuple[bytes, bytes]]) -> float:
        """0.0 to pass, else the seconds until this client may send again."""
        wanted = self._header
        if wanted is None:
            key = client_ip.encode()
        else:
            # Requests without the header share one bucket: leaving it out is no way around
            # the limit.
            key = b""
            for name, value in headers:
                if name == wanted:
                    key = value
                    break
        return self.buckets.take(key, time.monotonic())
