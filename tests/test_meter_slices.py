"""UsageMeter's slices when driver readings overlap (a docker stats call can take a second):
a periodic reading still under way when the instance's last slice is written must not
start a second sequence, and an adopted instance is billed from ``begin`` on, never from
its adoption while the Guard that left it still meters it. A fake driver whose readings
finish when the test says, a recording ledger; no IO."""

from __future__ import annotations

import asyncio
import itertools
import time
from types import SimpleNamespace
from typing import Any

from guard.config.model import ContainerSpec
from guard.control.metering import UsageMeter
from guard.control.state import Instance, Phase
from guard.drivers.base import InstanceHandle, InstanceStats


class GatedDriver:
    """stats() returns the cumulative CPU given in ``cpu`` once the test releases it."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.gates: list[asyncio.Event] = []

    async def stats(self, handle: InstanceHandle) -> InstanceStats:
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return InstanceStats(cpu_seconds=self.cpu, memory_bytes=1 << 20, at=time.monotonic())

    def release(self, index: int) -> None:
        self.gates[index].set()


class Ledger:
    def __init__(self) -> None:
        self.slices: list[Any] = []
        self.ends: dict[str, float] = {}  # what an earlier Guard flushed: instance -> end

    def record(self, item: Any) -> None:
        self.slices.append(item)

    def last_end(self, instance: str) -> float | None:
        return self.ends.get(instance)


def _setup(metered: bool = True) -> tuple[UsageMeter, GatedDriver, Ledger, Instance]:
    driver = GatedDriver()
    ctl = SimpleNamespace(driver=driver, spec=ContainerSpec(driver="docker", image="i"))
    plane = SimpleNamespace(
        controllers={"svc": ctl},
        stats=SimpleNamespace(observe_usage=lambda *a: None),
        containers=SimpleNamespace(tenant_of=lambda s: None),
        routes=SimpleNamespace(services={}),
    )
    ledger = Ledger()
    meter = UsageMeter(plane, ledger, 1.0)  # type: ignore[arg-type]
    inst = Instance(
        id="svc-1",
        service="svc",
        key=None,
        phase=Phase.READY,
        created_at=0.0,
        handle=InstanceHandle("svc-1", "docker", "127.0.0.1", 1),
        started_wall=time.time() - 5,
        metered=metered,
    )
    ctl.instances = lambda *phases: [i for i in [inst] if not phases or i.phase in phases]
    ctl.observe_cpu = lambda now, utilization: None
    return meter, driver, ledger, inst


async def _until(cond: Any) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("never")


def _assert_end_to_end(slices: list[Any]) -> None:
    ordered = sorted(slices, key=lambda s: s.start)
    for a, b in itertools.pairwise(ordered):
        assert b.start >= a.end, f"billed twice: {[(s.start, s.end) for s in ordered]}"


def test_a_reading_under_way_at_the_last_slice_is_dropped() -> None:
    async def run() -> None:
        meter, driver, ledger, inst = _setup()
        periodic = asyncio.create_task(meter.sample())
        await _until(lambda: len(driver.gates) == 1)
        stopping = asyncio.create_task(meter.instance_stopping(inst))
        await _until(lambda: len(driver.gates) == 2)
        driver.cpu = 2.0
        driver.release(1)  # the last slice is written first
        await stopping
        driver.release(0)
        await periodic
        assert len(ledger.slices) == 1, [(s.start, s.end) for s in ledger.slices]
        (last,) = ledger.slices
        assert last.stopped_at is not None and last.cpu_seconds == 2.0
        assert last.start == inst.started_wall

    asyncio.run(run())


def test_an_adopted_instance_is_billed_from_begin() -> None:
    async def run() -> None:
        meter, driver, ledger, inst = _setup(metered=False)
        await meter.sample()  # still the earlier Guard's: no reading, no slice
        assert driver.gates == [] and ledger.slices == []
        before = time.time()
        begin = asyncio.create_task(meter.begin(inst))
        await _until(lambda: len(driver.gates) == 1)
        # It stops while the first reading is still under way: billed from begin, with
        # the driver's adopted-instance CPU (counted from its first reading).
        stopping = asyncio.create_task(meter.instance_stopping(inst))
        await _until(lambda: len(driver.gates) == 2)
        driver.cpu = 0.5
        driver.release(1)
        await stopping
        driver.release(0)
        await begin
        (last,) = ledger.slices
        assert last.start >= before and last.start > inst.started_wall
        assert last.started_at is None  # its start is the earlier Guard's record
        assert last.cpu_seconds == 0.5
        _assert_end_to_end(ledger.slices)

    asyncio.run(run())


def test_released_then_nothing_more() -> None:
    async def run() -> None:
        meter, driver, ledger, inst = _setup()
        periodic = asyncio.create_task(meter.sample())
        await _until(lambda: len(driver.gates) == 1)
        driver.cpu = 1.0
        driver.release(0)
        await periodic
        releasing = asyncio.create_task(meter.instance_released(inst))
        await _until(lambda: len(driver.gates) == 2)
        driver.cpu = 1.5
        driver.release(1)
        await releasing
        await meter.sample()  # the successor's now: this Guard reads it no more
        assert len(driver.gates) == 2
        first, second = ledger.slices
        assert second.start == first.end and second.stopped_at is None
        assert (first.cpu_seconds, second.cpu_seconds) == (1.0, 0.5)

    asyncio.run(run())


def test_an_adopted_instance_resumes_where_the_ledger_ends() -> None:
    async def run() -> None:
        meter, driver, ledger, inst = _setup(metered=False)
        ledger.ends["svc-1"] = left_at = time.time() - 1.5  # the earlier Guard's last slice
        begin = asyncio.create_task(meter.begin(inst))
        await _until(lambda: len(driver.gates) == 1)
        driver.release(0)
        await begin
        periodic = asyncio.create_task(meter.sample())
        await _until(lambda: len(driver.gates) == 2)
        driver.cpu = 0.25
        driver.release(1)
        await periodic
        (first,) = ledger.slices
        assert first.start == left_at and first.cpu_seconds == 0.25

    asyncio.run(run())
