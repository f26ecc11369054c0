"""The driver interface: how Guard makes, runs and watches the instances of a container service.

A driver turns a ``ContainerSpec`` into running instances (local processes, Docker
containers) and reports on them. It decides nothing: when to start, stop or replace an
instance is the control plane's call; readiness is the activator's probe. Drivers only
run what they are told and say what happened.

Handles are values: ``create`` returns one, ``start`` returns it again with what only a
running instance has (a pid, a container id). Drivers key their bookkeeping on
``InstanceHandle.id``, so any copy of an instance's handle works with every call.
"""

from __future__ import annotations

import abc
import enum
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from guard.config.model import ContainerSpec

log = logging.getLogger(__name__)

MAX_LOG_READ = 4 * 1024 * 1024  # bytes of output one logs() call returns at most


class DriverError(Exception):
    """A driver call failed; the message says why in terms a 503 body can carry."""


class DriverUnavailable(DriverError):
    """The driver's daemon cannot be reached (down, restarting, socket gone). Says nothing
    about the instance's app: the control plane retries soon rather than backing off as
    it does for an app that fails to start."""


class InstanceNotFound(DriverError):
    """The handle names no instance this driver knows (never created, or removed)."""


class InstanceStatus(enum.StrEnum):
    CREATED = "created"  # resources exist (dir, port, container) but nothing runs
    STARTING = "starting"  # start() is in progress
    RUNNING = "running"  # the process / container is up; not necessarily ready to serve
    EXITED = "exited"  # it ran and is gone; exit_code and reason say how


@dataclass(frozen=True, slots=True)
class InstanceHandle:
    id: str  # unique per driver; chosen by Guard
    driver: str  # "process" | "docker"
    host: str  # where Guard connects to the instance
    port: int  # ... and on which port ($PORT inside the instance)
    pid: int | None = None  # process driver: main pid (= its process group id) once started
    container_id: str | None = None  # docker driver
    log_path: Path | None = None  # captured stdout/stderr, when the driver keeps a file
    # ``spec.extra_ports``: (name, port Guard connects to), in the spec's order.
    ports: tuple[tuple[str, int], ...] = ()
    workdir: Path | None = None  # per-instance working directory, when there is one

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class InstanceState:
    status: InstanceStatus
    # Python's convention, as in ``Popen.returncode``: >= 0 is the exit status, -N means
    # killed by signal N. None until exited.
    exit_code: int | None = None
    reason: str | None = None  # "exited with code 3", "killed by signal 9 (SIGKILL)", ...
    pid: int | None = None
    started_at: float | None = None  # time.monotonic()
    exited_at: float | None = None  # time.monotonic()
    stop_requested: bool = False  # the exit followed stop(): expected, not a crash


@dataclass(frozen=True, slots=True)
class InstanceStats:
    cpu_seconds: float  # cumulative user + system CPU time of the instance; never decreases
    memory_bytes: int  # resident set size now
    at: float  # time.monotonic() when read: rate = d(cpu_seconds) / d(at)


# Fired once per exit of a started instance, on the event loop: (handle, exit_code, reason).
# exit_code follows InstanceState.exit_code's convention. Must not block; schedule work.
ExitCallback = Callable[[InstanceHandle, int, str], None]


def port_env(name: str) -> str:
    """The variable an extra port's number is in: ``admin-ui`` -> ``PORT_ADMIN_UI``."""
    return "PORT_" + "".join(c if c.isalnum() else "_" for c in name.upper())


def last_lines(data: bytes, tail: int | None) -> bytes:
    """The last ``tail`` lines of ``data`` (None: all of it), at most ``MAX_LOG_READ``."""
    if tail is not None:
        if tail <= 0:
            return b""
        end = len(data) - 1 if data.endswith(b"\n") else len(data)
        cut = end
        for _ in range(tail):
            cut = data.rfind(b"\n", 0, cut)
            if cut < 0:
                break
        data = data[cut + 1 :] if cut >= 0 else data
    return data[-MAX_LOG_READ:]


def exit_reason(code: int) -> str:
    """Human words for a Python-convention exit code (negative = signal)."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"killed by signal {-code}"
    return f"killed by signal {-code} ({name})"


class ExitListeners:
    """The on_exit callback registry every driver needs: register, unregister, fire.

    One failing listener must not keep the others (the lifecycle owner, metrics, logs) from
    hearing about an exit, so exceptions are logged and swallowed."""

    __slots__ = ("_callbacks",)

    def __init__(self) -> None:
        self._callbacks: list[ExitCallback] = []

    def add(self, callback: ExitCallback) -> Callable[[], None]:
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    def fire(self, handle: InstanceHandle, exit_code: int, reason: str) -> None:
        for callback in tuple(self._callbacks):  # a callback may unregister itself
            try:
                callback(handle, exit_code, reason)
            except Exception:
                log.exception("on_exit callback failed for instance %s", handle.id)


class Driver(abc.ABC):
    """One way of running instances. Methods are coroutines run on Guard's event loop."""

    name: str
    # For /metrics: whether the driver's daemon answers, and how often it stopped answering
    # (drivers with no daemon, like process, are always up).
    up: bool = True
    outages: int = 0
    # Whether instances keep running when Guard lets go of them (docker containers; not
    # the process driver's children): then a binary restart hands them to the successor,
    # which adopts them, instead of stopping them (``release``).
    outlives_guard: bool = False

    @abc.abstractmethod
    async def create(
        self, spec: ContainerSpec, *, instance_id: str, env_extra: dict[str, str]
    ) -> InstanceHandle:
        """Allocate an instance (port, directory, container) without running it.

        ``env_extra`` is added on top of ``spec.env`` (Guard's own variables, e.g. the key
        of a per-key instance); ``$PORT`` is always set by the driver."""

    @abc.abstractmethod
    async def start(self, handle: InstanceHandle) -> InstanceHandle:
        """Run a created (or exited) instance; returns the handle with pid / container id.

        Returns once the process or container exists, not when it is ready to serve."""

    @abc.abstractmethod
    async def stop(self, handle: InstanceHandle, timeout: float) -> None:
        """Ask the instance to stop (SIGTERM), force it (SIGKILL) after ``timeout`` seconds,
        and return once it has exited. A no-op for an instance that is not running."""

    @abc.abstractmethod
    async def remove(self, handle: InstanceHandle) -> None:
        """Free everything the instance holds, killing it first if it still runs."""

    @abc.abstractmethod
    async def inspect(self, handle: InstanceHandle) -> InstanceState: ...

    @abc.abstractmethod
    async def stats(self, handle: InstanceHandle) -> InstanceStats:
        """CPU and memory of a running instance; ``DriverError`` if it is not running."""

    async def logs(self, handle: InstanceHandle, tail: int | None) -> bytes:
        """The instance's last ``tail`` lines of stdout and stderr (None: what is kept, up
        to ``MAX_LOG_READ``). ``DriverError`` when there are none to read."""
        raise DriverError(f"the {self.name} driver keeps no logs")

    def follow_logs(self, handle: InstanceHandle, tail: int | None = 0) -> AsyncIterator[bytes]:
        """The last ``tail`` lines (None: what is kept), then output as the instance writes
        it until it is gone: one read, so no line is lost or repeated between the two."""
        raise DriverError(f"the {self.name} driver keeps no logs")

    async def reap_orphans(self) -> list[str]:
        """Remove the instances an earlier Guard left running that nobody adopted, and say
        which. Nothing to do for a driver whose instances cannot outlive Guard (the
        process driver's die with it)."""
        return []

    def release(self, handle: InstanceHandle) -> None:
        """Let go of a running instance without stopping it: another Guard adopted it.
        From now on this driver neither stops, removes, meters nor reports it."""
        raise DriverError(f"the {self.name} driver cannot hand instances over")

    @abc.abstractmethod
    def on_exit(self, callback: ExitCallback) -> Callable[[], None]:
        """Register ``callback`` for every instance exit; returns the function that
        unregisters it."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop every instance this driver runs (each with its own stop timeout) and free
        the driver's resources: Guard's orderly shutdown."""
