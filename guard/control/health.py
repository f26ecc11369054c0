"""Active health checks of static servers (``health:``), run once, in the control plane.

Every ``interval`` each server of the service is probed (``GET path`` answered below 400,
or a TCP connect, within ``timeout``). ``unhealthy_after`` failures in a row take a server
out; ``healthy_after`` successes in a row bring it back (HAProxy's fall / rise). Servers
start up, as in HAProxy: a Guard restart must not refuse traffic until the first round.
A change is published to every worker as the set of servers that are down, and the
workers' balancers skip them. Checking here rather than in each worker keeps the probe
rate at one per server per interval whatever ``workers`` is.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from guard.config.model import HealthConfig, ServiceConfig
from guard.control.probe import check_once

log = logging.getLogger("guard.health")


@dataclass(slots=True)
class ServerHealth:
    """Pure state of one server: fed results, says when it flips."""

    name: str  # the backend name the data plane knows it by ("host:port")
    host: str
    port: int
    up: bool = True
    successes: int = 0  # in a row
    failures: int = 0  # in a row
    checks: dict[str, int] = field(default_factory=lambda: {"ok": 0, "fail": 0})

    def record(self, ok: bool, config: HealthConfig) -> bool:
        """Count one result; True when the server changed state."""
        self.checks["ok" if ok else "fail"] += 1
        if ok:
            self.successes += 1
            self.failures = 0
            if not self.up and self.successes >= config.healthy_after:
                self.up = True
                return True
        else:
            self.failures += 1
            self.successes = 0
            if self.up and self.failures >= config.unhealthy_after:
                self.up = False
                return True
        return False


class HealthChecker:
    def __init__(self, config: ServiceConfig, changed: Callable[[str], None]) -> None:
        assert config.health is not None
        self.service = config.name
        self.config: HealthConfig = config.health
        self.servers = [ServerHealth(str(s), s.host, s.port) for s in config.servers]
        self._changed = changed
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def down(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.servers if not s.up)

    async def _run(self) -> None:
        # A random first delay: services configured together do not probe in lockstep.
        await asyncio.sleep(random.uniform(0, self.config.interval))
        while True:
            await self.check_all()
            await asyncio.sleep(self.config.interval)

    async def check_all(self) -> None:
        cfg = self.config
        results = await asyncio.gather(
            *(check_once(s.host, s.port, cfg.http, cfg.timeout) for s in self.servers)
        )
        flipped = False
        for server, ok in zip(self.servers, results, strict=True):
            if server.record(ok, cfg):
                flipped = True
                log.warning(
                    "service %s: server %s is %s (%d %s in a row)",
                    self.service,
                    server.name,
                    "up" if server.up else "DOWN",
                    server.successes if server.up else server.failures,
                    "passed checks" if server.up else "failed checks",
                )
        if flipped:
            self._changed(self.service)
