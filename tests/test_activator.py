"""The activator's two halves without Guard around them.

``ContainerService`` (data plane) with a recording link instead of a control plane, and
``ServiceController`` (control plane) with a scripted driver instead of processes: holding
order, queue bounds, wake coalescing, per-key routing, concurrency limits, single flight,
start failures with backoff, and drains that wait for in-flight work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guard.config.model import ContainerSpec, ReadyProbe, ScaleConfig, ServiceConfig
from guard.control.controller import Load, ServiceController
from guard.control.messages import Endpoint, LoadReport, ServiceEndpoints, WakeFailure
from guard.control.state import Instance, MemoryState, Phase
from guard.drivers.base import (
    Driver,
    DriverError,
    ExitCallback,
    ExitListeners,
    InstanceHandle,
    InstanceState,
    InstanceStats,
    InstanceStatus,
)
from guard.errors import GuardError, QueueFull
from guard.proxy.deadlines import DeadlineSweeper
from guard.upstream.container_service import ContainerService
from guard.upstream.pool import UpstreamPool, UpstreamSettings
from guard.upstream.resolver import Resolver

# ------------------------------------------------------------------------- data plane


class RecordingLink:
    def __init__(self) -> None:
        self.wakes: list[tuple[str, str | None, int]] = []
        self.reports: list[LoadReport] = []

    def wake(self, service: str, key: str | None, demand: int) -> None:
        self.wakes.append((service, key, demand))

    def report(self, report: LoadReport) -> None:
        self.reports.append(report)


class Held:
    def __init__(self) -> None:
        self.pool: UpstreamPool | None = None
        self.error: GuardError | None = None

    def on_woken(self, pool: UpstreamPool, waited: float) -> None:
        self.pool = pool

    def on_wake_failed(self, error: GuardError) -> None:
        self.error = error


def service_config(*, per_key: bool = False, **scale: Any) -> ServiceConfig:
    return ServiceConfig(
        name="svc",
        container=ContainerSpec(driver="process", command=("true",)),
        scale=ScaleConfig(**scale),
        per_key=per_key,
    )


def make_service(
    loop: asyncio.AbstractEventLoop, config: ServiceConfig
) -> tuple[ContainerService, RecordingLink]:
    link = RecordingLink()
    svc = ContainerService(
        config,
        UpstreamSettings("httptools", 65536, 100, 5.0, 60.0),
        loop=loop,
        resolver=Resolver(),
        sweeper=DeadlineSweeper(loop, 1.0),
        link=link,
    )
    return svc, link


def endpoints(seq: int, *eps: tuple[str, int, str | None]) -> ServiceEndpoints:
    return ServiceEndpoints("svc", seq, tuple(Endpoint(i, "127.0.0.1", p, k) for i, p, k in eps))


def run(coro_fn: Callable[[asyncio.AbstractEventLoop], Any]) -> Any:
    async def main() -> Any:
        return await coro_fn(asyncio.get_running_loop())

    return asyncio.run(main())


def test_held_work_is_released_in_order_with_one_wake_per_iteration() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        svc, link = make_service(loop, service_config(queue=10, target_concurrency=5))
        assert svc.pick([], "1.1.1.1", b"/") is None
        waiters = [Held() for _ in range(7)]
        for w in waiters:
            svc.hold(w, None, [], "1.1.1.1", b"/")
        await asyncio.sleep(0)
        assert link.wakes == [("svc", None, 7)]  # one message for seven requests
        svc.apply_endpoints(endpoints(1, ("a", 1001, None)))
        assert all(w.pool is not None and w.pool.backend.name == "a" for w in waiters)
        assert svc.held == 0
        assert link.reports[-1].seq == 1  # applied updates are acknowledged at once

    run(body)


def test_queue_bound_and_cancel() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        svc, _ = make_service(loop, service_config(queue=2))
        first, second = Held(), Held()
        h1 = svc.hold(first, None, [], "", b"/")
        svc.hold(second, None, [], "", b"/")
        with pytest.raises(QueueFull):
            svc.hold(Held(), None, [], "", b"/")
        svc.cancel(h1)
        third = Held()
        svc.hold(third, None, [], "", b"/")
        svc.apply_endpoints(endpoints(1, ("a", 1001, None)))
        assert first.pool is None and second.pool is not None and third.pool is not None

    run(body)


def test_new_arrivals_queue_behind_held_work() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        svc, _ = make_service(loop, service_config(max_concurrency=1))
        svc.apply_endpoints(endpoints(1, ("a", 1001, None)))
        pool = svc.pick([], "", b"/")
        assert pool is not None
        pool.backend.in_flight += 1  # as the proxy does
        assert svc.pick([], "", b"/") is None  # at max_concurrency
        held = Held()
        svc.hold(held, None, [], "", b"/")
        pool.backend.in_flight -= 1
        assert svc.pick([], "", b"/") is None  # the held request goes first
        svc.done()
        assert held.pool is pool

    run(body)


def test_per_key_routes_each_key_to_its_own_instance() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        svc, link = make_service(loop, service_config(per_key=True))
        a, b = Held(), Held()
        svc.hold(a, "alice", [], "", b"/")
        svc.hold(b, "bob", [], "", b"/")
        await asyncio.sleep(0)
        assert sorted(k for _, k, _ in link.wakes) == ["alice", "bob"]
        svc.apply_endpoints(endpoints(1, ("i-alice", 1001, "alice")))
        assert a.pool is not None and a.pool.backend.name == "i-alice"
        assert b.pool is None  # bob's instance is not ready: bob keeps waiting
        svc.wake_failed(WakeFailure("svc", "bob", "instance_limit", "full"))
        assert b.error is not None and b.error.code == "instance_limit"
        assert svc.pick([], "", b"/", "alice") is a.pool
        assert svc.pick([], "", b"/", "bob") is None
        assert svc.key_of("Alice-1", []) == "Alice-1"
        with pytest.raises(GuardError):
            svc.key_of("a.b", [])
        with pytest.raises(GuardError):
            svc.key_of(None, [])

    run(body)


def test_retired_instance_is_reported_until_its_work_ends() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        svc, link = make_service(loop, service_config())
        svc.apply_endpoints(endpoints(1, ("a", 1001, None), ("b", 1002, None)))
        pool = svc.pick([], "", b"/")
        assert pool is not None
        busy = pool.backend.name
        pool.backend.in_flight += 1
        other = "b" if busy == "a" else "a"
        svc.apply_endpoints(endpoints(2, (other, 1003 if other == "a" else 1002, None)))
        report = link.reports[-1]
        assert report.seq == 2 and dict(report.in_flight)[busy] == 1
        assert svc.pick([], "", b"/").backend.name == other  # type: ignore[union-attr]
        pool.backend.in_flight -= 1
        assert busy not in dict(svc.report().in_flight)

    run(body)


# ---------------------------------------------------------------------- control plane


class ScriptedDriver(Driver):
    """Instances that 'run' without processes; ``fail`` makes start() raise."""

    name = "fake"

    def __init__(self) -> None:
        self.created: list[str] = []
        self.stopped: list[str] = []
        self.fail: str | None = None
        self.listeners = ExitListeners()

    async def create(
        self, spec: ContainerSpec, *, instance_id: str, env_extra: dict[str, str]
    ) -> InstanceHandle:
        self.created.append(instance_id)
        return InstanceHandle(instance_id, "fake", "127.0.0.1", 1)

    async def start(self, handle: InstanceHandle) -> InstanceHandle:
        await asyncio.sleep(0.01)
        if self.fail:
            raise DriverError(self.fail)
        return handle

    async def stop(self, handle: InstanceHandle, timeout: float) -> None:
        self.stopped.append(handle.id)

    async def remove(self, handle: InstanceHandle) -> None:
        pass

    async def inspect(self, handle: InstanceHandle) -> InstanceState:
        return InstanceState(InstanceStatus.RUNNING)

    async def stats(self, handle: InstanceHandle) -> InstanceStats:
        return InstanceStats(0.0, 0, 0.0)

    def on_exit(self, callback: ExitCallback) -> Callable[[], None]:
        return self.listeners.add(callback)

    async def close(self) -> None:
        pass


class FakeHost:
    def __init__(self, state: MemoryState) -> None:
        self.state = state
        self.published: list[tuple[str, ...]] = []
        self.failures: list[WakeFailure] = []
        self.in_flight: dict[str, int] = {}
        self.seq = 0

    def publish(self, service: str) -> int:
        self.seq += 1
        ready = [i.id for i in self.state.of_service(service) if i.phase is Phase.READY]
        self.published.append(tuple(sorted(ready)))
        return self.seq

    def fail(self, failure: WakeFailure) -> None:
        self.failures.append(failure)

    def drained(self, service: str, instance: str, seq: int) -> bool:
        return self.in_flight.get(instance, 0) == 0

    def instance_started(self, inst: Instance) -> None:
        pass

    async def instance_stopping(self, inst: Instance) -> None:
        pass

    def observe_start(self, service: str, outcome: str, phases: dict[str, float]) -> None:
        pass

    def instance_stopped(self, inst: Instance) -> None:
        pass

    def event(self, event: str, inst: Instance | None, **fields: object) -> None:
        pass


def controller(
    loop: asyncio.AbstractEventLoop, *, per_key: bool = False, **scale: Any
) -> tuple[ServiceController, ScriptedDriver, FakeHost]:
    cfg = ServiceConfig(
        name="svc",
        container=ContainerSpec(
            driver="fake", command=("x",), ready=ReadyProbe(delay=0.01), stop_timeout=1.0
        ),
        scale=ScaleConfig(**scale),
        per_key=per_key,
    )
    state = MemoryState()
    driver = ScriptedDriver()
    host = FakeHost(state)
    return ServiceController(cfg, driver, state, host, loop=loop), driver, host


async def settle() -> None:
    await asyncio.sleep(0.1)


def test_wakes_are_single_flight() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        ctl, driver, host = controller(loop, target_concurrency=10, max=3)
        for demand in (1, 5, 9, 10):
            ctl.wake(None, demand)
        assert len(driver.created) == 0 or len(ctl.instances()) == 1
        await settle()
        assert len(ctl.instances(Phase.READY)) == 1
        ctl.wake(None, 25)  # 25 / 10 -> 3 instances: two more
        ctl.wake(None, 25)
        await settle()
        assert len(driver.created) == 3
        ctl.wake(None, 1000)  # capped at max
        await settle()
        assert len(driver.created) == 3
        assert host.published[-1] == tuple(sorted(driver.created))

    run(body)


def test_start_failure_fails_the_wake_and_backs_off() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        ctl, driver, host = controller(loop)
        driver.fail = "image missing"
        ctl.wake(None, 1)
        await settle()
        assert [f.code for f in host.failures] == ["instance_start_failed"]
        assert "image missing" in host.failures[0].message
        ctl.wake(None, 1)  # within the 1 s backoff: fails at once, starts nothing
        assert len(driver.created) == 1 and len(host.failures) == 2
        assert "next start in" in host.failures[1].message
        assert ctl.instances() == []

    run(body)


def test_per_key_wake_and_limit() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        ctl, driver, host = controller(loop, per_key=True, max=2)
        ctl.wake("a", 1)
        ctl.wake("a", 1)
        ctl.wake("b", 1)
        await settle()
        assert len(driver.created) == 2
        ctl.wake("c", 1)
        assert host.failures and host.failures[-1].code == "instance_limit"

    run(body)


def test_drain_waits_for_in_flight_work() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        ctl, driver, host = controller(loop, per_key=True, sleep_after=0.05)
        ctl.wake("a", 1)
        await settle()
        (inst,) = ctl.instances(Phase.READY)
        host.in_flight[inst.id] = 1
        now = loop.time()
        ctl.tick(now, Load({inst.id: 1}, frozenset(), 0))  # busy: not idle
        assert inst.phase is Phase.READY
        ctl.tick(now + 1, Load({}, frozenset(), 0))  # idle for 1 s > sleep_after
        await asyncio.sleep(0.05)
        assert inst.phase is Phase.DRAINING and driver.stopped == []
        host.in_flight[inst.id] = 0
        await asyncio.sleep(0.1)
        assert driver.stopped == [inst.id] and ctl.instances() == []

    run(body)


def test_exit_while_starting_fails_fast(tmp_path: Path) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        ctl, _, host = controller(loop)
        ctl.spec = ContainerSpec(driver="fake", command=("x",), ready=ReadyProbe(tcp=True))
        ctl.wake(None, 1)
        await asyncio.sleep(0.05)  # started, probing a port nothing listens on
        (inst,) = ctl.instances()
        ctl.on_exit(inst.id, 3, "exited with code 3")
        await asyncio.sleep(0.05)
        assert host.failures and "exited with code 3" in host.failures[0].message
        assert ctl.instances() == []

    run(body)


def test_wake_started_instances_survive_the_next_autoscaler_tick() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        ctl, driver, _ = controller(loop, target_concurrency=10, max=5, scale_down_delay=30.0)
        ctl.wake(None, 30)  # a burst the autoscaler's windows have not seen
        await settle()
        assert len(ctl.instances(Phase.READY)) == 3
        now = loop.time()
        for step in range(10):  # quiet ticks: the stable average is ~0
            ctl.tick(now + step * 0.6, Load({}, frozenset(), 0))
        await settle()
        assert len(ctl.instances(Phase.READY)) == 3 and driver.stopped == []

    run(body)


def test_target_cpu_adds_instances() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        ctl, driver, _ = controller(
            loop, target_concurrency=100, max=4, target_cpu=0.5, scale_down_delay=0.0
        )
        ctl.wake(None, 1)
        await settle()
        (inst,) = ctl.instances(Phase.READY)
        now = loop.time()
        for step in range(4):  # one request in flight, but the instance runs at 100% CPU
            t = now + step * 0.6
            ctl.observe_cpu(t, 1.0)
            ctl.tick(t, Load({inst.id: 1}, frozenset({inst.id}), 0))
        await settle()
        # cpu 1.0 of the limit x 1 ready / target 0.5 -> 2 instances
        assert len(driver.created) == 2
        assert ctl.last_decision is not None and ctl.last_decision.desired_cpu == 2

    run(body)


def test_docker_guard_id_is_per_config(tmp_path: Path) -> None:
    from guard.config import load_config
    from guard.control.plane import docker_guard_id

    def write(directory: Path, extra: str = "") -> Path:
        directory.mkdir()
        (directory / "routes.yaml").write_text("routes: []\n")
        path = directory / "guard.yaml"
        path.write_text(
            "routes: routes.yaml\nlisteners:\n  web: {protocol: http, address: 127.0.0.1:1}\n"
            f"drivers:\n  docker: {{network: host{extra}}}\n"
        )
        return path

    a, b = write(tmp_path / "a"), write(tmp_path / "b")
    id_a = docker_guard_id(load_config(a))
    assert id_a == docker_guard_id(load_config(a))  # a restart finds its own containers
    assert id_a != docker_guard_id(load_config(b))  # another Guard never reaps them
    assert id_a.startswith("guard-")
    c = write(tmp_path / "c", ", guard_id: edge-1")
    assert docker_guard_id(load_config(c)) == "edge-1"
