"""Consistent-hash ring with virtual nodes.

Every backend owns ``replicas`` points on a 64-bit ring; a key belongs to the first point
at or after its own hash. Adding a backend therefore only takes keys from the arcs its new
points land on (~1/(N+1) of all keys) and removing one only hands its own keys to the
neighbours: everything else stays put, which is the whole point of hashing for cache or
session affinity.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from hashlib import blake2b

from guard.balancing.backend import Backend

DEFAULT_REPLICAS = 160


def hash64(data: bytes) -> int:
    """Stable 64-bit hash of ``data``.

    Never Python's ``hash()``: it is salted per process, and every worker (and every
    restart) must map a key to the same backend.
    """
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """An immutable ring; rebuild it when membership changes (it is cheap: 160 hashes per
    backend, done off the request path)."""

    __slots__ = ("_distinct", "_owners", "_points", "_size")

    def __init__(self, backends: Sequence[Backend], replicas: int = DEFAULT_REPLICAS) -> None:
        if replicas < 1:
            raise ValueError("replicas must be >= 1")
        pairs: list[tuple[int, int, Backend]] = []
        for order, backend in enumerate(backends):
            prefix = backend.name.encode()
            for i in range(replicas):
                # ``order`` breaks (astronomically unlikely) point collisions
                # deterministically instead of comparing Backend objects.
                pairs.append((hash64(b"%s#%d" % (prefix, i)), order, backend))
        pairs.sort(key=lambda p: (p[0], p[1]))
        self._points: list[int] = [p[0] for p in pairs]
        self._owners: list[Backend] = [p[2] for p in pairs]
        self._size = len(pairs)
        self._distinct = len({id(b) for b in backends})

    def __len__(self) -> int:
        return self._size

    def owner(self, key_hash: int) -> Backend | None:
        """The backend owning ``key_hash``, ignoring availability (None on an empty ring)."""
        if not self._size:
            return None
        i = bisect_left(self._points, key_hash)
        return self._owners[i if i < self._size else 0]

    def lookup(self, key_hash: int) -> Backend | None:
        """The first *available* backend clockwise from ``key_hash``.

        When the owner is down its keys spread over the following distinct backends the
        same way removal would spread them, so they come back home once it recovers.
        """
        size = self._size
        if not size:
            return None
        i = bisect_left(self._points, key_hash)
        if i == size:
            i = 0
        owners = self._owners
        backend = owners[i]
        if backend.available:
            return backend
        return self._walk(i, backend)

    def _walk(self, i: int, first: Backend) -> Backend | None:
        # Slow path, only taken while a backend is unavailable: the set lets us stop after
        # seeing every distinct backend instead of scanning all replicas*N points.
        owners = self._owners
        size = self._size
        seen = {id(first)}
        distinct = self._distinct
        for _ in range(size - 1):
            i += 1
            if i == size:
                i = 0
            backend = owners[i]
            if id(backend) in seen:
                continue
            if backend.available:
                return backend
            seen.add(id(backend))
            if len(seen) >= distinct:
                break
        return None
