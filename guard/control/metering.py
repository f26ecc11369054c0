"""Usage metering: turns driver stats and the workers' traffic counters into ledger slices.

Every ``interval`` (``usage.flush``) the meter reads each running instance's cumulative CPU
time and current memory from its driver and records one ``InstanceSlice`` per instance for
``[last sample, now)``: CPU is the counter's delta, memory the mean of the two readings.
When an instance stops, a last slice (read just before the driver stops it) carries
``stopped_at`` and the exit reason, so a slice sequence always covers start to stop.

Traffic comes from the workers as per-route deltas (``TrafficReport``); each becomes a
``TrafficSlice`` for the interval it covers. Slice ids are ``<instance or route>@<start ns>``:
unique, and the same if a slice were recorded twice, so the ledger counts it once.

The same CPU readings feed ``target_cpu`` autoscaling (utilisation of the instance's CPU
limit, or of one core without a limit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from guard.admin.auth import ALL
from guard.admin.tenancy import owner_of
from guard.control.state import Instance, Phase
from guard.drivers.base import DriverError
from guard.usage.ledger import InstanceSlice, TrafficSlice, UsageLedger

if TYPE_CHECKING:
    from guard.control.plane import ControlPlane

log = logging.getLogger("guard.usage")


@dataclass(frozen=True, slots=True)
class TrafficReport:
    """One worker's traffic on one route over [start, end) (unix seconds)."""

    worker: int
    route: str
    service: str
    start: float
    end: float
    requests: int  # HTTP requests; tcp connections or udp sessions on l4 routes
    bytes_in: int  # client -> backend
    bytes_out: int  # backend -> client


@dataclass(slots=True)
class _Sample:
    wall: float  # unix time of the reading
    cpu_seconds: float
    memory_bytes: int


class UsageMeter:
    def __init__(
        self, plane: ControlPlane | None, ledger: UsageLedger | None, interval: float
    ) -> None:
        self.plane = plane
        self.ledger = ledger
        self.interval = interval
        self._last: dict[str, _Sample] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sample()
            except Exception:
                log.exception("usage sampling failed")

    async def sample(self) -> None:
        """One round: a slice per running instance, CPU utilisation to the autoscaler."""
        if self.plane is None:
            return
        now = asyncio.get_running_loop().time()
        for ctl in list(self.plane.controllers.values()):
            utilizations: list[float] = []
            for inst in ctl.instances(Phase.READY, Phase.DRAINING, Phase.STARTING):
                if inst.handle is None or inst.started_wall is None or not inst.metered:
                    continue
                util = await self._slice(inst, final=False)
                if util is not None and inst.phase is Phase.READY:
                    utilizations.append(util)
            if utilizations:
                ctl.observe_cpu(now, sum(utilizations) / len(utilizations))

    async def instance_stopping(self, inst: Instance) -> None:
        """The instance is about to be stopped: its last slice, read while it still runs."""
        if inst.handle is not None and inst.started_wall is not None:
            await self._slice(inst, final=True)
        self._end(inst)

    async def instance_released(self, inst: Instance) -> None:
        """Handed to a successor Guard (binary restart): the last slice this Guard
        meters, which does not say stopped; the successor meters from when it has exited."""
        await self._slice(inst, final=False)
        self._end(inst)

    def _end(self, inst: Instance) -> None:
        # No slice after the last one: a periodic reading still waiting on the driver
        # when this one was written sees ``metered`` False and is dropped (it would
        # otherwise start a second sequence, from ``started_wall``).
        inst.metered = False
        self._last.pop(inst.id, None)

    async def begin(self, inst: Instance) -> None:
        """An adopted instance: metered from where the Guard that left it stopped, the end
        of its last slice in the ledger (so the slices run end to end across a handover or
        a crash: the container ran all along), else from now. CPU counts from the driver's
        first reading of an adopted instance (0), so the baseline is set at once, before
        that reading (a docker stats call can take a second) returns with the memory: a
        slice that ends meanwhile still starts at the baseline, and none is billed twice."""
        ctl = self.plane.controllers.get(inst.service) if self.plane is not None else None
        if ctl is None or inst.handle is None or inst.id in self._last:
            inst.metered = True
            return
        now = time.time()
        last_end = await self._last_end(inst.id)
        if inst.id in self._last or inst.phase in (Phase.STOPPING, Phase.STOPPED):
            return  # read, or going away, meanwhile (never from ``started_wall``: billed twice)
        wall = last_end if last_end is not None and last_end <= now else now
        baseline = self._last[inst.id] = _Sample(wall, 0.0, 0)
        inst.metered = True  # only now: a slice without the baseline would start too early
        try:
            stats = await ctl.driver.stats(inst.handle)
        except DriverError:
            return  # gone meanwhile: its exit is reported and handled as any other
        if self._last.get(inst.id) is baseline:
            self._last[inst.id] = _Sample(wall, stats.cpu_seconds, stats.memory_bytes)

    async def _last_end(self, instance: str) -> float | None:
        if self.ledger is None:
            return None
        try:
            return await asyncio.to_thread(self.ledger.last_end, instance)
        except Exception as e:  # a ledger that cannot be read: metered from now
            log.warning("usage: cannot read where %s was last metered: %s", instance, e)
            return None

    async def _slice(self, inst: Instance, *, final: bool) -> float | None:
        ctl = self.plane.controllers.get(inst.service) if self.plane is not None else None
        if ctl is None or inst.handle is None or inst.started_wall is None or not inst.metered:
            return None
        try:
            stats = await ctl.driver.stats(inst.handle)
            reading = _Sample(time.time(), stats.cpu_seconds, stats.memory_bytes)
        except DriverError:
            # Exited already (crash): close the sequence with what was last read.
            prev = self._last.get(inst.id)
            reading = _Sample(
                time.time(),
                prev.cpu_seconds if prev else 0.0,
                prev.memory_bytes if prev else 0,
            )
        if not inst.metered:
            return None  # its last slice was written while this reading was under way
        first = inst.id not in self._last
        prev = self._last.get(inst.id) or _Sample(inst.started_wall, 0.0, reading.memory_bytes)
        self._last[inst.id] = reading
        if reading.wall <= prev.wall:
            return None
        spec = ctl.spec
        cpu = max(0.0, reading.cpu_seconds - prev.cpu_seconds)
        if self.plane is not None:
            self.plane.stats.observe_usage(inst.service, inst.id, cpu, reading.memory_bytes)
        if self.ledger is not None:
            self.ledger.record(
                InstanceSlice(
                    id=f"{inst.id}@{int(prev.wall * 1e9)}",
                    instance=inst.id,
                    service=inst.service,
                    tenant=self.tenant_of(inst.service),
                    driver=spec.driver,
                    start=prev.wall,
                    end=reading.wall,
                    cpu_limit=spec.resources.cpu,
                    memory_limit=spec.resources.memory,
                    cpu_seconds=cpu,
                    memory_bytes_avg=(prev.memory_bytes + reading.memory_bytes) / 2,
                    started_at=inst.started_wall if first else None,
                    stopped_at=reading.wall if final else None,
                    exit_reason=(inst.exit_reason or inst.stop_reason) if final else None,
                )
            )
        return cpu / (reading.wall - prev.wall) / (spec.resources.cpu or 1.0)

    def traffic(self, report: TrafficReport) -> None:
        if self.ledger is None or report.end <= report.start:
            return
        self.ledger.record(
            TrafficSlice(
                id=f"{report.route}#{report.worker}@{int(report.start * 1e9)}",
                route=report.route,
                service=report.service,
                tenant=self.tenant_of(report.service),
                start=report.start,
                end=report.end,
                requests=report.requests,
                bytes_in=report.bytes_in,
                bytes_out=report.bytes_out,
            )
        )

    def tenant_of(self, service: str) -> str | None:
        """The tenant whose admin route file defines ``service`` (None: the operator's)."""
        if self.plane is None:
            return None
        api_tenant = self.plane.containers.tenant_of(service)  # an API container's
        if api_tenant is not None:
            return api_tenant if api_tenant != ALL else None
        cfg = self.plane.routes.services.get(service)
        owner = owner_of(cfg.source) if cfg is not None else None
        return owner if owner not in (None, ALL) else None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
