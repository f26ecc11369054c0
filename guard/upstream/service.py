"""A service as the data plane sees it: pick a backend, get its connection pool."""

from __future__ import annotations

import asyncio
import logging

from guard.balancing import Backend, make_balancer
from guard.balancing.outlier import OutlierDetector
from guard.config.model import ServiceConfig
from guard.proxy.deadlines import DeadlineSweeper
from guard.upstream.pool import UpstreamPool, UpstreamSettings
from guard.upstream.resolver import Resolver

log = logging.getLogger("guard.upstream")


class Service:
    """Static backends (``servers:``) behind one balancer, one pool per backend."""

    __slots__ = ("_loop", "_pools", "_timers", "balancer", "config", "down", "name", "outlier")

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

    def set_down(self, names: tuple[str, ...]) -> None:
        """Active health checks' verdict: these servers take no new work."""
        self.down = frozenset(names)
        self._update_available()

    def _update_available(self) -> None:
        ejected = self.outlier.ejected() if self.outlier is not None else ()
        for backend in self._pools:
            backend.available = backend.name not in self.down and backend.name not in ejected

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
