"""A service as the data plane sees it: pick a backend, get its connection pool."""

from __future__ import annotations

import asyncio

from guard.balancing import Backend, make_balancer
from guard.config.model import ServiceConfig
from guard.proxy.deadlines import DeadlineSweeper
from guard.upstream.pool import UpstreamPool, UpstreamSettings
from guard.upstream.resolver import Resolver


class Service:
    """Static backends (``servers:``) behind one balancer, one pool per backend."""

    __slots__ = ("_pools", "balancer", "config", "down", "name")

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

    def set_down(self, names: tuple[str, ...]) -> None:
        """Active health checks' verdict: these servers take no new work."""
        self.down = frozenset(names)
        for backend in self._pools:
            backend.available = backend.name not in self.down

    def pick(
        self, headers: list[tuple[bytes, bytes]], client_ip: str, path: bytes
    ) -> UpstreamPool | None:
        backend = self.balancer.pick(headers, client_ip, path)
        return None if backend is None else self._pools[backend]

    @property
    def pools(self) -> list[UpstreamPool]:
        return list(self._pools.values())

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close_idle()
