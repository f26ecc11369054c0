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

What one token is depends on the listener: an http request, a tcp connection (checked once
routed, before Guard connects upstream; refused ones are closed), a udp datagram from the
client (see ``guard.proxy.udp_proxy``).

``by: tenant`` keys the bucket on the tenant that owns the route (the admin-API file it
came from, ``guard.admin.tenancy``), and the bucket is shared by every route of that tenant
that declares the same ``rate_limit``, on every listener: a tenant cannot multiply its
allowance by adding routes. Routes of no tenant (operator files, ``_admin.yaml``) share one
bucket among themselves.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from guard.admin.auth import ALL
from guard.admin.tenancy import owner_of
from guard.config.model import RateLimitConfig, RouteConfig

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


def worker_buckets(config: RateLimitConfig, workers: int) -> TokenBuckets:
    share = max(1, workers)
    return TokenBuckets(config.average / share, max(1.0, config.burst / share))


class RouteLimiter:
    """One route's ``rate_limit``: the key of a request, and its bucket's verdict.

    ``by: tenant`` limiters take ``tenant`` (the owner, "" for none) as their one key and
    ``shared``, the buckets of every route with the same limit."""

    __slots__ = ("_fixed", "_header", "buckets", "config", "tenant")

    def __init__(
        self,
        config: RateLimitConfig,
        workers: int = 1,
        *,
        tenant: str = "",
        shared: TokenBuckets | None = None,
    ) -> None:
        self.config = config
        self.tenant = tenant
        self.buckets = shared if shared is not None else worker_buckets(config, workers)
        by = config.by
        self._header = by[len("header:") :].lower().encode() if by.startswith("header:") else None
        self._fixed = tenant.encode() if by == "tenant" else None

    def check(self, client_ip: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> float:
        """0.0 to pass, else the seconds until this client may send again."""
        wanted = self._header
        if self._fixed is not None:
            key = self._fixed
        elif wanted is None:
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


def route_tenant(route: RouteConfig) -> str:
    """The tenant owning ``route`` ("" for none: operator files and ``_admin.yaml``)."""
    owner = owner_of(route.source)
    return "" if owner is None or owner == ALL else owner


class RateLimits:
    """A worker's rate limiters, rebuilt on every route reload.

    A route whose ``rate_limit`` (and tenant) did not change keeps its limiter, buckets and
    all, so a reload is no way to reset a limit."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._routes: dict[str, RouteLimiter] = {}
        self._tenant_buckets: dict[RateLimitConfig, TokenBuckets] = {}

    def build(self, routes: Iterable[RouteConfig]) -> dict[str, dict[str, RouteLimiter]]:
        """listener -> route name -> limiter, for the routes with a ``rate_limit``."""
        old, old_shared = self._routes, self._tenant_buckets
        self._routes, self._tenant_buckets = {}, {}
        out: dict[str, dict[str, RouteLimiter]] = {}
        for route in routes:
            config = route.rate_limit
            if config is None:
                continue
            tenant = route_tenant(route) if config.by == "tenant" else ""
            limiter = old.get(route.name)
            if limiter is None or limiter.config != config or limiter.tenant != tenant:
                shared = None
                if config.by == "tenant":
                    # (not ``or``: TokenBuckets has a length, and an empty one is falsy)
                    shared = self._tenant_buckets.get(config)
                    if shared is None:
                        shared = old_shared.get(config)
                    if shared is None:
                        shared = worker_buckets(config, self.workers)
                limiter = RouteLimiter(config, self.workers, tenant=tenant, shared=shared)
            if config.by == "tenant":
                self._tenant_buckets[config] = limiter.buckets
            self._routes[route.name] = limiter
            out.setdefault(route.listener, {})[route.name] = limiter
        return out
