"""The embedded ``process`` driver: every instance is a child process of Guard (Linux only).

An instance is ``spec.command`` run with:

- ``$PORT`` set to a free loopback port Guard picked, and ``spec.env`` plus Guard's
  ``env_extra`` on top of a few inherited variables (``inherit_env``: PATH, locale, ...).
  Guard's own environment is *not* passed through wholesale: it holds Guard's secrets
  (admin tokens) and instances may run untrusted code. ``spec.port`` is ignored: all
  instances share the host's loopback, so each needs its own port and the app must listen
  on ``$PORT``.
- its own working directory ``<root>/<instance id>/`` and its stdout and stderr appended to
  ``output.log`` there (``handle.log_path``), kept under ``log_limit``: past it the file is
  copied to ``output.log.1`` and truncated (logrotate's copytruncate), checked every
  ``log_check_interval``, so disk use is about 2 x ``log_limit`` per instance.
- its own session and process group (``start_new_session``), so stop() signals everything
  the instance started, and ``PR_SET_PDEATHSIG = SIGKILL`` so the kernel kills it if Guard
  dies, even by SIGKILL: a crashed Guard leaves no orphans behind and needs no
  ``reap_orphans()`` pass at its next start (unlike the docker driver, whose containers
  outlive the daemon's client and must be found again by label).

``resources.cpu`` and ``resources.memory`` are NOT enforced by this driver: that needs
cgroups (the docker driver). RLIMIT_AS is not a substitute: it caps virtual address space,
which runtimes such as Go, Java or Python's allocators reserve far beyond what they use, so
it kills healthy instances. CPU use is still measured (``stats``) for ``target_cpu``
scaling and metering, against the configured limit.

Stats come from /proc: CPU is utime + stime (+ cutime + cstime, the reaped children) over
every process in the instance's process group, divided by SC_CLK_TCK, kept monotonic;
memory is the sum of their RSS (field 24 of /proc/PID/stat, the same counter as VmRSS in
/proc/PID/status, read in the same file as the CPU times; pages shared between the
processes are counted once per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from guard.config.model import ContainerSpec
from guard.drivers.base import (
    MAX_LOG_READ,
    Driver,
    DriverError,
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

log = logging.getLogger(__name__)

LOG_LIMIT = 10 * 1024 * 1024
_FOLLOW_POLL = 0.2
LOG_NAME = "output.log"
DEFAULT_INHERIT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
# Instance ids become directory names: no separators, no "." / "..", bounded length.
_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_STOP_POLL = 0.02  # how often stop() checks whether the rest of the group has gone

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# Spawning without a preexec_fn needs setpriv (util-linux >= 2.33) for PDEATHSIG and
# pidfds (Linux 5.3) to see the exit; without either the driver falls back to a full fork.
_HAS_PIDFD = hasattr(os, "pidfd_open")


@functools.cache
def _setpriv() -> str | None:
    """setpriv's path if it has --pdeathsig (checked once, on the first start)."""
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return path if "--pdeathsig" in out.stdout else None


if sys.platform.startswith("linux"):
    # Resolved once here, in the parent: the child (between fork and exec) then only makes
    # the call, without loading a library or looking up a symbol.
    _libc = ctypes.CDLL(None, use_errno=True)
    _prctl = _libc.prctl
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _prctl.restype = ctypes.c_int
    _CLK_TCK = os.sysconf("SC_CLK_TCK")
    _PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
else:  # pragma: no cover - the driver refuses to construct off Linux
    _prctl = None
    _CLK_TCK = _PAGE_SIZE = 0


# ------------------------------------------------------------------------ pure helpers


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/PID/stat the driver uses."""

    pid: int
    state: str  # R, S, D, Z, ...
    pgrp: int
    cpu_ticks: int  # utime + stime + cutime + cstime
    rss_pages: int


def parse_proc_stat(text: str) -> ProcStat:
    """Parse /proc/PID/stat. The command name (field 2) is in parentheses and may itself
    hold spaces and parentheses, so split at the *last* ")"."""
    head, _, tail = text.rpartition(")")
    pid = int(head.split("(", 1)[0])
    f = tail.split()  # f[0] is field 3 (state): field N is f[N - 3]
    return ProcStat(
        pid=pid,
        state=f[0],
        pgrp=int(f[2]),
        cpu_ticks=int(f[11]) + int(f[12]) + int(f[13]) + int(f[14]),
        rss_pages=int(f[21]),
    )


def group_usage(stats: Iterable[ProcStat], pgrp: int) -> tuple[int, int]:
    """(cpu ticks, rss pages) summed over the live members of process group ``pgrp``."""
    ticks = pages = 0
    for st in stats:
        if st.pgrp == pgrp and st.state != "Z":
            ticks += st.cpu_ticks
            pages += st.rss_pages
    return ticks, pages


def instance_env(
    inherited: dict[str, str], spec_env: Iterable[tuple[str, str]], extra: dict[str, str], port: int
) -> dict[str, str]:
    """The environment of an instance: inherited, then spec, then Guard's extra, then PORT
    (last, so nothing can point the app at a port Guard does not proxy to)."""
    return {**inherited, **dict(spec_env), **extra, "PORT": str(port)}


# ------------------------------------------------------------------------ IO helpers


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now: bind port 0, read it, close.

    There is a small race: between this close and the instance's own bind another process
    may take the port. The kernel hands out ephemeral ports in sequence, so a collision
    needs another binder within the instance's start time; the instance then exits at once
    (address in use) and on_exit reports it, and the lifecycle's retry creates a new
    instance with a new port. Passing a bound socket to the child would close the race, but
    apps read $PORT, not an inherited fd."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _pdeathsig_preexec(parent_pid: int) -> Callable[[], None]:
    """What the child runs between fork and exec.

    Python documents ``preexec_fn`` as unsafe when the parent has threads: the child is a
    copy of one thread, and a lock another thread held at fork time stays held forever. This
    function only calls prctl and getppid (no imports, no allocation-heavy work, no logging,
    no locks), which keeps it clear of that. Its other cost: with a preexec_fn, subprocess
    cannot use vfork/posix_spawn, so every start is a full fork of Guard (page tables of a
    big heap: ~ms). If the cold-start benchmark shows it, exec through ``setpriv
    --pdeathsig KILL`` (util-linux) instead and drop the preexec_fn.

    PDEATHSIG fires when the *thread* that forked the child exits, not the process: start()
    must run on the event loop thread, never in a short-lived worker thread."""

    def preexec() -> None:
        if _prctl is None or _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # Guard may have died between fork and prctl; the signal would then never come.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def _killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it has no members left.

    Safe against pid reuse: Linux never hands out a pid that is still some group's id, so
    while the group has members, ``pgid`` is theirs; once empty this raises ESRCH."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed uid (setuid binary): can't be ours to kill
        log.warning("no permission to signal process group %d", pgid)
        return False
    return True


def _read_stats(pgid: int) -> tuple[int, int] | None:
    """Scan /proc for the members of ``pgid``; None if the group leader is gone.

    A full scan costs one small read per process on the host (a few ms with hundreds of
    processes); it runs in a worker thread. Walking /proc/PID/task/*/children would be
    cheaper but misses members reparented to init after their parent exited."""
    try:
        leader = parse_proc_stat(Path(f"/proc/{pgid}/stat").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return None
    if leader.state == "Z":
        return None
    found = [leader]
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit() or int(entry.name) == pgid:
                continue
            try:
                found.append(parse_proc_stat(Path(entry.path, "stat").read_text()))
            except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                continue  # exited while we looked
    return group_usage(found, pgid)


def _read_log(path: Path) -> bytes:
    """The newest ``MAX_LOG_READ`` bytes of output: the rotated file's end, then the file."""
    try:
        with path.open("rb") as f:
            return _newest(f, path)
    except FileNotFoundError:
        return b""


def _newest(f: BinaryIO, path: Path) -> bytes:
    """``_read_log`` from the open log file ``f``, which is left at its end: where a
    follow goes on with nothing lost or read twice."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - MAX_LOG_READ))
    data = f.read()
    if len(data) < MAX_LOG_READ:
        try:
            with path.with_name(path.name + ".1").open("rb") as rotated:
                size = rotated.seek(0, os.SEEK_END)
                rotated.seek(max(0, size - (MAX_LOG_READ - len(data))))
                data = rotated.read() + data
        except FileNotFoundError:
            pass
    return data


def _rotate_log(path: Path) -> None:
    """copytruncate: the child keeps its O_APPEND descriptor, so after the truncate its
    next write lands at the new end of file. Lines written between copy and truncate are
    lost; that is the price of not proxying every byte of output through Guard."""
    shutil.copyfile(path, path.with_name(path.name + ".1"))
    os.truncate(path, 0)


# ------------------------------------------------------------------------ the driver


@dataclass(slots=True, eq=False)
class _Instance:
    """The driver's mutable record of one instance (handles are immutable values)."""

    handle: InstanceHandle
    argv: tuple[str, ...]
    env: dict[str, str]
    stop_timeout: float
    status: InstanceStatus = InstanceStatus.CREATED
    proc: asyncio.subprocess.Process | subprocess.Popen[bytes] | None = None
    watcher: asyncio.Task[None] | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None
    reason: str | None = None
    started_at: float | None = None
    exited_at: float | None = None
    stop_requested: bool = False
    cpu_high: float = 0.0  # stats() never reports less CPU than it once did

    def state(self) -> InstanceState:
        return InstanceState(
            status=self.status,
            exit_code=self.exit_code,
            reason=self.reason,
            pid=self.handle.pid,
            started_at=self.started_at,
            exited_at=self.exited_at,
            stop_requested=self.stop_requested,
        )


class ProcessDriver(Driver):
    name = "process"

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        log_limit: int = LOG_LIMIT,
        log_check_interval: float = 1.0,
        inherit_env: Iterable[str] = DEFAULT_INHERIT_ENV,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if _prctl is None:
            raise DriverError("the process driver needs Linux (prctl, /proc)")
        self._root = Path(root)
        self._host = host
        self._log_limit = log_limit
        self._log_check_interval = log_check_interval
        self._inherit_env = tuple(inherit_env)
        self._clock = clock
        self._instances: dict[str, _Instance] = {}
        self._listeners = ExitListeners()

    # ---------------------------------------------------------------- lifecycle

    async def create(
        self, spec: ContainerSpec, *, instance_id: str, env_extra: dict[str, str]
    ) -> InstanceHandle:
        if not _INSTANCE_ID.fullmatch(instance_id):
            raise DriverError(f"invalid instance id {instance_id!r}")
        if instance_id in self._instances:
            raise DriverError(f"instance {instance_id} already exists")
        if not spec.command:
            raise DriverError("the process driver needs container.command")
        workdir = self._root / instance_id
        # 0o700: logs may hold whatever the app prints, including its secrets.
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        workdir.mkdir(mode=0o700, exist_ok=True)
        port = pick_free_port(self._host)
        extra = tuple((name, pick_free_port(self._host)) for name, _ in spec.extra_ports)
        inherited = {k: os.environ[k] for k in self._inherit_env if k in os.environ}
        handle = InstanceHandle(
            id=instance_id,
            driver=self.name,
            host=self._host,
            port=port,
            log_path=workdir / LOG_NAME,
            workdir=workdir,
            ports=extra,
        )
        ports_env = {port_env(name): str(p) for name, p in extra}
        self._instances[instance_id] = _Instance(
            handle=handle,
            argv=spec.command,
            env=instance_env(inherited, spec.env, {**env_extra, **ports_env}, port),
            stop_timeout=spec.stop_timeout,
        )
        return handle

    async def start(self, handle: InstanceHandle) -> InstanceHandle:
        inst = self._get(handle)
        if inst.status in (InstanceStatus.STARTING, InstanceStatus.RUNNING):
            raise DriverError(f"instance {handle.id} is already {inst.status}")
        assert inst.handle.log_path is not None and inst.handle.workdir is not None
        inst.status = InstanceStatus.STARTING
        inst.stop_requested = False
        fd = os.open(inst.handle.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        exited: asyncio.Future[int] | None = None
        proc: asyncio.subprocess.Process | subprocess.Popen[bytes]
        try:
            setpriv = _setpriv() if _HAS_PIDFD else None
            if setpriv is not None:
                proc, exited = self._spawn_fast(inst, fd, setpriv)
            else:
                proc = await asyncio.create_subprocess_exec(
                    *inst.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=fd,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=inst.handle.workdir,
                    env=inst.env,
                    start_new_session=True,  # own session => own process group, pgid == pid
                    preexec_fn=_pdeathsig_preexec(os.getpid()),
                )
        except (OSError, ValueError) as e:  # missing executable, permissions, bad argv
            inst.status = InstanceStatus.CREATED
            inst.reason = f"failed to start: {e}"
            raise DriverError(f"cannot start {inst.argv[0]!r}: {e}") from e
        finally:
            os.close(fd)  # the child has its own copy
        inst.proc = proc
        inst.handle = replace(inst.handle, pid=proc.pid)
        inst.status = InstanceStatus.RUNNING
        inst.exit_code = inst.reason = inst.exited_at = None
        inst.started_at = self._clock()
        inst.exited = asyncio.Event()
        if exited is None:
            assert isinstance(proc, asyncio.subprocess.Process)
            exited = asyncio.ensure_future(proc.wait())
        inst.watcher = asyncio.get_running_loop().create_task(
            self._watch(inst, proc.pid, exited), name=f"guard-process-{handle.id}"
        )
        return inst.handle

    def _spawn_fast(
        self, inst: _Instance, fd: int, setpriv: str
    ) -> tuple[subprocess.Popen[bytes], asyncio.Future[int]]:
        """vfork+exec through ``setpriv --pdeathsig KILL`` (no preexec_fn, so subprocess
        can use vfork: ~0.4 ms instead of a ~4 ms full fork of Guard), and the exit seen
        through a pidfd on the event loop instead of a child watcher.

        One difference from the preexec path: that one re-checks getppid() after prctl, in
        case Guard died in between; setpriv does not, so a Guard killed in the microseconds
        between this fork and setpriv's prctl could leave this one instance behind."""
        argv = [setpriv, "--pdeathsig", "KILL", "--", *inst.argv]
        program = inst.argv[0]
        if "/" in program:
            assert inst.handle.workdir is not None
            found = os.access(Path(inst.handle.workdir, program), os.X_OK)
        else:
            found = shutil.which(program, path=inst.env.get("PATH", os.defpath)) is not None
        if not found:
            # setpriv would fail to exec it in the child; say so here, as Popen would.
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", program)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            cwd=inst.handle.workdir,
            env=inst.env,
            start_new_session=True,  # own session => own process group, pgid == pid
        )
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[int] = loop.create_future()
        pidfd = os.pidfd_open(proc.pid)

        def on_exit() -> None:
            code = proc.poll()  # reaps it; None only on a spurious wake-up
            if code is None:
                return
            loop.remove_reader(pidfd)
            os.close(pidfd)
            if not exited.done():
                exited.set_result(code)

        loop.add_reader(pidfd, on_exit)
        return proc, exited

    async def stop(self, handle: InstanceHandle, timeout: float) -> None:
        inst = self._get(handle)
        if inst.status is not InstanceStatus.RUNNING or inst.proc is None:
            return
        pgid = inst.proc.pid
        inst.stop_requested = True
        deadline = self._clock() + max(0.0, timeout)
        if timeout > 0 and _killpg(pgid, signal.SIGTERM):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(inst.exited.wait(), timeout)
            # The main process is gone; helpers it started may still be shutting down.
            # Give them the rest of the grace period too.
            while self._clock() < deadline and _killpg(pgid, 0):
                await asyncio.sleep(_STOP_POLL)
        _killpg(pgid, signal.SIGKILL)
        await inst.exited.wait()

    async def remove(self, handle: InstanceHandle) -> None:
        inst = self._get(handle)
        await self.stop(handle, 0.0)
        if inst.watcher is not None:
            await inst.watcher  # on_exit has fired before the record goes away
        self._instances.pop(handle.id, None)
        if inst.handle.workdir is not None:
            await asyncio.to_thread(shutil.rmtree, inst.handle.workdir, True)

    async def close(self) -> None:
        instances = list(self._instances.values())
        await asyncio.gather(
            *(self.stop(i.handle, i.stop_timeout) for i in instances), return_exceptions=True
        )

    # ---------------------------------------------------------------- observation

    async def inspect(self, handle: InstanceHandle) -> InstanceState:
        return self._get(handle).state()

    async def stats(self, handle: InstanceHandle) -> InstanceStats:
        inst = self._get(handle)
        if inst.status is not InstanceStatus.RUNNING or inst.proc is None:
            raise DriverError(f"instance {handle.id} is not running")
        usage = await asyncio.to_thread(_read_stats, inst.proc.pid)
        if usage is None:
            raise DriverError(f"instance {handle.id} is not running")
        ticks, pages = usage
        # A reaped grandchild's time moves into its parent's cutime, but one reaped by init
        # is lost to us: keep the counter monotonic for rates and metering.
        inst.cpu_high = max(inst.cpu_high, ticks / _CLK_TCK)
        return InstanceStats(
            cpu_seconds=inst.cpu_high, memory_bytes=pages * _PAGE_SIZE, at=self._clock()
        )

    async def logs(self, handle: InstanceHandle, tail: int | None) -> bytes:
        path = self._get(handle).handle.log_path
        assert path is not None
        return last_lines(await asyncio.to_thread(_read_log, path), tail)

    async def follow_logs(
        self, handle: InstanceHandle, tail: int | None = 0
    ) -> AsyncIterator[bytes]:
        """Polls the file (``tail -F``): the last ``tail`` lines, then on from the offset
        they ended at, again from the start after a rotation, until the instance is
        removed."""
        path = self._get(handle).handle.log_path
        assert path is not None
        try:
            f = await asyncio.to_thread(path.open, "rb")
        except OSError as e:
            raise DriverError(f"cannot read the output of {handle.id}: {e.strerror}") from e
        try:
            first = last_lines(await asyncio.to_thread(_newest, f, path), tail)
            if first:
                yield first
            while True:
                chunk = await asyncio.to_thread(f.read, 64 * 1024)
                if chunk:
                    yield chunk
                    continue
                if handle.id not in self._instances:
                    return
                try:
                    if path.stat().st_size < f.tell():  # rotated: copied, then truncated
                        f.seek(0)
                except FileNotFoundError:
                    return
                await asyncio.sleep(_FOLLOW_POLL)
        finally:
            f.close()

    def on_exit(self, callback: ExitCallback) -> Callable[[], None]:
        return self._listeners.add(callback)

    # ---------------------------------------------------------------- internals

    def _get(self, handle: InstanceHandle) -> _Instance:
        inst = self._instances.get(handle.id)
        if inst is None:
            raise InstanceNotFound(f"no instance {handle.id}")
        return inst

    async def _watch(self, inst: _Instance, pid: int, waiter: asyncio.Future[int]) -> None:
        """Wait for the exit (reaped by the pidfd reader or the loop's child watcher),
        keeping the log file bounded meanwhile; then record the exit and tell the
        listeners."""
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=self._log_check_interval)
                if done:
                    break
                await self._bound_log(inst)
        except asyncio.CancelledError:
            waiter.cancel()
            raise
        code = waiter.result()
        if not inst.stop_requested:
            # The instance is its process group: whatever the main process left running
            # would be an orphan nobody stops.
            _killpg(pid, signal.SIGKILL)
        reason = exit_reason(code) + (" after stop" if inst.stop_requested else "")
        inst.status = InstanceStatus.EXITED
        inst.exit_code = code
        inst.reason = reason
        inst.exited_at = self._clock()
        inst.exited.set()
        if not inst.stop_requested:
            log.info("instance %s %s", inst.handle.id, reason)
        self._listeners.fire(inst.handle, code, reason)

    async def _bound_log(self, inst: _Instance) -> None:
        path = inst.handle.log_path
        assert path is not None
        try:
            if path.stat().st_size > self._log_limit:
                await asyncio.to_thread(_rotate_log, path)
        except OSError as e:
            if e.errno != errno.ENOENT:  # removed under us: nothing to bound
                log.warning("cannot rotate %s: %s", path, e)
