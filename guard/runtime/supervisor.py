"""The supervisor for ``workers > 1``: starts N data-plane workers and keeps them alive.

Workers are fresh interpreters (``python -m guard.runtime.worker``) rather than forks, so
none inherits loop state. The supervisor binds the listening sockets, one SO_REUSEPORT
socket per listener and worker slot, and each worker inherits its slot's descriptors
(``guard.runtime.sockets``): the sockets, and the connections in their accept queues,
outlive any worker. A worker that dies is restarted on the same sockets with a growing
backoff; one that fails at its very first start stops Guard with its exit code. SIGTERM
drains every worker; SIGHUP is passed on so each reloads its routes. SIGUSR2 starts a new
Guard on the same sockets (``guard.runtime.handover``) and, once it serves, drains the
workers (SIGUSR1 tells them a successor serves) and exits.

The supervisor also owns the admin address: workers stream their metric snapshots to it
(``guard.metrics.relay``) and one scrape of its /metrics shows the sum of all of them. And
it hosts the one control plane and usage ledger (``ControlHost``) when the config has
container services or ``usage:``: workers reach it over ``guard.control.link``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from guard.admin.api import AdminApi
from guard.admin.routes_api import ReloadOutcome
from guard.admin.server import AdminPages, AdminServer
from guard.config import load_routes
from guard.config.model import GuardConfig
from guard.control.link import ENV as CONTROL_SOCKET_ENV
from guard.control.link import ControlServer
from guard.errors import ConfigErrors
from guard.metrics.collector import MetricsPage
from guard.metrics.relay import ENV as METRICS_SOCKET_ENV
from guard.metrics.relay import SnapshotHub
from guard.metrics.snapshot import Snapshot, merge
from guard.runtime.control_host import ControlHost, needs_control_host, needs_control_plane
from guard.runtime.handover import (
    READY_ENV,
    READY_TIMEOUT,
    PidFile,
    notify_ready,
    ready_pipe,
    start_successor,
    take_sockets,
    wait_ready,
)
from guard.runtime.sockets import ADMIN, ListenSockets
from guard.runtime.sockets import ENV as LISTEN_FDS_ENV
from guard.runtime.watch import RouteWatcher

log = logging.getLogger("guard.supervisor")

_FIRST_START_GRACE = 1.5  # seconds a worker must live for its first start to count
_MAX_BACKOFF = 30.0


class Supervisor:
    def __init__(self, config: GuardConfig, sockets: ListenSockets) -> None:
        self.config = config
        self.sockets = sockets
        self.ready = asyncio.Event()  # every worker served once
        self._ready_workers: set[int] = set()
        self.handed_over = False
        self._reloads_sent = 0  # SIGHUPs sent to the workers so far
        self._restart: asyncio.Task[None] | None = None
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.failed: int | None = None
        self.restarts = 0
        # A private directory: the socket path stays short (sun_path is ~108 bytes) and
        # no other user can connect and feed us snapshots.
        self._dir = tempfile.mkdtemp(prefix="guard-")
        self.hub = SnapshotHub(os.path.join(self._dir, "metrics.sock"))
        self.admin: AdminServer | None = None
        self.control: ControlHost | None = None
        self.control_server: ControlServer | None = None
        self._reloads: set[asyncio.Task[ReloadOutcome]] = set()
        self._served = config.routes  # the route files in force, for the admin API
        self._reload_lock = asyncio.Lock()  # reloads in turn: an older read never lands last

    async def _start_control(self) -> None:
        if not needs_control_host(self.config):
            return
        self.control = ControlHost(self.config)
        await self.control.start()
        self.control_server = ControlServer(
            self.control.plane,
            os.path.join(self._dir, "control.sock"),
            traffic=self.control.traffic,
        )
        await self.control_server.start()

    def _snapshot(self) -> Snapshot:
        control = self.control
        if control is None:
            return self.hub.snapshot()
        return merge([self.hub.snapshot(), control.snapshot()])

    def _reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload_now())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload_now(self) -> ReloadOutcome:
        """SIGHUP, a changed file, or the admin API: the control plane takes the new routes
        first (the workers' wakes for a new service need its controller), then every worker
        is signalled to reload. Each worker reads the files itself, within milliseconds;
        the outcome does not wait for them."""
        async with self._reload_lock:
            try:
                routes = await asyncio.to_thread(
                    load_routes,
                    self.config.routes_path,
                    self.config.listeners,
                    self.config.drivers,
                )
            except ConfigErrors as e:
                log.error("route reload rejected:\n%s", e)
                self._signal_all(signal.SIGHUP)  # each worker logs and counts it too
                return ReloadOutcome.rejected(*(str(err) for err in e.errors))
            if self.control is None and needs_control_plane(routes):
                why = (
                    "container services and health checks need the control plane; restart"
                    " Guard to start it"
                )
                log.error("route reload rejected: %s", why)
                self._signal_all(signal.SIGHUP)  # the workers refuse it the same way
                return ReloadOutcome.rejected(why)
            if self.control is not None:
                await self.control.reload(routes)
            self._served = routes
            self._signal_all(signal.SIGHUP)
            return ReloadOutcome(routes)

    async def _start_metrics(self) -> None:
        await self.hub.start()
        if self.config.admin is not None:
            page = MetricsPage(self._snapshot)
            self.admin = AdminServer(
                self.config.admin,
                AdminPages(
                    metrics=page.render,
                    metrics_type=page.content_type,
                    metrics_async=page.render_async,
                    draining=lambda: self.stopping,
                    # The control host starts after the admin server: plane is None until.
                    api=AdminApi.build(
                        self.config,
                        routes=lambda: self._served,
                        plane=lambda: self.control.plane if self.control is not None else None,
                        reload_now=self.reload_now,
                    ).handle,
                ),
            )
            await self.admin.start(self.sockets.of(ADMIN))

    def _stop_metrics(self) -> None:
        if self.admin is not None:
            self.admin.close()
        self.hub.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def _spawn(self, worker_id: int) -> tuple[asyncio.subprocess.Process, int]:
        """A worker on its share of the sockets; also the read end of its readiness pipe."""
        share = self.sockets.for_worker(worker_id, self.config.workers)
        described, fds = share.describe()
        read_fd, write_fd = ready_pipe()
        env = {**self._worker_env(), LISTEN_FDS_ENV: described, READY_ENV: str(write_fd)}
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "guard.runtime.worker",
                "--config",
                str(Path(self.config.path).resolve()),
                "--worker-id",
                str(worker_id),
                env=env,
                pass_fds=(*fds, write_fd),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.procs[worker_id] = proc
        log.info("worker %d started (pid %d, fds %s)", worker_id, proc.pid, fds)
        return proc, read_fd

    def _worker_env(self) -> dict[str, str]:
        env = {**os.environ, METRICS_SOCKET_ENV: self.hub.path}
        if self.control_server is not None:
            env[CONTROL_SOCKET_ENV] = self.control_server.path
        return env

    async def _keep(self, worker_id: int, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.1
        first = True
        while not self.stopping:
            started = loop.time()
            reloads_before = self._reloads_sent
            proc, ready_fd = await self._spawn(worker_id)
            if await wait_ready(ready_fd, READY_TIMEOUT) is not None:
                if self._reloads_sent != reloads_before and proc.returncode is None:
                    # A reload signalled while it started may have come before its
                    # handler and after it read the files: it reloads once more.
                    proc.send_signal(signal.SIGHUP)
                self._ready_workers.add(worker_id)
                if len(self._ready_workers) == self.config.workers:
                    self.ready.set()
            elif first and not self.stopping:
                # It could not start (a bad file, a port it had to bind itself): restarting
                # would only loop, and a Guard taking over must not report ready.
                if proc.returncode is None:
                    proc.kill()
                rc = await proc.wait()
                log.error("worker %d failed at start (exit %s); stopping", worker_id, rc)
                self.failed = rc if rc and rc > 0 else 1
                stop.set()
                return
            rc = await proc.wait()
            if self.stopping:
                return
            lived = loop.time() - started
            if first and lived < _FIRST_START_GRACE and rc is not None and rc > 0:
                # Its own error exit at start (a port in use, a bad file): restarting
                # would only loop. A worker killed by a signal is restarted instead.
                log.error("worker %d failed at start (exit %s); stopping", worker_id, rc)
                self.failed = rc if rc else 1
                stop.set()
                return
            first = False
            backoff = 0.1 if lived > _MAX_BACKOFF else min(backoff * 2, _MAX_BACKOFF)
            self.restarts += 1
            log.warning(
                "worker %d exited (%s) after %.1fs; restarting in %.1fs",
                worker_id,
                rc,
                lived,
                backoff,
            )
            await asyncio.sleep(backoff)

    def _on_sigusr2(self, stop: asyncio.Event) -> None:
        if self.stopping or stop.is_set() or not self.ready.is_set():
            log.warning("SIGUSR2 ignored: Guard is starting or stopping")
            return
        if self._restart is not None and not self._restart.done():
            log.warning("SIGUSR2 ignored: a restart is already under way")
            return

        async def restart() -> None:
            successor = await start_successor(self.sockets)
            if successor is not None and not stop.is_set():
                self.handed_over = True
                if self.control is not None:
                    self.control.hand_over(successor.adopted)
                stop.set()

        self._restart = asyncio.get_running_loop().create_task(restart())

    def _signal_all(self, sig: int) -> None:
        if sig == signal.SIGHUP:
            self._reloads_sent += 1
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(sig)

    async def run(self) -> int:
        try:
            await self._start_metrics()
            await self._start_control()
        except OSError as e:
            print(f"guard: cannot listen: {e}", file=sys.stderr)
            await self._stop_control()
            self._stop_metrics()
            self.sockets.close()
            return 1
        try:
            return await self._run()
        finally:
            await self._stop_control()
            self._stop_metrics()
            self.sockets.close()

    async def _stop_control(self) -> None:
        # After the workers exited: nothing is in flight on the instances any more.
        if self.control_server is not None:
            self.control_server.close()
        if self.control is not None:
            await self.control.close()

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        loop.add_signal_handler(signal.SIGUSR2, lambda: self._on_sigusr2(stop))
        watcher = RouteWatcher(self.config.routes_path, self._reload)
        watcher.start()
        keepers = [asyncio.create_task(self._keep(i, stop)) for i in range(self.config.workers)]
        pid_file = PidFile(self.config.pid_file)
        ready = asyncio.create_task(self.ready.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([ready, stopped], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self.ready.is_set() and not stop.is_set():
            print(f"guard: supervising {self.config.workers} workers", file=sys.stderr, flush=True)
            pid_file.write()
            # A Guard that started this one hands over now (releasing what we adopted).
            notify_ready(self.control.adopted() if self.control is not None else ())
        await stopped
        watcher.stop()
        self.stopping = True
        if self._restart is not None and not self._restart.done():
            self._restart.cancel()  # SIGTERM during a restart: the successor is stopped too
            await asyncio.gather(self._restart, return_exceptions=True)
        if self.handed_over:
            # The successor answers the admin address and owns the sockets from here.
            if self.admin is not None:
                self.admin.stop_accepting()
            self._signal_all(signal.SIGUSR1)
        else:
            self._signal_all(signal.SIGTERM)
        self.sockets.close()  # the workers' copies close as their drain begins
        grace = self.config.http.timeouts.drain + 5.0
        waits = [p.wait() for p in self.procs.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), grace)
        except TimeoutError:
            log.warning("workers still running %.0fs after SIGTERM; killing them", grace)
            self._signal_all(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in self.procs.values()))
        for k in keepers:
            k.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        pid_file.remove()
        return self.failed or 0


async def supervise(config: GuardConfig) -> int:
    try:
        sockets = take_sockets(config, slots=config.workers, reuse_port=True)
    except OSError as e:
        print(f"guard: cannot listen: {e}", file=sys.stderr)
        return 1
    return await Supervisor(config, sockets).run()
