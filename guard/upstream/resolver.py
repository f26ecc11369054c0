"""Backend host name resolution with a TTL-respecting cache.

Lookups go through aiodns (c-ares), which also answers from /etc/hosts, so resolving never
blocks the event loop on a thread-pool ``getaddrinfo``. Answers are cached for their
record TTL clamped to ``[min_ttl, max_ttl]``; concurrent lookups of one name share a
single query so a burst of new connections does not become a burst of DNS traffic.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiodns
from cachetools import TLRUCache

from guard.errors import UpstreamConnectFailed


class ResolveError(UpstreamConnectFailed):
    """A backend host name could not be resolved.

    A subclass of UpstreamConnectFailed so, if nobody handles it, the client gets the
    same 502 as for any other failure to reach the backend.
    """

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason
        super().__init__(f"cannot resolve {host}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Default pickling would call __init__(message) and fail; keep it picklable for
        # multiprocessing workers.
        return (type(self), (self.host, self.reason))


@functools.lru_cache(maxsize=1024)
def ip_literal(host: str) -> str | None:
    """``host`` normalised if it is an IPv4/IPv6 literal (brackets allowed), else None.

    Memoised because backend hosts are a small fixed set and this runs per connection.
    """
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return None
    return candidate


class _Entry:
    __slots__ = ("addresses", "ttl")

    def __init__(self, addresses: list[str], ttl: float) -> None:
        self.addresses = addresses
        self.ttl = ttl


def _entry_expiry(_host: str, entry: _Entry, now: float) -> float:
    return now + entry.ttl


class Resolver:
    """Resolves and caches backend host names. One per event loop / worker process.

    ``timeout``/``tries`` go to c-ares (per-try timeout in seconds, attempts per server);
    the defaults keep a dead DNS server from stalling a connect for long.
    """

    __slots__ = (
        "_cache",
        "_default_ttl",
        "_dns",
        "_dns_options",
        "_inflight",
        "_loop",
        "_max_ttl",
        "_min_ttl",
        "_rotation",
        "lookups",
    )

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        min_ttl: float = 1.0,
        max_ttl: float = 300.0,
        default_ttl: float = 30.0,
        timer: Callable[[], float] = time.monotonic,
        maxsize: int = 4096,
        timeout: float = 2.0,
        tries: int = 2,
        nameservers: Sequence[str] | None = None,
    ) -> None:
        if not 0 < min_ttl <= max_ttl:
            raise ValueError("need 0 < min_ttl <= max_ttl")
        self._loop = loop
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._default_ttl = default_ttl
        self._cache: TLRUCache[str, _Entry] = TLRUCache(
            maxsize=maxsize, ttu=_entry_expiry, timer=timer
        )
        self._dns: aiodns.DNSResolver | None = None
        self._dns_options: dict[str, Any] = {"timeout": timeout, "tries": tries}
        if nameservers:
            self._dns_options["nameservers"] = list(nameservers)
        self._inflight: dict[str, asyncio.Future[list[str]]] = {}
        # Per-address-set rotation counters, keyed by the first address (a str we already
        # hold, so no per-call allocation); bounded by clearing, see pick_address.
        self._rotation: dict[str, int] = {}
        self.lookups = 0  # DNS queries actually sent; for metrics and tests

    # ------------------------------------------------------------------------- lookups

    def cached(self, host: str) -> list[str] | None:
        """Addresses for ``host`` without waiting: IP literals, or a fresh cache entry.

        The returned list is shared with the cache: do not mutate it.
        """
        entry = self._cache.get(host)
        if entry is not None:
            return entry.addresses
        literal = ip_literal(host)
        return [literal] if literal is not None else None

    async def resolve(self, host: str) -> list[str]:
        """Addresses for ``host``, IPv4 first then IPv6. Raises ResolveError."""
        addresses = self.cached(host)
        if addresses is not None:
            return addresses
        pending = self._inflight.get(host)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(host), loop=self._loop)
            self._inflight[host] = pending
            pending.add_done_callback(functools.partial(self._lookup_done, host))
        # shield: one caller giving up (connect timeout, client gone) must not cancel the
        # lookup the other waiters share.
        return await asyncio.shield(pending)

    def _lookup_done(self, host: str, fut: asyncio.Future[list[str]]) -> None:
        if self._inflight.get(host) is fut:
            del self._inflight[host]
        if not fut.cancelled():
            # Mark the exception retrieved: if every waiter was cancelled nobody else will,
            # and asyncio would log "exception was never retrieved".
            fut.exception()

    async def _lookup(self, host: str) -> list[str]:
        dns = self._resolver()
        self.lookups += 1
        try:
            result = await dns.getaddrinfo(host, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM)
        except aiodns.error.DNSError as exc:
            raise ResolveError(host, _reason(exc)) from None
        addresses, ttl = self._parse(result.nodes)
        if not addresses:
            raise ResolveError(host, "no addresses")
        self._cache[host] = _Entry(addresses, ttl)
        return addresses

    def _parse(self, nodes: Sequence[Any]) -> tuple[list[str], float]:
        v4: list[str] = []
        v6: list[str] = []
        ttl: int | None = None
        for node in nodes:
            raw = node.addr[0]
            address = raw.decode() if isinstance(raw, bytes) else str(raw)
            if node.family == socket.AF_INET:
                if address not in v4:
                    v4.append(address)
            elif node.family == socket.AF_INET6 and address not in v6:
                v6.append(address)
            # pycares 5 reports ttl=0 for /etc/hosts answers (there is no record TTL), so
            # 0 means "unknown" here; the cache lifetime is the smallest real TTL.
            if node.ttl and node.ttl > 0 and (ttl is None or node.ttl < ttl):
                ttl = node.ttl
        # IPv4 first: many container networks publish AAAA records that are not routable.
        v4.extend(v6)
        lifetime = self._default_ttl if ttl is None else float(ttl)
        return v4, min(max(lifetime, self._min_ttl), self._max_ttl)

    def _resolver(self) -> aiodns.DNSResolver:
        # Lazy: DNSResolver binds to a loop at construction, and the Resolver is usually
        # built before the worker's loop runs.
        loop = self._loop or asyncio.get_running_loop()
        dns = self._dns
        if dns is None or dns.loop is not loop:
            # A loop change (tests, worker restart) needs a channel bound to the new loop;
            # the old one cleans up its sockets when collected.
            dns = self._dns = aiodns.DNSResolver(loop=loop, **self._dns_options)
        return dns

    async def close(self) -> None:
        """Cancel pending queries and release the c-ares channel."""
        dns, self._dns = self._dns, None
        if dns is not None:
            await dns.close()

    def invalidate(self, host: str | None = None) -> None:
        """Forget one cached name, or all of them (e.g. after a connect failure)."""
        if host is None:
            self._cache.clear()
        else:
            self._cache.pop(host, None)

    # ------------------------------------------------------------------------ selection

    def pick_address(self, addresses: Sequence[str]) -> str:
        """Rotate over ``addresses`` so a multi-address name spreads new connections.

        The counter is kept per address set (keyed by its first address) so interleaved
        picks for different hosts do not lock each host onto one address.
        """
        n = len(addresses)
        if n == 1:
            return addresses[0]
        if not n:
            raise ValueError("no addresses to pick from")
        rotation = self._rotation
        first = addresses[0]
        i = rotation.get(first)
        if i is None:
            i = 0
            if len(rotation) >= 4096:
                rotation.clear()  # bound memory if names churn through many address sets
        elif i >= n:
            i = 0  # another set sharing this first address was longer
        rotation[first] = i + 1 if i + 1 < n else 0
        return addresses[i]


def _reason(exc: Exception) -> str:
    # aiodns raises DNSError(code, message); keep the readable message.
    args = exc.args
    if len(args) >= 2 and isinstance(args[1], str):
        return args[1]
    return str(exc) or type(exc).__name__
