"""The ``docker`` driver: every instance is a container of a local (or remote) Docker daemon.

Talks to the daemon's HTTP API through aiodocker (aio-libs' asyncio client), on Guard's
event loop. An instance is a container named ``guard-<instance id>`` made from
``spec.image`` with:

- ``spec.command`` as its Cmd (the image's entrypoint stays), and ``spec.env`` plus Guard's
  ``env_extra`` plus ``$PORT`` as its environment. Nothing of Guard's own environment.
- labels ``guard.managed=true``, ``guard.id=<guard_id>``, ``guard.instance=<instance id>``,
  and what a restarted Guard needs to take the container over: ``guard.service``,
  ``guard.key`` (per-key instances; both from Guard's ``env_extra``), ``guard.port`` (where
  Guard connects) and ``guard.spec`` (``spec_digest``: the spec and network it was made
  from). Containers outlive the client that made them: a Guard that crashed (or handed
  over to a new binary) leaves them running, and the next one *adopts* the running ones
  whose service still exists with the same spec (``leftovers()`` then ``adopt()``) and
  removes everything else of its id with ``reap_orphans()`` (the control plane does both
  once at startup, before it creates instances). The exit watcher only hears about its
  own containers.
- ``resources.cpu`` as NanoCpus (a CFS quota: the container gets that many cores' worth of
  time, however many cores it runs on) and ``resources.memory`` as Memory with MemorySwap
  equal to it, so the limit is a limit and not RAM plus as much again in swap. Going past
  it gets the container OOM-killed; the exit reason says "out of memory".
- networking per ``DockerDriverConfig.network``. ``host`` (the default): the container
  shares the host's network namespace like a local process, so it listens on ``$PORT``, a
  free loopback port Guard picked (``pick_free_port``, with the same small race as the
  process driver). Any other network (``bridge`` or a user-defined one): the container
  listens on ``spec.port`` (or ``$PORT`` when unset), published on a free port of
  Guard's ``host`` address, which is ``handle.port``. Published ports are TCP only: a UDP
  service needs the host network.

Guard never pulls: an image missing on the daemon is a ``DriverError`` naming it (a pull
can take minutes and needs registry credentials; it is a deploy step, not a wake-up).
Container output goes to the daemon's log driver (``docker logs guard-<id>``); bound it
there (``log-opts`` in daemon.json), Guard does not override the operator's choice.

Exits come from the daemon's event stream (``die`` and ``oom`` events of containers
labelled with this Guard's id), followed by a background task started on the first
create/start and re-subscribed with backoff when the stream breaks. Each re-subscription
asks the daemon to replay what it logged since the last event seen (``since``) and then
resyncs from one container list: an instance whose container stopped or vanished during
the gap (even a daemon restart, which loses the replay buffer and, without the daemon's
``live-restore``, kills every container) is reported as exited, and a labelled container
Guard no longer tracks (a remove that failed while the daemon was away) is removed. An
exit is recorded from the container's inspected state, once per run: a replayed ``die`` of
an earlier run finds the container running again and is ignored. While the daemon cannot
be reached the driver is ``up = False`` (logged once when it goes and once when it is back,
with the outage's length; ``outages`` counts them); instances keep serving as long as their
addresses answer, and calls fail with ``DriverUnavailable``.

Docker reports a process killed by signal N as exit code 128 + N; the driver converts that
to Python's -N (``InstanceState.exit_code``), so exit(137) from an app reads as SIGKILL.

PID 1 in a container has no default signal handlers: an app that does not handle SIGTERM
itself (or run under an init such as tini) ignores ``docker stop`` and is SIGKILLed when the
timeout runs out. Docker's stop timeout is whole seconds, so ``stop(timeout)`` rounds up.

Stats use the daemon's one-shot mode (API 1.41+), which skips the priming sample a plain
non-streaming stats call waits for; the daemon still answers at its collector's next tick
(once a second), so a stats() call takes up to ~1 s against ~1-2 s without one-shot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError

from guard.config.model import ContainerSpec, DockerDriverConfig
from guard.drivers.base import (
    Driver,
    DriverError,
    DriverUnavailable,
    ExitCallback,
    ExitListeners,
    InstanceHandle,
    InstanceNotFound,
    InstanceState,
    InstanceStats,
    InstanceStatus,
    exit_reason,
    last_lines,
    port_env,
)
from guard.drivers.process import instance_env, pick_free_port

log = logging.getLogger(__name__)

LABEL_MANAGED = "guard.managed"
LABEL_ID = "guard.id"
LABEL_INSTANCE = "guard.instance"
LABEL_SERVICE = "guard.service"
LABEL_KEY = "guard.key"
LABEL_PORT = "guard.port"
LABEL_SPEC = "guard.spec"
NAME_PREFIX = "guard-"
# Container names allow [a-zA-Z0-9][a-zA-Z0-9_.-]+; the process driver's id rule fits.
_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# How long stop() waits for the exit event after the daemon said the container stopped,
# before it inspects the container itself (the event stream may be reconnecting).
_EXIT_EVENT_GRACE = 2.0
_RETRY_MIN = 0.1  # events stream re-subscription backoff
_RETRY_MAX = 5.0
_STABLE_STREAM = 10.0  # a stream that lasted this long resets the backoff
# Connect timeout only: creating a container copies the image with some storage drivers
# (vfs) and may legitimately take long; callers bound their calls with asyncio timeouts.
_CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10)
_PING_TIMEOUT = 5.0

_RUNNING = ("running", "paused", "restarting")
_CONNECTION_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


# ------------------------------------------------------------------------ pure helpers


def python_exit_code(docker_code: int) -> int:
    """Docker's exit code in Python's convention: 128 + N (a death by signal N, as the
    runtime reports it) becomes -N; anything else is the exit status itself."""
    if 128 < docker_code <= 128 + 64:  # Linux signals are 1..64
        return -(docker_code - 128)
    return docker_code


def docker_exit_reason(code: int, *, oom: bool, stop_requested: bool) -> str:
    """``exit_reason`` plus what only Docker knows: the kernel's OOM killer did it."""
    reason = exit_reason(code)
    if oom:
        reason = f"out of memory ({reason})"
    return reason + (" after stop" if stop_requested else "")


def memory_in_use(memory_stats: Mapping[str, Any]) -> int:
    """Memory the container really holds: usage less the page cache the kernel can drop
    at once, as ``docker stats`` computes it. cgroup v1 reports the hierarchical
    ``total_inactive_file``, v2 ``inactive_file``; daemons before 19.03 subtracted
    ``cache``, used here only when neither is present."""
    usage = int(memory_stats.get("usage") or 0)
    stats = memory_stats.get("stats") or {}
    for key in ("total_inactive_file", "inactive_file", "cache"):
        if key in stats:
            reclaimable = int(stats[key])
            return usage - reclaimable if reclaimable < usage else usage
    return usage


def cpu_seconds(cpu_stats: Mapping[str, Any]) -> float:
    """Cumulative CPU time of the container's cgroup (ns in the API)."""
    return int((cpu_stats.get("cpu_usage") or {}).get("total_usage") or 0) / 1e9


def spec_digest(spec: ContainerSpec, network: str) -> str:
    """What a container was made from, as a label value: a container is adopted only by a
    service whose spec (image, command, env, resources, probe ...) and network are still
    the same. Stable across processes and Python versions (sorted JSON, not ``hash()``)."""
    doc = {"spec": dataclasses.asdict(spec), "network": network}
    raw = json.dumps(doc, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Leftover:
    """A running container an earlier Guard with this Guard's id left: what it is for."""

    handle: InstanceHandle
    service: str
    key: str | None
    spec: str  # spec_digest it was made with
    created_wall: float  # unix time the container was created


def container_name(instance_id: str) -> str:
    return NAME_PREFIX + instance_id


def _unix_nanos(ns: int) -> str:
    """The events API's ``since`` format: seconds.nanoseconds."""
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def _connection_detail(exc: BaseException) -> str:
    """The useful part of a connection failure: the OS error under aiohttp's wrapping
    ("No such file or directory", "Connection refused") when there is one."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        os_error = getattr(e, "os_error", None)
        if isinstance(os_error, OSError) and os_error.strerror:
            return os_error.strerror
        e = e.__cause__ or e.__context__
    return str(exc) or type(exc).__name__


# ------------------------------------------------------------------------ the driver


@dataclass(slots=True, eq=False)
class _Instance:
    """The driver's mutable record of one instance (handles are immutable values)."""

    handle: InstanceHandle
    container_id: str
    stop_timeout: float
    status: InstanceStatus = InstanceStatus.CREATED
    run: int = 0  # counts starts: an exit is recorded once per run
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None
    reason: str | None = None
    started_at: float | None = None
    exited_at: float | None = None
    stop_requested: bool = False
    oom_seen: bool = False  # an "oom" event arrived during this run
    start_ns: int = 0  # wall clock when this run was started: older events are replays
    die_pending: bool = False  # a "die" event arrived while start() was in progress
    cpu_base: float = 0.0  # CPU seconds of earlier runs (a new run starts a new cgroup)
    cpu_high: float = 0.0  # stats() never reports less CPU than it once did
    # Adopted: CPU counts from this driver's first reading (the earlier Guard metered the
    # rest), so that reading sets cpu_base instead of being reported.
    cpu_baseline_pending: bool = False
    # Guard is done with it but the daemon could not be reached to remove it: removed by
    # the resync once the daemon answers again.
    abandoned: bool = False

    def state(self, pid: int | None = None) -> InstanceState:
        return InstanceState(
            status=self.status,
            exit_code=self.exit_code,
            reason=self.reason,
            pid=pid,
            started_at=self.started_at,
            exited_at=self.exited_at,
            stop_requested=self.stop_requested,
        )


class DockerDriver(Driver):
    name = "docker"
    outlives_guard = True  # a container runs on without its client

    def __init__(
        self,
        config: DockerDriverConfig,
        *,
        guard_id: str = "guard",
        host: str = "127.0.0.1",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._guard_id = guard_id
        self._host = host
        self._clock = clock
        self._instances: dict[str, _Instance] = {}
        self._by_container: dict[str, _Instance] = {}
        self._reserved: set[str] = set()  # ids whose create() is in flight
        self._listeners = ExitListeners()
        self._docker: aiodocker.Docker | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._events_since: str | None = None
        self.up = True
        self.outages = 0
        self._down_since: float | None = None

    @property
    def network(self) -> str:
        return self._config.network

    # ---------------------------------------------------------------- lifecycle

    async def create(
        self, spec: ContainerSpec, *, instance_id: str, env_extra: dict[str, str]
    ) -> InstanceHandle:
        if not _INSTANCE_ID.fullmatch(instance_id):
            raise DriverError(f"invalid instance id {instance_id!r}")
        if instance_id in self._instances or instance_id in self._reserved:
            raise DriverError(f"instance {instance_id} already exists")
        if not spec.image:
            raise DriverError("the docker driver needs container.image")
        self._reserved.add(instance_id)
        try:
            self._ensure_events()
            return await self._create(spec, instance_id, env_extra)
        finally:
            self._reserved.discard(instance_id)

    async def _create(
        self, spec: ContainerSpec, instance_id: str, env_extra: dict[str, str]
    ) -> InstanceHandle:
        assert spec.image is not None
        host_port = pick_free_port(self._host)
        host_config: dict[str, Any] = {
            "NetworkMode": self._config.network,
            "RestartPolicy": {"Name": "no"},  # restarts are the control plane's call
        }
        config: dict[str, Any] = {"Image": spec.image}
        extra: list[tuple[str, int]] = []  # (name, host port) of spec.extra_ports
        ports_env: dict[str, str] = {}
        if self._config.network == "host":
            app_port = host_port
            for name, _ in spec.extra_ports:
                extra.append((name, pick_free_port(self._host)))
                ports_env[port_env(name)] = str(extra[-1][1])
        else:
            app_port = spec.port or host_port
            published = [(app_port, host_port)]
            for name, internal in spec.extra_ports:
                extra.append((name, pick_free_port(self._host)))
                published.append((internal, extra[-1][1]))
                ports_env[port_env(name)] = str(internal)
            config["ExposedPorts"] = {f"{c}/tcp": {} for c, _ in published}
            host_config["PortBindings"] = {
                f"{c}/tcp": [{"HostIp": self._host, "HostPort": str(h)}] for c, h in published
            }
        if spec.command:
            config["Cmd"] = list(spec.command)
        env = instance_env({}, spec.env, {**env_extra, **ports_env}, app_port)
        config["Env"] = [f"{k}={v}" for k, v in env.items()]
        config["Labels"] = {
            LABEL_MANAGED: "true",
            LABEL_ID: self._guard_id,
            LABEL_INSTANCE: instance_id,
            LABEL_SERVICE: env_extra.get("GUARD_SERVICE", ""),
            LABEL_PORT: str(host_port),
            LABEL_SPEC: spec_digest(spec, self._config.network),
        }
        if "GUARD_KEY" in env_extra:
            config["Labels"][LABEL_KEY] = env_extra["GUARD_KEY"]
        # So that an operator's own `docker stop` gives the app the same grace period.
        config["StopTimeout"] = math.ceil(spec.stop_timeout)
        if spec.resources.cpu is not None:
            host_config["NanoCpus"] = round(spec.resources.cpu * 1e9)
        if spec.resources.memory is not None:
            host_config["Memory"] = spec.resources.memory
            host_config["MemorySwap"] = spec.resources.memory
        config["HostConfig"] = host_config

        name = container_name(instance_id)
        try:
            container = await self._client().containers.create(config, name=name)
        except DockerError as e:
            if e.status == 404 and "image" in e.message.lower():
                raise DriverError(
                    f"image {spec.image} not found (Guard does not pull: pull it on the "
                    f"docker host first)"
                ) from e
            if e.status == 409:
                raise DriverError(
                    f"instance {instance_id} already exists (container {name}: {e.message})"
                ) from e
            raise self._error(e, f"cannot create container {name}") from e
        except _CONNECTION_ERRORS as e:
            raise self._unreachable(e) from e

        handle = InstanceHandle(
            id=instance_id, driver=self.name, host=self._host, port=host_port, ports=tuple(extra)
        )
        inst = _Instance(handle=handle, container_id=container.id, stop_timeout=spec.stop_timeout)
        self._instances[instance_id] = inst
        self._by_container[container.id] = inst
        return handle

    async def start(self, handle: InstanceHandle) -> InstanceHandle:
        inst = self._get(handle)
        if inst.status in (InstanceStatus.STARTING, InstanceStatus.RUNNING):
            raise DriverError(f"instance {handle.id} is already {inst.status}")
        self._ensure_events()
        inst.status = InstanceStatus.STARTING
        inst.stop_requested = inst.oom_seen = inst.die_pending = False
        inst.run += 1
        inst.start_ns = time.time_ns()
        inst.exited = asyncio.Event()
        inst.cpu_base = inst.cpu_high  # the new run's cgroup counts from zero
        try:
            with self._errors(f"cannot start instance {handle.id}"):
                await self._container(inst).start()
        except BaseException as e:  # a DriverError, or the caller's timeout cancelling us
            # Cancelled, the container may have started anyway: a later start() is then a
            # no-op for the daemon (304) and remove() kills it.
            inst.status = InstanceStatus.CREATED
            inst.reason = (
                f"failed to start: {e}" if isinstance(e, DriverError) else "start cancelled"
            )
            raise
        inst.handle = replace(inst.handle, container_id=inst.container_id)
        inst.exit_code = inst.reason = inst.exited_at = None
        inst.started_at = self._clock()
        if inst.status is InstanceStatus.STARTING:
            inst.status = InstanceStatus.RUNNING
        if inst.die_pending:  # it died before we got here (or an old die was replayed)
            inst.die_pending = False
            await self._check_exit(inst)
        return inst.handle

    async def stop(self, handle: InstanceHandle, timeout: float) -> None:
        inst = self._get(handle)
        if inst.status is not InstanceStatus.RUNNING:
            return
        inst.stop_requested = True
        try:
            with self._errors(f"cannot stop instance {handle.id}"):
                # The daemon sends the stop signal, SIGKILLs after t seconds and answers
                # once the container has exited (or at once, 304, if it already had).
                await self._container(inst).stop(t=math.ceil(max(0.0, timeout)))
        except DriverError as e:
            if not isinstance(e.__cause__, DockerError) or e.__cause__.status != 404:
                raise
        await self._await_exit(inst)

    async def remove(self, handle: InstanceHandle) -> None:
        inst = self._get(handle)
        try:
            await self.stop(handle, 0.0)  # on_exit fires before the record goes away
            with self._errors(f"cannot remove instance {handle.id}"):
                await self._container(inst).delete(force=True)
        except DriverUnavailable:
            inst.abandoned = True  # the resync removes it when the daemon is back
            raise
        except DriverError as e:
            if not isinstance(e.__cause__, DockerError) or e.__cause__.status != 404:
                raise
        self._forget(inst)

    def release(self, handle: InstanceHandle) -> None:
        """A binary restart: the successor Guard adopted this container (same guard id,
        labels and spec), so this one must not stop or remove it on close."""
        inst = self._instances.get(handle.id)
        if inst is not None:
            self._forget(inst)

    def _forget(self, inst: _Instance) -> None:
        self._instances.pop(inst.handle.id, None)
        self._by_container.pop(inst.container_id, None)

    async def close(self) -> None:
        running = [
            i
            for i in self._instances.values()
            if i.status in (InstanceStatus.STARTING, InstanceStatus.RUNNING)
        ]
        results = await asyncio.gather(
            *(self.stop(i.handle, i.stop_timeout) for i in running), return_exceptions=True
        )
        for inst, result in zip(running, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("cannot stop instance %s: %s", inst.handle.id, result)
        task, self._events_task = self._events_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        docker, self._docker = self._docker, None
        if docker is not None:
            await docker.close()

    async def leftovers(self) -> list[Leftover]:
        """Running containers labelled with this Guard's id that this driver does not know,
        with what they were made for: candidates for ``adopt``. Containers without the
        adoption labels (made by an older Guard) are not listed; ``reap_orphans`` removes
        them."""
        filters = {
            "label": [f"{LABEL_MANAGED}=true", f"{LABEL_ID}={self._guard_id}"],
            "status": ["running"],
        }
        with self._errors("cannot list containers"):
            found = await self._client().containers.list(filters=filters)
        out: list[Leftover] = []
        for container in found:
            if container.id in self._by_container:
                continue
            labels = container["Labels"] or {}
            instance, service = labels.get(LABEL_INSTANCE, ""), labels.get(LABEL_SERVICE, "")
            port, spec = labels.get(LABEL_PORT, ""), labels.get(LABEL_SPEC, "")
            if not (_INSTANCE_ID.fullmatch(instance) and service and spec and port.isdigit()):
                continue
            handle = InstanceHandle(
                id=instance,
                driver=self.name,
                host=self._host,
                port=int(port),
                container_id=container.id,
            )
            created = float(container["Created"] or 0)
            out.append(Leftover(handle, service, labels.get(LABEL_KEY), spec, created))
        return out

    def adopt(self, left: Leftover, stop_timeout: float) -> InstanceHandle:
        """Take over a running container from ``leftovers()``: from now on it is this
        driver's instance like any other (exits reported, stop, remove, stats)."""
        handle = left.handle
        if handle.id in self._instances or handle.id in self._reserved:
            raise DriverError(f"instance {handle.id} already exists")
        assert handle.container_id is not None
        inst = _Instance(
            handle=handle,
            container_id=handle.container_id,
            stop_timeout=stop_timeout,
            status=InstanceStatus.RUNNING,
            run=1,
            start_ns=time.time_ns(),  # older oom events are an earlier Guard's business
            started_at=self._clock(),
            cpu_baseline_pending=True,
        )
        self._instances[handle.id] = inst
        self._by_container[inst.container_id] = inst
        # The stream's first resync inspects it: an exit since leftovers() is reported.
        self._ensure_events()
        return handle

    async def reap_orphans(self) -> list[str]:
        """Force-remove the containers labelled with this Guard's id that this driver does
        not know: what a previous run of the same Guard left behind (a crash or SIGKILL
        skips close(), and containers outlive their client). Returns their names.

        The control plane calls this once at startup, before creating instances. Each
        Guard sharing a daemon must have its own ``guard_id``, or one would remove the
        other's instances. A container that cannot be removed is logged and skipped; the
        next call tries again."""
        filters = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_ID}={self._guard_id}"]}
        with self._errors("cannot list containers"):
            found = await self._client().containers.list(all=True, filters=filters)
        removed: list[str] = []
        for container in found:
            if container.id in self._by_container:
                continue
            names = container["Names"] or [container.id[:12]]
            name = names[0].lstrip("/")
            try:
                await container.delete(force=True)
            except DockerError as e:
                if e.status != 404:
                    log.warning("cannot remove orphan container %s: %s", name, e.message)
                    continue
            except _CONNECTION_ERRORS as e:
                raise self._unreachable(e) from e
            log.info("removed orphan container %s", name)
            removed.append(name)
        return removed

    # ---------------------------------------------------------------- observation

    async def inspect(self, handle: InstanceHandle) -> InstanceState:
        inst = self._get(handle)
        if inst.status is InstanceStatus.STARTING:
            return inst.state()
        run = inst.run  # what the daemon says below is about this run
        try:
            with self._errors(f"cannot inspect instance {handle.id}"):
                info = await self._client().containers.container(inst.container_id).show()
        except DriverError as e:
            if not isinstance(e.__cause__, DockerError) or e.__cause__.status != 404:
                raise
            info = None
        state = (info or {}).get("State") or {}
        if inst.status is InstanceStatus.RUNNING and state.get("Status") not in _RUNNING:
            # The daemon knows of an exit the event stream has not delivered yet.
            self._record_exit_from(inst, run, info)
        running = inst.status is InstanceStatus.RUNNING
        return inst.state((state.get("Pid") or None) if running else None)

    async def stats(self, handle: InstanceHandle) -> InstanceStats:
        inst = self._get(handle)
        if inst.status is not InstanceStatus.RUNNING:
            raise DriverError(f"instance {handle.id} is not running")
        with self._errors(f"cannot read stats of instance {handle.id}"):
            # aiodocker's stats(stream=False) has no one-shot parameter (0.27): ask the API
            # directly through its request helper, which keeps its error handling.
            raw = await self._client()._query_json(
                f"containers/{inst.container_id}/stats",
                params={"stream": "false", "one-shot": "true"},
            )
        at = self._clock()
        memory_stats = raw.get("memory_stats") or {}
        # A container that stopped meanwhile answers with zeroed, empty stats.
        if inst.status is not InstanceStatus.RUNNING or "usage" not in memory_stats:
            raise DriverError(f"instance {handle.id} is not running")
        cgroup_cpu = cpu_seconds(raw.get("cpu_stats", {}))
        if inst.cpu_baseline_pending:
            inst.cpu_baseline_pending = False
            inst.cpu_base = -cgroup_cpu
        inst.cpu_high = max(inst.cpu_high, inst.cpu_base + cgroup_cpu)
        return InstanceStats(
            cpu_seconds=inst.cpu_high, memory_bytes=memory_in_use(memory_stats), at=at
        )

    async def logs(self, handle: InstanceHandle, tail: int | None) -> bytes:
        """``docker logs --tail N`` (the daemon's log driver keeps and bounds them)."""
        inst = self._get(handle)
        with self._errors(f"logs of {handle.id}"):
            parts = await self._container(inst).log(
                stdout=True, stderr=True, tail="all" if tail is None else str(max(tail, 0))
            )
        return last_lines("".join(parts).encode("utf-8", "replace"), tail)

    async def follow_logs(
        self, handle: InstanceHandle, tail: int | None = 0
    ) -> AsyncIterator[bytes]:
        """``docker logs --follow --tail N``: the daemon sends the tail and what follows in
        one stream (nothing lost or repeated between them); ends when the container stops."""
        inst = self._get(handle)
        lines = "all" if tail is None else str(tail)
        with self._errors(f"logs of {handle.id}"):
            stream = self._container(inst).log(stdout=True, stderr=True, follow=True, tail=lines)
            async for part in stream:
                yield part.encode("utf-8", "replace")

    def on_exit(self, callback: ExitCallback) -> Callable[[], None]:
        return self._listeners.add(callback)

    # ---------------------------------------------------------------- exits

    async def _await_exit(self, inst: _Instance) -> None:
        """Wait for the exit stop() caused to be recorded; if the event stream is slow or
        reconnecting, ask the daemon directly."""
        if inst.status is not InstanceStatus.RUNNING:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(inst.exited.wait(), _EXIT_EVENT_GRACE)
            return
        await self._check_exit(inst)
        if inst.status is InstanceStatus.RUNNING:
            raise DriverError(f"instance {inst.handle.id} still runs after docker stop")

    async def _check_exit(self, inst: _Instance) -> None:
        """Inspect the container and record an exit if it no longer runs."""
        if inst.status is not InstanceStatus.RUNNING:
            return
        run = inst.run
        try:
            info = await self._client().containers.container(inst.container_id).show()
        except DockerError as e:
            if e.status != 404:
                raise self._error(e, f"cannot inspect instance {inst.handle.id}") from e
            info = None
        except _CONNECTION_ERRORS as e:
            raise self._unreachable(e) from e
        state = (info or {}).get("State") or {}
        if state.get("Status") not in _RUNNING:
            self._record_exit_from(inst, run, info)

    def _record_exit_from(self, inst: _Instance, run: int, info: Mapping[str, Any] | None) -> None:
        if info is None:  # removed behind Guard's back: say so rather than guess a code
            self._record_exit(inst, run, -signal.SIGKILL, "container removed outside Guard")
            return
        state = info.get("State") or {}
        code = python_exit_code(int(state.get("ExitCode") or 0))
        oom = bool(state.get("OOMKilled")) or inst.oom_seen
        reason = docker_exit_reason(code, oom=oom, stop_requested=inst.stop_requested)
        self._record_exit(inst, run, code, reason)

    def _record_exit(self, inst: _Instance, run: int, code: int, reason: str) -> None:
        """Record one run's exit and tell the listeners, at most once per run."""
        if run != inst.run or inst.status is not InstanceStatus.RUNNING:
            return
        inst.status = InstanceStatus.EXITED
        inst.exit_code = code
        inst.reason = reason
        inst.exited_at = self._clock()
        inst.exited.set()
        if not inst.stop_requested:
            log.info("instance %s %s", inst.handle.id, reason)
        self._listeners.fire(inst.handle, code, reason)

    # ---------------------------------------------------------------- events

    def _ensure_events(self) -> None:
        if self._events_task is None or self._events_task.done():
            if self._events_since is None:
                # Replay from a little before now: an exit racing the first subscription is
                # in the daemon's buffer. Events of containers we don't know are ignored.
                self._events_since = f"{time.time() - 1.0:.9f}"
            self._events_task = asyncio.get_running_loop().create_task(
                self._watch_events(), name="guard-docker-events"
            )

    async def _watch_events(self) -> None:
        backoff = _RETRY_MIN
        last_why = None
        while True:
            began = time.monotonic()
            unreachable = False
            try:
                await self._follow_events()
                why = "the stream ended"
            except asyncio.CancelledError:
                raise
            except DriverError as e:
                why, unreachable = str(e), isinstance(e, DriverUnavailable)
            except DockerError as e:
                error = self._error(e, "docker events")
                why, unreachable = error.args[0], isinstance(error, DriverUnavailable)
            except _CONNECTION_ERRORS as e:
                why, unreachable = self._unreachable(e).args[0], True
            except Exception as e:  # a bug must not end exit reporting for good
                log.exception("docker events watcher failed")
                why = repr(e)
            if unreachable:
                self._went_down(why)
            if time.monotonic() - began > _STABLE_STREAM:
                backoff = _RETRY_MIN
            # Once per kind of failure: a daemon that stays down must not flood the log.
            level = logging.DEBUG if why == last_why else logging.WARNING
            log.log(level, "docker events: %s; re-subscribing in %.1fs", why, backoff)
            last_why = why
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _RETRY_MAX)

    def _went_down(self, why: str) -> None:
        if not self.up:
            return
        self.up = False
        self.outages += 1
        self._down_since = time.monotonic()
        log.warning(
            "docker daemon unreachable (%s): instances keep serving while their addresses "
            "answer; reconnecting",
            why,
        )

    def _came_back(self, exited: int, removed: int) -> None:
        if self.up:
            return
        self.up = True
        down = time.monotonic() - (self._down_since or time.monotonic())
        self._down_since = None
        log.warning(
            "docker daemon reachable again after %.1fs; resynced: %d instances exited "
            "meanwhile, %d abandoned containers removed",
            down,
            exited,
            removed,
        )

    async def _follow_events(self) -> None:
        docker = self._client()
        # A fresh subscriber per stream: the channel publishes None when a stream ends, and
        # an old subscriber would still hold the previous stream's None.
        subscriber = docker.events.subscribe(create_task=False)
        filters = {
            "type": ["container"],
            "label": [f"{LABEL_ID}={self._guard_id}"],
            "event": ["die", "oom"],
        }
        stream = asyncio.ensure_future(docker.events.run(filters=filters, since=self._events_since))
        try:
            await self._reconcile()
            while (event := await subscriber.get()) is not None:
                await self._on_event(event)
            await stream  # re-raises what broke the stream
        finally:
            if not stream.done():
                stream.cancel()
                # wait(), not await: the stream's CancelledError is expected, but a cancel
                # of this task arriving meanwhile (close()) must still end it.
                await asyncio.wait((stream,))
            elif not stream.cancelled():
                stream.exception()  # retrieved: what broke it is already being handled

    async def _reconcile(self) -> None:
        """Resync from one container list: instances whose container stopped or vanished
        during a gap in the stream (the daemon's replay buffer does not survive its
        restart) are reported as exited; abandoned ones are removed. Raises when the daemon
        cannot be reached, so the stream is retried."""
        filters = {"label": [f"{LABEL_ID}={self._guard_id}"]}
        with self._errors("cannot list containers"):
            found = await self._client().containers.list(all=True, filters=filters)
        states = {c.id: c["State"] for c in found}
        exited = removed = 0
        for inst in list(self._instances.values()):
            gone = states.get(inst.container_id) not in _RUNNING
            if inst.status is InstanceStatus.RUNNING and gone:
                await self._check_exit(inst)
                exited += inst.status is InstanceStatus.EXITED
            if inst.abandoned:
                with contextlib.suppress(DriverError):
                    await self.remove(inst.handle)
                    removed += 1
        self._came_back(exited, removed)

    async def _on_event(self, event: Mapping[str, Any]) -> None:
        if (ns := event.get("timeNano")) is not None:
            self._events_since = _unix_nanos(int(ns))
        actor = event.get("Actor") or {}
        inst = self._by_container.get(actor.get("ID") or event.get("id") or "")
        if inst is None:
            return
        action = event.get("Action") or event.get("status")
        if action == "oom":
            # State.OOMKilled is the main signal; the event covers a daemon that records it
            # after the die. A replayed oom of an earlier run must not mark this one (the
            # clocks compared are the same host's when the socket is local).
            if inst.status is InstanceStatus.RUNNING and (ns is None or int(ns) >= inst.start_ns):
                inst.oom_seen = True
        elif action == "die":
            if inst.status is InstanceStatus.STARTING:
                inst.die_pending = True
            elif inst.status is InstanceStatus.RUNNING:
                # The inspected state, not the event's exitCode: it says whether the OOM
                # killer did it, and a replayed die of an earlier run finds it running.
                try:
                    await self._check_exit(inst)
                except DriverError as e:
                    log.warning("instance %s died but cannot be inspected: %s", inst.handle.id, e)

    # ---------------------------------------------------------------- plumbing

    def _get(self, handle: InstanceHandle) -> _Instance:
        inst = self._instances.get(handle.id)
        if inst is None:
            raise InstanceNotFound(f"no instance {handle.id}")
        return inst

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            try:
                self._docker = aiodocker.Docker(url=self._config.socket, timeout=_CLIENT_TIMEOUT)
            except ValueError as e:
                raise DriverError(f"invalid docker socket {self._config.socket!r}: {e}") from e
        return self._docker

    def _container(self, inst: _Instance) -> DockerContainer:
        return self._client().containers.container(inst.container_id)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn aiodocker's and aiohttp's exceptions into DriverError (the original as its
        __cause__, for callers that tolerate a 404)."""
        try:
            yield
        except DockerError as e:
            raise self._error(e, what) from e
        except _CONNECTION_ERRORS as e:
            raise self._unreachable(e) from e

    def _error(self, e: DockerError, what: str) -> DriverError:
        if e.status == 900:  # aiodocker's code for "could not connect"
            return self._unreachable(e)
        return DriverError(f"{what}: {e.message}")

    def _unreachable(self, e: BaseException) -> DriverUnavailable:
        detail = _connection_detail(e)
        return DriverUnavailable(f"cannot reach docker at {self._config.socket}: {detail}")


async def docker_available(socket: str) -> str | None:
    """None if a Docker daemon answers at ``socket`` (its version endpoint, which needs no
    API version and is as cheap as /_ping), else why not, in words."""
    try:
        docker = aiodocker.Docker(url=socket, timeout=aiohttp.ClientTimeout(total=_PING_TIMEOUT))
    except ValueError as e:
        return f"invalid docker socket {socket!r}: {e}"
    try:
        await docker.version()
    except DockerError as e:
        if e.status == 900:
            return f"cannot reach docker at {socket}: {_connection_detail(e)}"
        return f"docker at {socket} answered with an error: {e.message}"
    except _CONNECTION_ERRORS as e:
        return f"cannot reach docker at {socket}: {_connection_detail(e)}"
    finally:
        await docker.close()
    return None
