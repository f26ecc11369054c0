"""Where the control plane and the usage ledger run: one ``ControlHost`` per Guard.

With ``workers: 1`` the only worker process hosts it and its data plane talks to it through
``LocalLink``; with more workers the supervisor hosts it and serves it to the workers on a
Unix socket (``guard.control.link``). Either way there is exactly one owner of instances
and one writer of the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from guard.config.model import GuardConfig, RoutesConfig
from guard.control.metering import TrafficReport, UsageMeter
from guard.control.metrics import control_snapshot
from guard.control.plane import ControlPlane
from guard.metrics.snapshot import Snapshot, add
from guard.runtime.handover import predecessor, wait_exit
from guard.usage.ledger import UsageLedger

log = logging.getLogger("guard.control")


def needs_control_plane(routes: RoutesConfig) -> bool:
    """Container services (their lifecycle) and health checks run in the control plane."""
    return any(
        s.container is not None or (s.health is not None and s.servers)
        for s in routes.services.values()
    )


def needs_control_host(config: GuardConfig) -> bool:
    """The control plane (container services; ``containers.listener``: containers made
    through the admin API), or ``usage:`` (the ledger's one writer)."""
    return (
        needs_control_plane(config.routes)
        or config.usage is not None
        or config.containers.listener is not None
    )


class ControlHost:
    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self.plane = ControlPlane(config)
        # A binary restart: the Guard before this one still serves while it drains. This
        # one adopts its running containers now and meters them (and removes what it left
        # unadopted) once it has exited.
        self._predecessor = predecessor()
        self.plane.predecessor_running = self._predecessor is not None
        self._watch: asyncio.Task[None] | None = None
        self.ledger: UsageLedger | None = None
        self.meter: UsageMeter | None = None
        self._ledger_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = self.config
        if config.usage is not None:
            self.ledger = UsageLedger(config.usage.ledger, flush_interval=config.usage.flush)
            self.ledger.open()
            self._ledger_task = asyncio.get_running_loop().create_task(self.ledger.run())
        cpu_scaled = any(
            s.scale is not None and s.scale.target_cpu is not None
            for s in config.routes.services.values()
        )
        if self.ledger is not None or cpu_scaled:
            # The meter reads instances' CPU for the ledger and for target_cpu scaling.
            interval = config.usage.flush if config.usage is not None else 1.0
            self.meter = UsageMeter(self.plane, self.ledger, interval)
            self.plane.meter = self.meter
        await self.plane.start()
        if self.meter is not None:
            self.meter.start()
        if self._predecessor is not None:
            self._watch = asyncio.get_running_loop().create_task(
                self._after_predecessor(self._predecessor)
            )

    async def _after_predecessor(self, pid: int) -> None:
        await wait_exit(pid)
        log.info("the Guard this one took over from (pid %d) has exited", pid)
        await self.plane.predecessor_exited()

    def hand_over(self, adopted: frozenset[str]) -> None:
        """A successor Guard serves now, and adopted the instances ``adopted``."""
        self.plane.hand_over(adopted)

    def adopted(self) -> frozenset[str]:
        """The instances this Guard adopted from the one before it (for its ready line)."""
        return frozenset(self.plane.adopted_ids)

    @property
    def usage_interval(self) -> float | None:
        """How often workers send traffic deltas; None without a ledger."""
        return self.config.usage.flush if self.config.usage is not None else None

    def traffic(self, report: TrafficReport) -> None:
        if self.meter is not None:
            self.meter.traffic(report)

    def snapshot(self) -> Snapshot:
        snap = control_snapshot(self.plane)
        ledger = self.ledger
        if ledger is not None:
            add(snap, "guard_usage_slices_written_total", (), ledger.rows_written)
            add(snap, "guard_usage_write_errors_total", (), ledger.write_errors)
            add(snap, "guard_usage_pending_slices", (), ledger.pending)
            add(snap, "guard_usage_dropped_slices_total", (), ledger.dropped)
        return snap

    async def reload(self, routes: RoutesConfig) -> None:
        await self.plane.reload(routes)

    async def close(self) -> None:
        """After the data plane drained: stop instances (their last usage slices), then
        the ledger's final flush. After a handover (``hand_over``) the containers the
        successor adopted are released instead: their last slices, not stopped."""
        if self._watch is not None:
            self._watch.cancel()
        await self.plane.close()
        if self.meter is not None:
            await self.meter.close()
        if self.ledger is not None:
            assert self._ledger_task is not None
            self._ledger_task.cancel()  # its last flush runs on cancel, synchronously
            with contextlib.suppress(asyncio.CancelledError):
                await self._ledger_task
            self.ledger.close()
