"""A service as the data plane sees it: pick a backend, get its connection pool."""

from __future__ import annotations

import asyncio
import logging

from guard.balancing import Backend, make_balancer
from guard.balancing.outlier import OutlierDetector
from guard.config.model import ServiceConfig
from guard.errors import GuardError, Overloaded
from guard.proxy.deadlines import DeadlineSweeper
from guard.upstream.pool import UpstreamPool, UpstreamSettings
from guard.upstream.resolver import Resolver

log = logging.getLogger("guard.upstream")


class Service:
    """Static backends (``servers:``) behind one balancer, one pool per backend."""

    __slots__ = (
        "_loop",
        "_pools",
        "_timers",
        "active",
        "balancer",
        "config",
        "down",
        "limits",
        "name",
        "outlier",
        "pending",
        "policed",
        "reads_headers",
        "retries",
        "retries_total",
        "retry_on",
        "retrying",
    )

    wakeable = False  # static servers are there or not: nothing to wake (ContainerService is)

    def __init__(
        self,
        config: ServiceConfig,
        settings: UpstreamSettings,
        *,
        loop: asyncio.AbstractEventLoop,
        resolver: Resolver,
        sweeper: DeadlineSweeper,
    ) -> None:
        self.name = config.name
        self.config = config
        backends = [Backend(s.host, s.port) for s in config.servers]
        self.balancer = make_balancer(config.balance, config.hash_on, backends)
        self.reads_headers = self.balancer.reads_headers  # (see Balancer.reads_headers)
        self._pools = {
            b: UpstreamPool(b, settings, loop=loop, resolver=resolver, sweeper=sweeper)
            for b in backends
        }
        self.down: frozenset[str] = frozenset()
        self._loop = loop
        self._timers: list[asyncio.TimerHandle] = []
        self.outlier = (
            OutlierDetector(config.outlier, [b.name for b in backends])
            if config.outlier is not None
            else None
        )
        # Circuit breaking and retries, per worker process. The proxy only keeps the
        # counters below for a service with one of these (``policed``): the others pay
        # nothing per request.
        self.limits = config.limits
        self.retries = config.retries if config.retries and config.retries.attempts else None
        self.retry_on = frozenset(self.retries.on) if self.retries is not None else frozenset()
        self.policed = bool(self.limits or self.retries or self.outlier)
        self.active = 0  # requests in flight on the service
        self.pending = 0  # requests waiting for a new upstream connection
        self.retrying = 0  # requests on a retry now (the retry budget)
        self.retries_total = 0  # attempts sent again, for metrics

    def set_down(self, names: tuple[str, ...]) -> None:
        """Active health checks' verdict: these servers take no new work."""
        self.down = frozenset(names)
        self._update_available()

    def _update_available(self) -> None:
        ejected = self.outlier.ejected() if self.outlier is not None else ()
        for backend in self._pools:
            backend.available = backend.name not in self.down and backend.name not in ejected

    # -- circuit breaking (limits:) and the retry budget
    def admit(self) -> None:
        """Refuse fast (503 overloaded) when max_in_flight requests are already running."""
        limits = self.limits
        cap = limits.max_in_flight if limits is not None else None
        if cap is not None and self.active >= cap:
            raise Overloaded(f"service {self.name}: {cap} requests in flight (limits)")

    def may_connect(self) -> GuardError | None:
        """A new upstream connection is needed: None if the limits allow one, else why not."""
        limits = self.limits
        if limits is None:
            return None
        if limits.max_pending is not None and self.pending >= limits.max_pending:
            return Overloaded(
                f"service {self.name}: {limits.max_pending} requests waiting for a connection"
            )
        if limits.max_connections is not None:
            open_now = sum(p.open for p in self._pools.values()) + self.pending
            if open_now >= limits.max_connections:
                return Overloaded(
                    f"service {self.name}: {limits.max_connections} upstream connections open"
                )
        return None

    def can_retry(self) -> bool:
        """Envoy's retry budget: retries at most ``budget`` of the active requests, min 3."""
        retries = self.retries
        if retries is None:
            return False
        return self.retrying < max(3, retries.budget * self.active)

    def pick_other(self, exclude: Backend) -> UpstreamPool | None:
        """Another available server for a retry: the least loaded one (not through the
        balancer, whose rotation a retry must not shift); the same server only if it is
        the last one up."""
        candidates = [b for b in self._pools if b.available and b is not exclude]
        if candidates:
            return self._pools[min(candidates, key=_load)]
        return self._pools[exclude] if exclude.available else None

    def report(self, backend: Backend, ok: bool) -> None:
        """An exchange with ``backend`` ended: ``ok`` unless a 5xx or a connect failure.
        Only called for services with ``outlier:``."""
        detector = self.outlier
        if detector is None:
            return
        if ok:
            detector.success(backend.name)
            return
        available = sum(1 for b in self._pools if b.available)
        until = detector.failure(backend.name, self._loop.time(), available)
        if until is None:
            return
        log.warning(
            "service %s: server %s ejected for %.0fs after %d failures in a row",
            self.name,
            backend.name,
            until - self._loop.time(),
            detector.config.consecutive_errors,
        )
        self._update_available()
        now = self._loop.time()
        self._timers = [t for t in self._timers if t.when() > now]
        self._timers.append(self._loop.call_at(until, self._restore, backend.name))

    def _restore(self, name: str) -> None:
        if self.outlier is not None and self.outlier.restore(name, self._loop.time()):
            log.info("service %s: server %s back from ejection", self.name, name)
            self._update_available()

    def pick(
        self, headers: list[tuple[bytes, bytes]], client_ip: str, path: bytes
    ) -> UpstreamPool | None:
        backend = self.balancer.pick(headers, client_ip, path)
        return None if backend is None else self._pools[backend]

    @property
    def pools(self) -> list[UpstreamPool]:
        return list(self._pools.values())

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for pool in self._pools.values():
            pool.close_idle()


def _load(backend: Backend) -> int:
    return backend.in_flight
