"""The control plane: drivers, one controller per container service, and the link to workers.

Exactly one runs per Guard. Data-plane workers hold a ``ControlLink`` to it: they ask for
wakes and report their load every ``REPORT_INTERVAL`` and after every endpoint update; the
plane answers with ``ServiceEndpoints`` / ``WakeFailure`` messages (``guard.control.messages``).
Its own loop ticks every ``TICK``: it sums the latest reports per service and hands them to
the controllers (activity, autoscaling, per-key sleep).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from guard.config.model import GuardConfig, RoutesConfig, ServiceConfig
from guard.control.container_store import ContainerStore
from guard.control.containers import SERVICE_PREFIX, ContainerManager
from guard.control.controller import Load, ServiceController
from guard.control.health import HealthChecker
from guard.control.messages import (
    ContainerUpdate,
    ControlLink,
    DataPlaneSink,
    Endpoint,
    LoadReport,
    ServiceEndpoints,
    ServiceHealth,
    WakeFailure,
)
from guard.control.metering import UsageMeter
from guard.control.metrics import CONTAINERS, ControlStats
from guard.control.state import ControlState, Instance, MemoryState, Phase
from guard.drivers.base import Driver, DriverError, InstanceHandle

if TYPE_CHECKING:
    from guard.drivers.docker import DockerDriver, Leftover

log = logging.getLogger("guard.control")
lifecycle_log = logging.getLogger("guard.lifecycle")

TICK = 0.1
REPORT_INTERVAL = 0.1

_WARNINGS = frozenset({"start_failed", "crash", "driver_error"})

InstanceHook = Callable[[Instance], None]


class LocalLink:
    """A worker's link to a control plane in the same process and loop.

    Wakes are delivered on the next loop iteration, never inside the caller's callback: a
    wake can fail synchronously, and that answer must not re-enter the data plane while it
    is still queueing the request that asked."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane

    def wake(self, service: str, key: str | None, demand: int) -> None:
        self._plane.loop.call_soon(self._plane.on_wake, service, key, demand)

    def report(self, report: LoadReport) -> None:
        self._plane.on_report(report)


def docker_guard_id(config: GuardConfig) -> str:
    """``drivers.docker.guard_id``, else one derived from where guard.yaml is: stable across
    restarts of this Guard (so it finds its own leftovers), distinct between Guards."""
    docker = config.drivers.docker
    if docker is not None and docker.guard_id:
        return docker.guard_id
    digest = hashlib.sha256(str(Path(config.path).resolve()).encode()).hexdigest()
    return f"guard-{digest[:12]}"


class ControlPlane:
    def __init__(
        self,
        config: GuardConfig,
        *,
        drivers: dict[str, Driver] | None = None,
        state: ControlState | None = None,
    ) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.state = state or MemoryState()
        self.drivers: dict[str, Driver] = dict(drivers or {})
        self._own_drivers: list[Driver] = []
        self._workdir: Path | None = None
        # True while the Guard this one takes over from (a binary restart) still runs: it
        # serves, and meters, the containers this one adopts from it until it exits
        # (``predecessor_exited``).
        self.predecessor_running = False
        self.handing_over = False  # this Guard's successor serves: see ``hand_over``
        self.handed: frozenset[str] = frozenset()  # the instances that successor adopted
        self.adopted_ids: set[str] = set()  # instances this Guard adopted at its start
        self._background: set[asyncio.Task[None]] = set()
        self.routes: RoutesConfig = config.routes  # the route files in force
        self.controllers: dict[str, ServiceController] = {}
        self.health: dict[str, HealthChecker] = {}
        self._sinks: dict[int, DataPlaneSink] = {}
        self._reports: dict[tuple[int, str], LoadReport] = {}
        self._served: dict[str, set[str]] = defaultdict(set)
        self._seq: dict[str, int] = defaultdict(int)
        self._unhook: list[Callable[[], None]] = []
        self._tick_task: asyncio.Task[None] | None = None
        self.on_started: list[InstanceHook] = []
        self.on_stopped: list[InstanceHook] = []
        self.stats = ControlStats(self.metric_label)
        self.meter: UsageMeter | None = None  # set by whoever runs the usage ledger
        self._adopted: dict[str, list[Leftover]] = {}  # service -> containers to take over
        # POST /v1/containers; their records kept under routes/ once they are served.
        store = (
            ContainerStore.for_routes(config.routes_path)
            if config.containers.listener is not None
            else None
        )
        self.containers = ContainerManager(self, store)

    def metric_label(self, service: str) -> str:
        """The service label of ``service``'s metrics: API containers' (``ctr-ID``, not a
        route file's service) all share one, so tenants cannot grow /metrics."""
        if service.startswith(SERVICE_PREFIX) and service not in self.routes.services:
            return CONTAINERS
        return service

    # ------------------------------------------------------------------ setup
    async def start(self) -> None:
        # API containers' records first: their services are candidates for adopting the
        # running containers an earlier Guard left, when the docker driver is made.
        await self.containers.load()
        await self._apply(self.config.routes)
        await self.containers.restore()
        self._tick_task = self.loop.create_task(self._run())

    def attach(self, worker: int, sink: DataPlaneSink) -> ControlLink:
        """Register a data-plane worker; it gets the current endpoints at once."""
        self._sinks[worker] = sink
        if self.state.containers():  # first: the endpoints below name their services
            for update in self.containers.attach_updates():
                sink.apply_containers(update)
        for name in self.controllers:
            sink.apply_endpoints(self._endpoints(name))
        for name, checker in self.health.items():
            sink.apply_health(ServiceHealth(name, checker.down()))
        return LocalLink(self)

    def detach(self, worker: int) -> None:
        """A worker is gone: forget it and its load, so drains do not wait for it."""
        self._sinks.pop(worker, None)
        for key in [k for k in self._reports if k[0] == worker]:
            del self._reports[key]

    async def _driver(self, name: str) -> Driver:
        driver = self.drivers.get(name)
        if driver is not None:
            return driver
        if name == "process":
            from guard.drivers.process import ProcessDriver

            # Instance directories (logs) live for this run only.
            self._workdir = Path(tempfile.mkdtemp(prefix="guard-instances-"))
            driver = ProcessDriver(self._workdir)
        elif name == "docker":
            from guard.drivers.docker import DockerDriver  # type: ignore[import-not-found]

            docker_cfg = self.config.drivers.docker
            assert docker_cfg is not None  # the loader checked the service's driver exists
            driver = DockerDriver(docker_cfg, guard_id=docker_guard_id(self.config))
            # Running containers an earlier Guard left (it crashed, or is handing over to
            # this one) are adopted when they still match their service. The rest are
            # removed: now, or, when that Guard still runs (draining), once it exits.
            await self._adopt_leftovers(driver)
            if not self.predecessor_running:
                await self._reap(driver)
        else:
            raise DriverError(f"unknown driver {name!r}")
        self.drivers[name] = driver
        self._own_drivers.append(driver)
        self._unhook.append(driver.on_exit(self._on_exit))
        return driver

    async def _apply(self, routes: RoutesConfig) -> None:
        self.routes = routes
        wanted = {n: s for n, s in routes.services.items() if s.container is not None}
        for name in [n for n in wanted if self.containers.owns(n)]:
            # An API container's service: its name is taken, the route file's loses.
            log.warning("service %s: the name belongs to an API container; ignored", name)
            del wanted[name]
        for name, ctl in list(self.controllers.items()):
            if name not in wanted and not self.containers.owns(name):
                del self.controllers[name]
                self.loop.create_task(ctl.close())
        for name, cfg in wanted.items():
            current = self.controllers.get(name)
            if current is not None and current.spec.driver == cfg.container.driver:  # type: ignore[union-attr]
                current.configure(cfg)
                continue
            if current is not None:
                self.loop.create_task(current.close())
            self.controllers[name] = await self._controller(cfg)
        for name in wanted:
            self.publish(name)
        self._apply_health(routes)

    def _apply_health(self, routes: RoutesConfig) -> None:
        """One checker per static service with ``health:``; a changed config restarts it."""
        wanted = {n: s for n, s in routes.services.items() if s.health is not None and s.servers}
        for name, checker in list(self.health.items()):
            cfg = wanted.get(name)
            if (
                cfg is None
                or cfg.health != checker.config
                or len(cfg.servers) != len(checker.servers)
                or any(str(a) != b.name for a, b in zip(cfg.servers, checker.servers, strict=False))
            ):
                checker.stop()
                del self.health[name]
                self.publish_health(name)  # back to all up until the new checker decides
        for name, cfg in wanted.items():
            if name not in self.health:
                checker = HealthChecker(cfg, self.publish_health)
                self.health[name] = checker
                checker.start()

    def publish_health(self, service: str) -> None:
        checker = self.health.get(service)
        update = ServiceHealth(service, checker.down() if checker is not None else ())
        for sink in list(self._sinks.values()):
            sink.apply_health(update)

    async def _controller(self, cfg: ServiceConfig) -> ServiceController:
        assert cfg.container is not None
        driver = await self._driver(cfg.container.driver)
        ctl = ServiceController(cfg, driver, self.state, self, loop=self.loop)
        for left in self._adopted.pop(cfg.name, ()):
            ctl.adopt(left.handle, left.key)
        return ctl

    async def _reap(self, driver: Driver) -> None:
        reaped = await driver.reap_orphans()
        if reaped:
            log.warning("removed %d containers left by an earlier Guard", len(reaped))

    async def predecessor_exited(self) -> None:
        """The Guard this one took over from has exited: it released what this one
        adopted (last usage readings written), so metering them starts here, and what it
        left that nobody adopted is removed."""
        self.predecessor_running = False
        adopted = [
            inst
            for service in self.state.services()
            for inst in self.state.of_service(service)
            if not inst.metered and inst.phase is Phase.READY
        ]
        await asyncio.gather(*(self._begin_metering(inst) for inst in adopted))
        for driver in self._own_drivers:
            try:
                await self._reap(driver)
            except DriverError as e:
                log.warning("cannot remove containers left by the earlier Guard: %s", e)

    async def _begin_metering(self, inst: Instance) -> None:
        if self.meter is None:
            inst.metered = True
        else:
            try:
                await self.meter.begin(inst)
            except Exception:
                log.exception("usage: first reading of adopted %s failed", inst.id)
        self.state.put(inst)

    async def _adopt_leftovers(self, driver: DockerDriver) -> None:
        """The running containers an earlier Guard left that still fit the route files:
        taken over by the driver now, by their controllers as these are made."""
        from guard.control.adoption import adoptable
        from guard.drivers.docker import spec_digest

        network = driver.network
        # Route files' services and API containers' (whose names win, as in ``_apply``).
        services = {**self.routes.services, **self.containers.service_configs()}
        found = adoptable(
            await driver.leftovers(), services, lambda spec: spec_digest(spec, network)
        )
        for service, lefts in found.items():
            stop_timeout = services[service].container.stop_timeout  # type: ignore[union-attr]
            for left in lefts:
                driver.adopt(left, stop_timeout)
                self.adopted_ids.add(left.handle.id)
            self._adopted[service] = lefts
            log.info(
                "adopting %d running containers of %s left by an earlier Guard", len(lefts), service
            )

    async def reload(self, routes: RoutesConfig) -> None:
        """New route files: add, reconfigure and remove controllers."""
        await self._apply(routes)

    # --------------------------------------------------------- from the workers
    def on_wake(self, service: str, key: str | None, demand: int) -> None:
        ctl = self.controllers.get(service)
        if ctl is None:
            self.fail(WakeFailure(service, key, "instance_start_failed", "service removed"))
            return
        ctl.wake(key, demand)

    def on_report(self, report: LoadReport) -> None:
        self._reports[(report.worker, report.service)] = report
        if report.served:
            self._served[report.service].update(i for i, _ in report.served)

    # ------------------------------------------------------- ControllerHost
    def publish(self, service: str) -> int:
        update = self._endpoints(service, bump=True)
        for sink in list(self._sinks.values()):
            sink.apply_endpoints(update)
        return update.seq

    def _endpoints(self, service: str, *, bump: bool = False) -> ServiceEndpoints:
        if bump:
            self._seq[service] += 1
        ready = tuple(
            Endpoint(i.id, i.handle.host, i.handle.port, i.key, i.handle.ports)
            for i in self.state.of_service(service)
            if i.phase is Phase.READY and i.handle is not None
        )
        return ServiceEndpoints(service, self._seq[service], ready)

    def fail(self, failure: WakeFailure) -> None:
        self.containers.on_failure(failure)
        for sink in list(self._sinks.values()):
            sink.wake_failed(failure)

    def send_containers(self, update: ContainerUpdate) -> None:
        for sink in list(self._sinks.values()):
            sink.apply_containers(update)

    def forget(self, service: str) -> None:
        """A service is gone for good (a deleted API container): drop its bookkeeping."""
        for key in [k for k in self._reports if k[1] == service]:
            del self._reports[key]
        self._served.pop(service, None)
        self._seq.pop(service, None)

    def applied(self, service: str, seq: int) -> bool:
        """True once every worker has applied publish ``seq`` of ``service``."""
        for worker in self._sinks:
            report = self._reports.get((worker, service))
            if report is None or report.seq < seq:
                return False
        return True

    def drained(self, service: str, instance: str, seq: int) -> bool:
        for worker in self._sinks:
            report = self._reports.get((worker, service))
            if report is None or report.seq < seq:
                return False
            if any(i == instance and n > 0 for i, n in report.in_flight):
                return False
        return True

    def instance_started(self, inst: Instance) -> None:
        for hook in self.on_started:
            hook(inst)

    async def instance_stopping(self, inst: Instance) -> None:
        await self.containers.instance_stopping(inst)
        if self.meter is not None:
            try:
                await self.meter.instance_stopping(inst)
            except Exception:
                log.exception("usage: last reading of %s failed", inst.id)

    async def instance_released(self, inst: Instance) -> None:
        if self.meter is not None:
            try:
                await self.meter.instance_released(inst)
            except Exception:
                log.exception("usage: last reading of %s failed", inst.id)

    def instance_adopted(self, inst: Instance) -> None:
        if not self.predecessor_running:  # else: once it has exited (predecessor_exited)
            task = self.loop.create_task(self._begin_metering(inst))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def instance_stopped(self, inst: Instance) -> None:
        self.stats.stopped(inst)
        for hook in self.on_stopped:
            hook(inst)

    def observe_start(self, service: str, outcome: str, phases: dict[str, float]) -> None:
        self.stats.observe_start(service, outcome, phases)

    def event(self, event: str, inst: Instance | None, **fields: object) -> None:
        record: dict[str, object] = {"ts": round(time.time(), 3), "event": event}
        if inst is not None:
            record.update(service=inst.service, instance=inst.id)
            if inst.key is not None:
                record["key"] = inst.key
        else:
            service = fields.pop("service", None)
            if service is not None:
                record["service"] = service
        record.update(fields)
        level = logging.WARNING if event in _WARNINGS else logging.INFO
        lifecycle_log.log(level, json.dumps(record, default=str))

    # ------------------------------------------------------------------ ticks
    async def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("control plane tick failed")
            await asyncio.sleep(TICK)

    def tick(self) -> None:
        now = self.loop.time()
        for name, ctl in list(self.controllers.items()):
            ctl.tick(now, self.load(name))
        self.containers.tick(now)

    def peek_load(self, service: str) -> Load:
        """``load`` without consuming the activity seen since the last tick (metrics)."""
        return self.load(service, consume=False)

    def load(self, service: str, *, consume: bool = True) -> Load:
        in_flight: dict[str, int] = defaultdict(int)
        held = 0
        for worker in self._sinks:
            report = self._reports.get((worker, service))
            if report is None:
                continue
            held += report.held
            for instance, n in report.in_flight:
                in_flight[instance] += n
        served = self._served.pop(service, ()) if consume else self._served.get(service, ())
        active = frozenset(served)
        return Load(dict(in_flight), active, held)

    def _on_exit(self, handle: InstanceHandle, code: int, reason: str) -> None:
        inst = self.state.get(handle.id)
        if inst is None:
            return
        ctl = self.controllers.get(inst.service)
        if ctl is not None:
            ctl.on_exit(handle.id, code, reason)

    # ---------------------------------------------------------------- shutdown
    def hand_over(self, adopted: frozenset[str]) -> None:
        """A successor Guard serves now (binary restart). At its start it adopted the
        running containers of drivers that outlive Guard (docker) that fit its config,
        ``adopted`` (it said which on its ready pipe), so from here nothing may stop
        them: no idle sleeps, scale-downs or ``destroy_after``; at ``close`` those are
        released (a last usage reading), not stopped, and the rest are stopped as usual."""
        self.handing_over = True
        self.handed = adopted
        for ctl in self.controllers.values():
            ctl.hand_over()

    async def close(self) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
        for checker in self.health.values():
            checker.stop()
        await self.containers.close()
        handing_over = self.handing_over
        await asyncio.gather(
            *(
                c.release(self.handed) if handing_over and c.driver.outlives_guard else c.close()
                for c in self.controllers.values()
            )
        )
        for unhook in self._unhook:
            unhook()
        for driver in self._own_drivers:
            try:
                await driver.close()
            except DriverError as e:
                log.warning("closing driver %s: %s", driver.name, e)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
