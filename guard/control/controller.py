"""The lifecycle owner of one container service: start, probe, publish, drain, stop.

One ``ServiceController`` per ``container:`` service, all in the one control plane. It
starts instances when a wake asks for them (single flight: a wake that finds enough
instances starting or ready starts nothing), publishes them the moment their ready probe
passes, sizes the pool with the KPA autoscaler (``guard.autoscale.kpa``) from the load the
data plane reports, and retires instances by draining them: unpublished first, stopped only
once every worker reports nothing in flight on them (or ``stop_timeout`` passed).

A per-key service has no autoscaler: each key owns one instance, started by the first wake
for it and retired after ``sleep_after`` without activity.

Start failures (the driver refused, the instance exited before its probe passed, or it was
not ready in time) fail the held work at once with the reason, and back off: another start
waits 1 s, then 2, 4 ... up to 30 s after consecutive failures, and wakes meanwhile fail fast
with the last reason instead of looping hot.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from typing import Protocol

from guard.autoscale.kpa import Decision, KpaState, SampleWindow, decide
from guard.config.model import ScaleConfig, ServiceConfig
from guard.control.messages import WakeFailure
from guard.control.probe import InstanceExited, NotReadyInTime, wait_ready
from guard.control.state import ControlState, Instance, Phase
from guard.drivers.base import Driver, DriverError, DriverUnavailable, InstanceHandle

log = logging.getLogger("guard.control")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
CRASH_WINDOW = 10.0  # a ready instance dying this soon after ready counts as a failed start
DECISION_INTERVAL = 0.5  # autoscaler decisions (Knative: every 2 s)
_DRAIN_POLL = 0.02
_ids = itertools.count(1)
_RUN = os.urandom(3).hex()  # instance ids stay unique across Guard restarts


@dataclass(frozen=True, slots=True)
class Load:
    """The data plane's load on one service, summed over workers."""

    in_flight: dict[str, int]  # instance -> open work
    active: frozenset[str]  # instances that had work since the last tick
    held: int


class ControllerHost(Protocol):
    """What a controller needs from the control plane around it."""

    def publish(self, service: str) -> int:
        """Send the service's ready set to every worker; returns the publish's seq."""

    def fail(self, failure: WakeFailure) -> None: ...

    def drained(self, service: str, instance: str, seq: int) -> bool:
        """True once every worker applied ``seq`` and has nothing in flight on ``instance``."""

    def instance_started(self, inst: Instance) -> None: ...

    async def instance_stopping(self, inst: Instance) -> None: ...

    def instance_stopped(self, inst: Instance) -> None: ...

    async def instance_released(self, inst: Instance) -> None:
        """Handed to a successor Guard: its last usage reading by this one."""

    def instance_adopted(self, inst: Instance) -> None:
        """An adopted instance passed its probe: metered from now (or from when the Guard
        that left it has exited, while that one still runs and meters it)."""

    def event(self, event: str, inst: Instance | None, **fields: object) -> None:
        """A lifecycle event for the structured log (wake, ready, sleep, scale, error)."""

    def observe_start(self, service: str, outcome: str, phases: dict[str, float]) -> None:
        """A start ended (``outcome`` "ready" or an error code); seconds per phase:
        ``create``, ``start`` (driver calls), ``probe`` (process up to ready), ``total``."""


class ServiceController:
    def __init__(
        self,
        config: ServiceConfig,
        driver: Driver,
        state: ControlState,
        host: ControllerHost,
        *,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        assert config.container is not None
        self.driver = driver
        self.state = state
        self.host = host
        self.loop = loop
        self._tasks: set[asyncio.Task[None]] = set()
        self._exits: dict[str, asyncio.Future[str]] = {}
        self._failures = 0
        self._backoff_until = 0.0
        self._last_failure = ""
        self._kpa = KpaState()
        self._next_decision = 0.0
        self.last_decision: Decision | None = None
        self.cpu_window: SampleWindow | None = None
        self.closing = False
        # A successor Guard serves (binary restart) and adopted the running containers:
        # no decision of this one may stop them any more (see ``hand_over``).
        self.handing_over = False
        self.configure(config)

    def configure(self, config: ServiceConfig, *, retire: bool = True) -> None:
        """Apply a (new) config. A changed container spec retires the instances of the old
        one, unless ``retire`` is False (the caller replaces them itself: upgrades)."""
        assert config.container is not None
        old = getattr(self, "config", None)
        self.name = config.name
        self.config = config
        self.spec = config.container
        self.scale: ScaleConfig = config.scale or ScaleConfig()
        self.window = SampleWindow.for_scale(self.scale)
        if self.scale.target_cpu is not None:
            self.cpu_window = SampleWindow.for_scale(self.scale)
        if retire and old is not None and old.container != config.container:
            # A new image/command/env: instances of the old spec drain and stop; the next
            # wake (or the autoscaler, for min > 0) starts instances of the new one.
            for inst in self.instances():
                self.retire(inst, "config changed")

    # ---------------------------------------------------------------- queries
    def instances(self, *phases: Phase) -> list[Instance]:
        found = self.state.of_service(self.name)
        return [i for i in found if i.phase in phases] if phases else found

    # ------------------------------------------------------------------ waking
    def wake(self, key: str | None, demand: int) -> None:
        """Held work wants instances: start what is missing, exactly once."""
        if self.closing:
            return
        now = self.loop.time()
        if now < self._backoff_until:
            self.host.fail(
                WakeFailure(
                    self.name,
                    key,
                    "instance_start_failed",
                    f"{self._last_failure} (next start in {self._backoff_until - now:.1f}s)",
                )
            )
            return
        if self.config.per_key:
            assert key is not None
            inst = self.state.owner(self.name, key)
            if inst is not None and inst.phase in (Phase.STARTING, Phase.READY):
                if inst.phase is Phase.READY:
                    self.host.publish(self.name)  # a worker that missed it catches up
                return
            live = self.instances(Phase.STARTING, Phase.READY, Phase.DRAINING, Phase.STOPPING)
            if len(live) >= self.scale.max:
                self.host.fail(
                    WakeFailure(
                        self.name,
                        key,
                        "instance_limit",
                        f"service {self.name} runs its maximum of {self.scale.max} instances",
                    )
                )
                return
            self._start(key, "wake")
            return
        active = len(self.instances(Phase.STARTING, Phase.READY))
        want = min(self.scale.max, max(1, math.ceil(demand / self.scale.target_concurrency)))
        if want > active:
            # The autoscaler's windows have not seen this burst yet: record the count as one
            # of its decisions, so scale_down_delay keeps these instances instead of the
            # next tick draining what the wake just started.
            record = (*self._kpa.delay_record, (now, want))
            self._kpa = replace(self._kpa, delay_record=record)
        for _ in range(want - active):
            self._start(None, "wake")

    def start_instance(self, key: str | None, why: str) -> Instance:
        """Start one more instance now, whatever the load (an upgrade's replacement)."""
        return self._start(key, why)

    def _start(self, key: str | None, why: str) -> Instance:
        now = self.loop.time()
        label = key if key is not None else "i"
        inst = Instance(
            id=f"{self.name}-{label}-{_RUN}{next(_ids):x}"[:128],
            service=self.name,
            key=key,
            phase=Phase.STARTING,
            created_at=now,
        )
        self.state.put(inst)
        self.host.event("start", inst, reason=why)
        self._spawn(self._run_start(inst))
        return inst

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_start(self, inst: Instance) -> None:
        spec = self.spec
        exited: asyncio.Future[str] = self.loop.create_future()
        self._exits[inst.id] = exited
        t0 = self.loop.time()
        env = {"GUARD_SERVICE": self.name, "GUARD_INSTANCE": inst.id}
        if inst.key is not None:
            env["GUARD_KEY"] = inst.key
        code = "instance_start_failed"
        t_created = t_started = t0
        try:
            handle = await self.driver.create(spec, instance_id=inst.id, env_extra=env)
            inst.handle = handle
            self.state.put(inst)
            t_created = self.loop.time()
            if inst.phase is Phase.STARTING:
                inst.handle = handle = await self.driver.start(handle)
                inst.started_wall = time.time()
                self.state.put(inst)
                self.host.instance_started(inst)
            t_started = self.loop.time()
            if inst.phase is Phase.STARTING:
                await wait_ready(handle, spec.ready, timeout=self.scale.wake_timeout, exited=exited)
        except InstanceExited as e:
            reason = f"instance exited before it was ready: {e}"
        except NotReadyInTime as e:
            code, reason = "wake_timeout", f"instance {e}"
        except DriverUnavailable as e:
            # The daemon is away (restarting): no sign the app is broken, so no escalation.
            reason, self._failures = f"cannot start instance: {e}", 0
        except DriverError as e:
            reason = f"cannot start instance: {e}"
        else:
            if inst.phase is Phase.STARTING:
                self._became_ready(inst, t0, t_created, t_started)
                return
            reason = inst.stop_reason or "stopped while starting"
        finally:
            self._exits.pop(inst.id, None)
        if inst.phase is Phase.STARTING:
            self._start_failed(inst, code, reason)
            self.host.observe_start(
                self.name, code, _phases(t0, t_created, t_started, self.loop.time())
            )
        # else: retired while starting (shutdown, config change): not a failure
        await self._dispose(inst, reason)

    def _became_ready(self, inst: Instance, t0: float, t_created: float, t_started: float) -> None:
        now = self.loop.time()
        inst.phase = Phase.READY
        inst.ready_at = inst.last_active = now
        self.state.put(inst)
        self._failures = 0
        self.host.publish(self.name)
        phases = _phases(t0, t_created, t_started, now)
        self.host.observe_start(self.name, "ready", phases)
        self.host.event("ready", inst, **{f"{k}_ms": round(v * 1000, 1) for k, v in phases.items()})

    def _start_failed(self, inst: Instance, code: str, reason: str) -> None:
        self._failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self._failures - 1))
        self._backoff_until = self.loop.time() + delay
        self._last_failure = reason
        inst.exit_reason = reason
        self.host.event("start_failed", inst, error=reason, backoff_s=delay)
        self.host.fail(WakeFailure(self.name, inst.key, code, reason))

    # -------------------------------------------------------------- adopting
    def adopt(self, handle: InstanceHandle, key: str | None) -> Instance:
        """Take over a running instance an earlier Guard left (``guard.control.adoption``;
        the driver already adopted it): probed like a new one, then published."""
        inst = Instance(
            id=handle.id,
            service=self.name,
            key=key,
            phase=Phase.STARTING,
            created_at=self.loop.time(),
            handle=handle,
            started_wall=time.time(),
            metered=False,  # until the plane says (instance_adopted): the earlier Guard's
        )
        self.state.put(inst)
        self.host.event("adopt", inst, container=handle.container_id)
        self._spawn(self._run_adopt(inst, handle))
        return inst

    async def _run_adopt(self, inst: Instance, handle: InstanceHandle) -> None:
        exited: asyncio.Future[str] = self.loop.create_future()
        self._exits[inst.id] = exited
        t0 = self.loop.time()
        try:
            await wait_ready(
                handle, self.spec.ready, timeout=self.scale.wake_timeout, exited=exited
            )
        except (InstanceExited, NotReadyInTime) as e:
            reason = f"adopted instance not ready: {e}"
        else:
            if inst.phase is Phase.STARTING:
                inst.phase = Phase.READY
                inst.ready_at = inst.last_active = self.loop.time()
                self.state.put(inst)
                self.host.instance_started(inst)
                self.host.instance_adopted(inst)
                self.host.publish(self.name)
                probe_ms = round((inst.ready_at - t0) * 1000, 1)
                self.host.event("ready", inst, adopted=True, probe_ms=probe_ms)
                return
            reason = inst.stop_reason or "stopped while adopting"
        finally:
            self._exits.pop(inst.id, None)
        await self._dispose(inst, reason)

    # ----------------------------------------------------------------- exits
    def on_exit(self, instance_id: str, code: int, reason: str) -> None:
        """The driver saw an instance of this service exit."""
        exited = self._exits.get(instance_id)
        if exited is not None:
            if not exited.done():
                exited.set_result(reason)  # the start path reports it
            return
        inst = self.state.get(instance_id)
        if inst is None or inst.phase in (Phase.STOPPING, Phase.STOPPED):
            return
        inst.exit_reason = reason
        if inst.phase is Phase.READY:
            now = self.loop.time()
            self.host.event("crash", inst, error=reason)
            if inst.ready_at is not None and now - inst.ready_at < CRASH_WINDOW:
                self._start_failed(inst, "instance_start_failed", f"instance crashed: {reason}")
        inst.phase = Phase.STOPPING
        self.state.put(inst)
        self.host.publish(self.name)
        self._spawn(self._dispose(inst, reason))

    # -------------------------------------------------------------- retiring
    def retire(self, inst: Instance, reason: str, timeout: float | None = None) -> None:
        """Drain ``inst`` (up to ``timeout``, default ``stop_timeout``), then stop it."""
        if inst.phase not in (Phase.STARTING, Phase.READY):
            return
        self._spawn(self._retire(inst, reason, timeout))

    async def _retire(self, inst: Instance, reason: str, timeout: float | None = None) -> None:
        was_ready = inst.phase is Phase.READY
        inst.phase = Phase.DRAINING
        inst.stop_reason = reason
        self.state.put(inst)
        if not was_ready:
            # Still starting: its start task sees the phase change and disposes of it.
            exited = self._exits.get(inst.id)
            if exited is not None and not exited.done():
                exited.set_result("stopped while starting")
            return
        seq = self.host.publish(self.name)
        self.host.event("drain", inst, reason=reason)
        deadline = self.loop.time() + (self.spec.stop_timeout if timeout is None else timeout)
        while (
            inst.phase is Phase.DRAINING
            and not self.host.drained(self.name, inst.id, seq)
            and self.loop.time() < deadline
        ):
            await asyncio.sleep(_DRAIN_POLL)
        if inst.phase is Phase.DRAINING:
            await self._dispose(inst, reason)

    async def _dispose(self, inst: Instance, reason: str) -> None:
        """Stop and remove the instance's driver resources, then forget it."""
        if inst.phase is Phase.STOPPED:
            return
        inst.phase = Phase.STOPPING
        inst.stop_reason = inst.stop_reason or reason
        self.state.put(inst)
        handle = inst.handle
        if handle is not None:
            await self.host.instance_stopping(inst)  # the last usage reading
            try:
                await self.driver.stop(handle, self.spec.stop_timeout)
            except DriverError as e:
                self.host.event("driver_error", inst, error=f"stop: {e}")
            try:
                await self.driver.remove(handle)
            except DriverError as e:
                self.host.event("driver_error", inst, error=f"remove: {e}")
        inst.phase = Phase.STOPPED
        self.host.instance_stopped(inst)
        self.host.event("stopped", inst, reason=inst.stop_reason, exit=inst.exit_reason)
        self.state.remove(inst.id)

    # ------------------------------------------------------------------ ticks
    def tick(self, now: float, load: Load) -> None:
        """Called by the control plane every tick with the workers' summed load."""
        instances = self.instances()
        for inst in instances:
            if load.in_flight.get(inst.id, 0) > 0 or inst.id in load.active:
                inst.last_active = now
        if self.closing or self.handing_over:
            return
        if self.config.per_key:
            for inst in instances:
                if inst.phase is Phase.READY and now - inst.last_active >= self.scale.sleep_after:
                    self.retire(inst, "idle")
            return
        ready = [i for i in instances if i.phase is Phase.READY]
        concurrency = sum(load.in_flight.get(i.id, 0) for i in ready) + load.held
        self.window.add(now, concurrency)
        if now < self._next_decision:
            return
        self._next_decision = now + DECISION_INTERVAL
        decision, self._kpa = decide(
            self.scale,
            self.window,
            ready=len(ready),
            state=self._kpa,
            now=now,
            cpu=self.cpu_window,
        )
        previous, self.last_decision = self.last_decision, decision
        active = len(ready) + len(self.instances(Phase.STARTING))
        if decision.desired > active:
            if now >= self._backoff_until:
                self.host.event(
                    "scale", None, desired=decision.desired, active=active, reason=decision.reason
                )
                for _ in range(decision.desired - active):
                    self._start(None, "scale up")
        elif decision.desired < len(ready) and decision.desired < active:
            excess = min(len(ready), active - decision.desired)
            why = "idle" if decision.desired == 0 else "scale down"
            self.host.event(
                "scale", None, desired=decision.desired, active=active, reason=decision.reason
            )
            # Least loaded first, then the newest (the oldest has the warmest caches).
            victims = sorted(
                ready, key=lambda i: (load.in_flight.get(i.id, 0), -(i.ready_at or 0.0))
            )
            for inst in victims[:excess]:
                self.retire(inst, why)
        elif previous is not None and previous.panicking != decision.panicking:
            self.host.event(
                "panic" if decision.panicking else "panic_over", None, reason=decision.reason
            )

    def observe_cpu(self, now: float, utilization: float) -> None:
        if self.cpu_window is not None:
            self.cpu_window.add(now, utilization)

    # -------------------------------------------------------------- shutdown
    def hand_over(self) -> None:
        """A successor Guard serves now (a binary restart) and has adopted the running
        containers: no more idle sleeps or scale-downs here (they would stop a container
        the successor serves). Wakes for requests still in flight are still served."""
        self.handing_over = True

    async def release(self, adopted: frozenset[str]) -> None:
        """Shutdown after a handover, on a driver whose instances outlive Guard: the
        ready instances the successor adopted (``adopted``) are its own now, so each gets
        its last usage reading and is forgotten, not stopped. The rest stop as in
        ``close``."""
        self.closing = True

        async def release(inst: Instance, handle: InstanceHandle) -> None:
            await self.host.instance_released(inst)
            self.driver.release(handle)
            self.state.remove(inst.id)
            self.host.event("released", inst, container=handle.container_id)

        handed = [
            i for i in self.instances(Phase.READY) if i.handle is not None and i.id in adopted
        ]
        await asyncio.gather(*(release(i, i.handle) for i in handed if i.handle is not None))
        await self.close()

    async def close(self) -> None:
        """Stop every instance (draining ready ones up to stop_timeout)."""
        self.closing = True
        for inst in self.instances():
            self.retire(inst, "shutdown")
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _phases(t0: float, created: float, started: float, end: float) -> dict[str, float]:
    return {
        "create": created - t0,
        "start": started - created,
        "probe": end - started,
        "total": end - t0,
    }
