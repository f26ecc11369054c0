"""Containers made through the admin API (``POST /v1/containers``), on the control plane.

A container is a record (what was asked for: image or command, resources, ports, tags,
lifecycle, owning tenant) kept behind ``ControlState``, plus its own per-key container
service ``ctr-<id>`` whose one key is the id. That service is an ordinary
``ServiceController``: single-flight starts, the ready probe, ``sleep_after`` idling,
draining before a stop, backoff after failed starts, usage metering. So a container is
woken by a request to its address exactly as a per-key instance is, and "stopped" is
"asleep": the next request (or ``POST .../start``) starts it again.

The data plane learns which containers exist from ``ContainerUpdate`` messages (sent to
every attached worker, in chunks on attach) and routes ``{id}-{port}.{containers.domain}``
to the container's service.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

from guard.config.model import ContainerSpec, ScaleConfig, ServiceConfig
from guard.control.controller import ServiceController
from guard.control.messages import ContainerRoute, ContainerUpdate, WakeFailure
from guard.control.state import Instance, Phase
from guard.drivers.base import DriverError, last_lines

if TYPE_CHECKING:
    from guard.control.container_store import ContainerStore
    from guard.control.plane import ControlPlane

log = logging.getLogger("guard.control")
audit = logging.getLogger("guard.audit")

SERVICE_PREFIX = "ctr-"
ID_BYTES = 8  # 16 hex characters: unguessable enough to be an address, short for a label
WAKE_TIMEOUT = 60.0  # a held request, or ?wait_ready, waits this long for a first start
QUEUE = 1000
CHUNK = 500  # container routes per message to a newly attached worker (the link's line bound)
_POLL = 0.01
APPLY_TIMEOUT = 2.0  # how long a change waits for the workers to apply it
KEPT_LOGS = 256 * 1024  # bytes of a stopped instance's output kept for GET .../logs


@dataclass(frozen=True, slots=True)
class PortSpec:
    name: str
    protocol: str  # http | tcp | udp
    internal_port: int
    public_port: int | None = None  # tcp/udp: the listener's port, from containers.tcp_ports


@dataclass(frozen=True, slots=True)
class Lifecycle:
    sleep_after: float | None = None  # None: runs until stopped
    destroy_after: float | None = None  # None: kept until deleted


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    id: str
    tenant: str  # "*" for the operator's token or an open API
    spec: ContainerSpec
    ports: tuple[PortSpec, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    group: str | None = None  # ``service`` in the API: a label to list containers by
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    created_at: float = 0.0  # unix time
    deleting: bool = False

    @property
    def service(self) -> str:
        return service_name(self.id)


def service_name(container_id: str) -> str:
    return f"{SERVICE_PREFIX}{container_id}"


def new_id() -> str:
    return secrets.token_hex(ID_BYTES)


def service_config(record: ContainerRecord) -> ServiceConfig:
    """The per-key service that runs ``record``: one key (its id), at most one instance
    taking work (a second only while the first drains, e.g. across a stop and a wake)."""
    sleep = record.lifecycle.sleep_after
    return ServiceConfig(
        name=record.service,
        container=record.spec,
        scale=ScaleConfig(
            min=0,
            max=2,
            sleep_after=math.inf if sleep is None else sleep,
            wake_timeout=WAKE_TIMEOUT,
            queue=QUEUE,
        ),
        per_key=True,
    )


def container_route(record: ContainerRecord) -> ContainerRoute:
    return ContainerRoute(
        id=record.id,
        service=record.service,
        ports=tuple((p.name, p.protocol, p.public_port or 0) for p in record.ports),
        wake_timeout=WAKE_TIMEOUT,
        queue=QUEUE,
        accepting=not record.deleting,
    )


def state_of(instances: list[Instance]) -> str:
    """One word for a container: running | starting | stopping | stopped."""
    phases = {i.phase for i in instances}
    if Phase.READY in phases:
        return "running"
    if Phase.STARTING in phases:
        return "starting"
    if phases & {Phase.DRAINING, Phase.STOPPING}:
        return "stopping"
    return "stopped"


class StartFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ContainerManager:
    """Creates, starts, stops and deletes API containers through the control plane."""

    def __init__(self, plane: ControlPlane, store: ContainerStore | None = None) -> None:
        self.plane = plane
        self.state = plane.state
        self.store = store  # None: records live as long as this process
        self._save_lock = asyncio.Lock()
        self._failures: dict[str, WakeFailure] = {}  # container id -> last failed start
        self._asleep_since: dict[str, float] = {}  # loop time its last instance went
        self._deletes: dict[str, asyncio.Task[None]] = {}
        self._last_logs: dict[str, bytes] = {}  # container id -> its last instance's output

    # ------------------------------------------------------------------ queries
    def get(self, container_id: str) -> ContainerRecord | None:
        return self.state.get_container(container_id)

    def records(self) -> list[ContainerRecord]:
        return self.state.containers()

    def instances(self, record: ContainerRecord) -> list[Instance]:
        return self.state.of_service(record.service)

    def owns(self, service: str) -> bool:
        return service.startswith(SERVICE_PREFIX) and (
            self.state.get_container(service[len(SERVICE_PREFIX) :]) is not None
        )

    def _current(self, record: ContainerRecord) -> Instance | None:
        """The newest instance the driver still holds (running, starting or stopping)."""
        live = [
            i
            for i in self.instances(record)
            if i.handle is not None and i.phase is not Phase.STOPPED
        ]
        return max(live, key=lambda i: i.created_at) if live else None

    async def logs(self, record: ContainerRecord, tail: int | None) -> bytes:
        """Output of its current instance; asleep, what its last one wrote before it stopped."""
        inst = self._current(record)
        ctl = self.plane.controllers.get(record.service)
        if inst is not None and inst.handle is not None and ctl is not None:
            try:
                return await ctl.driver.logs(inst.handle, tail)
            except DriverError:
                pass  # stopped meanwhile: what was kept
        return last_lines(self._last_logs.get(record.id, b""), tail)

    async def follow_logs(self, record: ContainerRecord, tail: int | None) -> AsyncIterator[bytes]:
        """The last ``tail`` lines, then output as it is written, until the instance stops
        (the driver reads both in one go: no line lost or repeated in between). Asleep:
        what its last instance wrote, and the stream ends."""
        inst = self._current(record)
        ctl = self.plane.controllers.get(record.service)
        sent = False
        if inst is not None and inst.handle is not None and ctl is not None:
            try:
                async for chunk in ctl.driver.follow_logs(inst.handle, tail):
                    sent = True
                    yield chunk
                return
            except DriverError:
                if sent:
                    return  # it stopped while followed
        kept = last_lines(self._last_logs.get(record.id, b""), tail)
        if kept:
            yield kept

    async def instance_stopping(self, inst: Instance) -> None:
        """Keep the end of an API container's output: its instance is about to go."""
        if not self.owns(inst.service) or inst.handle is None or inst.key is None:
            return
        ctl = self.plane.controllers.get(inst.service)
        if ctl is None:
            return
        try:
            out = await ctl.driver.logs(inst.handle, None)
        except DriverError:
            return
        self._last_logs[inst.key] = out[-KEPT_LOGS:]

    def allocate_port(self, protocol: str, taken: set[int] | None = None) -> int | None:
        """A port of ``containers.tcp_ports`` no container has and that binds now on the
        containers listener's host; None when there is none left."""
        config = self.plane.config
        span = config.containers.tcp_ports
        listener = config.listeners.get(config.containers.listener or "")
        if span is None or listener is None:
            return None
        used = {p.public_port for r in self.state.containers() for p in r.ports} | (taken or set())
        kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        for port in range(span[0], span[1] + 1):
            if port in used:
                continue
            with socket.socket(family, kind) as probe:
                try:
                    probe.bind((listener.host, port))
                except OSError:
                    continue  # something else has it
            return port
        return None

    def last_failure(self, container_id: str) -> WakeFailure | None:
        return self._failures.get(container_id)

    def tenant_of(self, service: str) -> str | None:
        if not service.startswith(SERVICE_PREFIX):
            return None
        record = self.state.get_container(service[len(SERVICE_PREFIX) :])
        return record.tenant if record is not None else None

    # ------------------------------------------------------------------ changes
    async def load(self) -> None:
        """At start, before the route files' services: the records a previous run kept."""
        if self.store is None:
            return
        for record in await asyncio.to_thread(self.store.load):
            self.state.put_container(record)

    def service_configs(self) -> dict[str, ServiceConfig]:
        return {r.service: service_config(r) for r in self.state.containers()}

    async def restore(self) -> None:
        """At start, after ``load``: a controller for each record. Its container is asleep
        (a request wakes it) unless an earlier Guard left it running with the same spec
        (docker): then it is adopted, and serves without a cold start."""
        records = self.state.containers()
        for record in records:
            try:
                await self._control(record)
            except DriverError as e:
                # Kept: a request gets 503 with this reason until the driver is back and
                # Guard restarted; the API still shows and deletes it.
                log.error("container %s cannot be run: %s", record.id, e)
        if records and self.store is not None:
            log.info("%d API containers restored from %s", len(records), self.store.path)

    async def _control(self, record: ContainerRecord) -> ServiceController:
        plane = self.plane
        # DriverError: the caller says 503. The plane adopts what an earlier Guard left.
        ctl = await plane._controller(service_config(record))
        plane.controllers[record.service] = ctl
        return ctl

    async def _save(self) -> None:
        """Write the records down (a failure is logged: the containers still run)."""
        if self.store is None:
            return
        async with self._save_lock:
            try:
                await asyncio.to_thread(self.store.save, self.state.containers())
            except OSError as e:
                log.error("cannot write %s: %s", self.store.path, e)

    async def create(self, record: ContainerRecord) -> None:
        """Record it, give it a controller, tell the workers, and start it."""
        plane = self.plane
        self.state.put_container(record)
        try:
            await self._control(record)
        except DriverError:
            self.state.remove_container(record.id)
            raise
        await self._save()
        self._broadcast(ContainerUpdate(False, (container_route(record),)))
        # Its address works in every worker before the answer says it exists.
        await self._until_applied(record.service, plane.publish(record.service))
        plane.event("container_created", None, service=record.service, tenant=record.tenant)
        self.start(record)

    def start(self, record: ContainerRecord) -> None:
        self._failures.pop(record.id, None)
        ctl = self.plane.controllers.get(record.service)
        if ctl is not None:
            ctl.wake(record.id, 1)

    async def wait_ready(self, record: ContainerRecord, timeout: float) -> None:
        """Until its instance is ready; ``StartFailed`` on a failed start or the timeout."""
        deadline = self.plane.loop.time() + timeout
        while True:
            owner = self.state.owner(record.service, record.id)
            if owner is not None and owner.phase is Phase.READY:
                return
            failure = self._failures.get(record.id)
            if failure is not None:
                raise StartFailed(failure.code, failure.message)
            if self.state.get_container(record.id) is None:
                raise StartFailed("container_not_found", "the container was deleted")
            if self.plane.loop.time() >= deadline:
                raise StartFailed("wake_timeout", f"not ready within {timeout:g}s")
            await asyncio.sleep(_POLL)

    async def stop(self, record: ContainerRecord, timeout: float | None) -> None:
        """Drain and stop its instance (asleep: the next request wakes it)."""
        ctl = self.plane.controllers.get(record.service)
        if ctl is None:
            return
        retired = ctl.instances(Phase.STARTING, Phase.READY)
        for inst in retired:
            ctl.retire(inst, "stopped", timeout)
        # Drain (timeout) plus the driver's stop (stop_timeout, then SIGKILL) and a margin.
        grace = (timeout if timeout is not None else record.spec.stop_timeout) * 2 + 5.0
        deadline = self.plane.loop.time() + grace
        while (
            any(i.phase is not Phase.STOPPED for i in retired) and self.plane.loop.time() < deadline
        ):
            await asyncio.sleep(_POLL)

    async def delete(self, record: ContainerRecord, timeout: float | None) -> None:
        """Refuse new requests, drain in-flight ones (up to ``timeout``), stop, forget."""
        task = self._deletes.get(record.id)
        if task is None:
            task = self.plane.loop.create_task(self._delete(record, timeout))
            self._deletes[record.id] = task
            task.add_done_callback(lambda _: self._deletes.pop(record.id, None))
        await asyncio.shield(task)

    async def _delete(self, record: ContainerRecord, timeout: float | None) -> None:
        plane = self.plane
        record = replace(record, deleting=True)
        self.state.put_container(record)
        # Still routed (workers keep reporting its in-flight work, so the drain can end),
        # but new requests get container_not_found, in every worker before it stops.
        self._broadcast(ContainerUpdate(False, (container_route(record),)))
        await self._until_applied(record.service, plane.publish(record.service))
        # Requests held for a wake would only time out: they get the answer now.
        why = f"container {record.id} is being deleted"
        plane.fail(WakeFailure(record.service, record.id, "instance_start_failed", why))
        ctl = plane.controllers.get(record.service)
        if ctl is not None:
            for inst in ctl.instances(Phase.STARTING, Phase.READY):
                ctl.retire(inst, "deleted", timeout)
            await ctl.close()
            if plane.controllers.get(record.service) is ctl:
                del plane.controllers[record.service]
        self.state.remove_container(record.id)
        self._failures.pop(record.id, None)
        self._asleep_since.pop(record.id, None)
        self._last_logs.pop(record.id, None)
        self._broadcast(ContainerUpdate(False, (), (record.id,)))
        plane.forget(record.service)
        await self._save()
        plane.event("container_deleted", None, service=record.service, tenant=record.tenant)

    async def upgrade(
        self, record: ContainerRecord, spec: ContainerSpec, *, rolling: bool, timeout: float
    ) -> ContainerRecord:
        """Run ``spec`` from now on. ``rolling``: a new instance starts beside the running
        one and takes new requests once ready, then the old one drains (in-flight requests
        finish on it) and stops; if the new one fails, the old one keeps serving
        (``StartFailed``; the record keeps the new spec for the next wake). Not rolling
        (immediate): the old instance drains and stops at once and a new one starts, the
        requests in between held. An asleep container just wakes with the new spec."""
        ctl = self.plane.controllers.get(record.service)
        record = replace(record, spec=spec)
        self.state.put_container(record)
        await self._save()
        if ctl is None:
            return record
        running = ctl.instances(Phase.STARTING, Phase.READY)
        ctl.configure(service_config(record), retire=not rolling)
        if not running:
            return record
        self.plane.event("container_upgrade", None, service=record.service, rolling=rolling)
        self._failures.pop(record.id, None)
        if not rolling:
            ctl.wake(record.id, 1)
            await self.wait_ready(record, timeout)
            return record
        new = ctl.start_instance(record.id, "upgrade")
        deadline = self.plane.loop.time() + timeout
        while new.phase is Phase.STARTING:
            if self.plane.loop.time() >= deadline:
                ctl.retire(new, "upgrade timed out")
                raise StartFailed("wake_timeout", f"the new instance was not ready in {timeout:g}s")
            await asyncio.sleep(_POLL)
        if new.phase is not Phase.READY:
            failure = self._failures.get(record.id)
            raise StartFailed(
                failure.code if failure else "instance_start_failed",
                failure.message if failure else new.exit_reason or "the new instance stopped",
            )
        for inst in running:
            ctl.retire(inst, "upgraded")
        return record

    # ------------------------------------------------------------ from the plane
    def on_failure(self, failure: WakeFailure) -> None:
        if failure.key is not None and failure.service == service_name(failure.key):
            self._failures[failure.key] = failure

    def tick(self, now: float) -> None:
        """``lifecycle.destroy_after``: delete what has been asleep that long."""
        if self.plane.handing_over:
            return  # the successor Guard decides from here
        for record in self.state.containers():
            after = record.lifecycle.destroy_after
            if after is None or record.deleting or record.id in self._deletes:
                continue
            if any(i.phase is not Phase.STOPPED for i in self.instances(record)):
                self._asleep_since.pop(record.id, None)
                continue
            since = self._asleep_since.setdefault(record.id, now)
            if now - since >= after:
                log.info("container %s asleep for %.1fs: destroying it", record.id, now - since)
                # A change no request made: audited like the API's (guard.admin.api).
                audit.info(
                    "audit tenant=%s action=DESTROY_AFTER target=/v1/containers/%s result=%d",
                    record.tenant,
                    record.id,
                    200,
                )
                self._deletes[record.id] = task = self.plane.loop.create_task(
                    self._delete(record, None)
                )
                task.add_done_callback(partial(self._forget_delete, record.id))

    def _forget_delete(self, container_id: str, _: object) -> None:
        self._deletes.pop(container_id, None)

    def attach_updates(self) -> list[ContainerUpdate]:
        """Everything a newly attached worker must know, in bounded messages."""
        routes = [container_route(r) for r in self.state.containers()]
        updates = [ContainerUpdate(True, tuple(routes[:CHUNK]))]
        for i in range(CHUNK, len(routes), CHUNK):
            updates.append(ContainerUpdate(False, tuple(routes[i : i + CHUNK])))
        return updates

    async def _until_applied(self, service: str, seq: int) -> None:
        """Until every worker applied ``seq`` (bounded: a stuck worker does not stop us)."""
        deadline = self.plane.loop.time() + APPLY_TIMEOUT
        while not self.plane.applied(service, seq) and self.plane.loop.time() < deadline:
            await asyncio.sleep(_POLL / 2)

    def _broadcast(self, update: ContainerUpdate) -> None:
        self.plane.send_containers(update)

    async def close(self) -> None:
        if self._deletes:
            await asyncio.gather(*self._deletes.values(), return_exceptions=True)
