"""Load-balancing policies.

``pick`` runs once per request, so the non-hash policies do no allocation there: they keep
an immutable tuple of backends built in ``set_backends`` and walk it by index. Every policy
skips backends whose ``available`` is false and returns None when none is left, which the
proxy answers with 503.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from guard.balancing.backend import Backend
from guard.balancing.ring import DEFAULT_REPLICAS, HashRing, hash64

Headers = list[tuple[bytes, bytes]]
KeyExtractor = Callable[[Headers, str, bytes], bytes | None]

BALANCE_NAMES = ("round_robin", "least_request", "p2c", "hash")


class Balancer(ABC):
    """Chooses the backend for one request."""

    __slots__ = ()

    # Whether pick() looks at the headers: when not, the proxy passes none and a plain
    # request's header list is never built.
    reads_headers = False

    @abstractmethod
    def pick(self, headers: Headers, client_ip: str, path: bytes) -> Backend | None:
        """Choose a backend; ``headers`` have lowercase names. None when none is available."""

    @abstractmethod
    def set_backends(self, backends: Sequence[Backend]) -> None:
        """Replace the membership (discovery, scaling, config reload)."""

    @property
    @abstractmethod
    def backends(self) -> tuple[Backend, ...]:
        """The current membership, available or not."""


class _Listed(Balancer):
    """Backends held as a tuple and its length (read on every pick)."""

    __slots__ = ("_backends", "_n")

    def __init__(self, backends: Sequence[Backend] = ()) -> None:
        self._backends: tuple[Backend, ...] = ()
        self._n = 0
        self.set_backends(backends)

    @property
    def backends(self) -> tuple[Backend, ...]:
        return self._backends

    def set_backends(self, backends: Sequence[Backend]) -> None:
        self._backends = tuple(backends)
        self._n = len(self._backends)


class _Rotating(_Listed):
    """Backends in a fixed order with a moving start position."""

    __slots__ = ("_next",)

    def __init__(self, backends: Sequence[Backend] = ()) -> None:
        self._next = 0
        super().__init__(backends)

    def set_backends(self, backends: Sequence[Backend]) -> None:
        super().set_backends(backends)
        # Keep the position rather than restarting at 0, so frequent membership updates
        # do not keep sending the next request to the first backend.
        self._next = self._next % self._n if self._n else 0


class RoundRobin(_Rotating):
    """Each available backend in turn."""

    __slots__ = ()

    def pick(self, headers: Headers, client_ip: str, path: bytes) -> Backend | None:
        n = self._n
        backends = self._backends
        i = self._next
        left = n
        while left:
            backend = backends[i]
            i += 1
            if i == n:
                i = 0
            if backend.available:
                self._next = i
                return backend
            left -= 1
        return None


class LeastRequest(_Rotating):
    """The available backend with the fewest requests in flight.

    The scan starts just after the previous pick, so among equally loaded backends the
    first one found rotates: equal load spreads round-robin instead of piling on index 0.
    """

    __slots__ = ()

    def pick(self, headers: Headers, client_ip: str, path: bytes) -> Backend | None:
        n = self._n
        backends = self._backends
        i = self._next
        best: Backend | None = None
        best_i = 0
        best_load = 0
        left = n
        while left:
            backend = backends[i]
            if backend.available:
                load = backend.in_flight
                if best is None or load < best_load:
                    best = backend
                    best_i = i
                    best_load = load
                    if load <= 0:
                        break  # nothing beats idle; stop scanning
            i += 1
            if i == n:
                i = 0
            left -= 1
        if best is not None:
            best_i += 1
            self._next = best_i if best_i < n else 0
        return best


class PowerOfTwoChoices(_Listed):
    """Two distinct random backends, the one with fewer requests in flight.

    Nearly as good as least_request at O(1) per pick, and, unlike it, does not herd every
    worker process onto the same momentarily idle backend (each worker only sees its own
    in_flight counts).
    """

    __slots__ = ("_random",)

    def __init__(self, backends: Sequence[Backend] = (), rng: random.Random | None = None) -> None:
        # Bound method cached: int(random() * n) is several times cheaper than randrange.
        self._random: Callable[[], float] = (rng or random.Random()).random
        super().__init__(backends)

    def pick(self, headers: Headers, client_ip: str, path: bytes) -> Backend | None:
        n = self._n
        backends = self._backends
        if n <= 1:
            if n and backends[0].available:
                return backends[0]
            return None
        rand = self._random
        i = int(rand() * n)
        # Second index drawn from the other n-1 slots so the two are always distinct.
        j = int(rand() * (n - 1))
        if j >= i:
            j += 1
        a = backends[i]
        b = backends[j]
        if a.available:
            if b.available and b.in_flight < a.in_flight:
                return b
            return a
        if b.available:
            return b
        return self._least_loaded(i)

    def _least_loaded(self, start: int) -> Backend | None:
        # Both draws were unavailable: rare, so a full scan (from a random start, to keep
        # ties spread) is fine and guarantees we find a survivor if there is one.
        n = self._n
        backends = self._backends
        best: Backend | None = None
        for k in range(n):
            backend = backends[(start + k) % n]
            if backend.available and (best is None or backend.in_flight < best.in_flight):
                best = backend
        return best


class ConsistentHash(Balancer):
    """Consistent hashing on a request key (``hash_on``), for cache and session affinity.

    ``hash_on`` is ``header:NAME``, ``cookie:NAME``, ``client_ip`` or ``path`` (the path
    without its query string). Requests without the key fall back to round robin; when
    the key's backend is unavailable the next available distinct backend on the ring
    takes it.
    """

    __slots__ = ("_backends", "_fallback", "_key", "_replicas", "_ring", "hash_on", "reads_headers")

    def __init__(
        self,
        hash_on: str,
        backends: Sequence[Backend] = (),
        replicas: int = DEFAULT_REPLICAS,
    ) -> None:
        self.hash_on = hash_on
        # Parsed once here so pick() does not look at the hash_on string again.
        self._key: KeyExtractor = key_extractor(hash_on)
        self.reads_headers = hash_on.startswith(("header:", "cookie:"))
        self._replicas = replicas
        self._fallback = RoundRobin()
        self._backends: tuple[Backend, ...] = ()
        self._ring = HashRing((), replicas)
        self.set_backends(backends)

    @property
    def backends(self) -> tuple[Backend, ...]:
        return self._backends

    @property
    def ring(self) -> HashRing:
        return self._ring

    def set_backends(self, backends: Sequence[Backend]) -> None:
        self._backends = tuple(backends)
        self._ring = HashRing(self._backends, self._replicas)
        self._fallback.set_backends(self._backends)

    def pick(self, headers: Headers, client_ip: str, path: bytes) -> Backend | None:
        key = self._key(headers, client_ip, path)
        if not key:
            return self._fallback.pick(headers, client_ip, path)
        return self._ring.lookup(hash64(key))

    def pick_key(self, key: bytes) -> Backend | None:
        """The backend for an explicit key (tests, debugging endpoints)."""
        return self._ring.lookup(hash64(key))


# ------------------------------------------------------------------------ key extraction


def key_extractor(hash_on: str) -> KeyExtractor:
    """Compile ``hash_on`` into a function ``(headers, client_ip, path) -> key | None``.

    An empty value counts as missing: hashing b"" would pin every such request to one
    backend.
    """
    kind, sep, name = hash_on.partition(":")
    kind = kind.strip().lower()
    name = name.strip()
    if kind == "header" and sep and name:
        return _header_key(name.lower().encode("latin-1"))
    if kind == "cookie" and sep and name:
        return _cookie_key(name.encode("latin-1"))
    if not sep and kind == "client_ip":
        return _client_ip_key
    if not sep and kind == "path":
        return _path_key
    raise ValueError(
        f"invalid hash_on {hash_on!r}: expected header:NAME, cookie:NAME, client_ip or path"
    )


def _header_key(wanted: bytes) -> KeyExtractor:
    def extract(headers: Headers, client_ip: str, path: bytes) -> bytes | None:
        for name, value in headers:
            if name == wanted:
                return value.strip()
        return None

    return extract


def _cookie_key(cookie_name: bytes) -> KeyExtractor:
    prefix = cookie_name + b"="

    def extract(headers: Headers, client_ip: str, path: bytes) -> bytes | None:
        # HTTP/2 and some clients send several Cookie headers; look in each.
        for name, value in headers:
            if name == b"cookie":
                found = cookie_value(value, prefix)
                if found is not None:
                    return found
        return None

    return extract


def cookie_value(header: bytes, prefix: bytes) -> bytes | None:
    """The value of the cookie whose ``NAME=`` is ``prefix`` in one Cookie header value.

    A find-based scan instead of splitting the header: no list of pairs per request. A
    match only counts at the start of a pair, so ``sid=`` does not match ``xsid=1``.
    """
    start = 0
    while True:
        i = header.find(prefix, start)
        if i < 0:
            return None
        if i == 0 or header[i - 1] in b"; \t":
            j = i + len(prefix)
            end = header.find(b";", j)
            value = (header[j:] if end < 0 else header[j:end]).strip()
            # RFC 6265 allows a DQUOTE-wrapped value; the quotes are not part of the key.
            if len(value) >= 2 and value[0] == 0x22 and value[-1] == 0x22:
                value = value[1:-1]
            return value
        start = i + 1


def _client_ip_key(headers: Headers, client_ip: str, path: bytes) -> bytes | None:
    return client_ip.encode() if client_ip else None


def _path_key(headers: Headers, client_ip: str, path: bytes) -> bytes | None:
    # The query string is left out so /img.png?v=1 and ?v=2 share a cache backend.
    q = path.find(b"?")
    return path if q < 0 else path[:q]


# ------------------------------------------------------------------------------ factory


def make_balancer(
    balance: str,
    hash_on: str | None,
    backends: Sequence[Backend],
    rng: random.Random | None = None,
) -> Balancer:
    """Build the balancer named by a service's ``balance`` (round_robin | least_request |
    p2c | hash). Raises ValueError on an unknown name or a bad/missing ``hash_on``."""
    if balance == "round_robin":
        return RoundRobin(backends)
    if balance == "least_request":
        return LeastRequest(backends)
    if balance == "p2c":
        return PowerOfTwoChoices(backends, rng)
    if balance == "hash":
        if not hash_on:
            raise ValueError("balance 'hash' needs hash_on")
        return ConsistentHash(hash_on, backends)
    raise ValueError(f"unknown balance {balance!r}: expected one of {', '.join(BALANCE_NAMES)}")
