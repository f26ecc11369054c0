"""The supervisor for ``workers > 1``: starts N data-plane workers and keeps them alive.

Workers are fresh interpreters (``python -m guard.runtime.worker``) rather than forks, so
none inherits loop or socket state; each binds the listeners with SO_REUSEPORT. A worker
that dies is restarted with a growing backoff; one that exits with an error at its very
first start (a port in use, say) stops Guard with its exit code. SIGTERM drains every
worker; SIGHUP is passed on so each reloads its routes.

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
from guard.runtime.watch import RouteWatcher

log = logging.getLogger("guard.supervisor")

_FIRST_START_GRACE = 1.5  # seconds a worker must live for its first start to count
_MAX_BACKOFF = 30.0


class Supervisor:
    def __init__(self, config: GuardConfig) -> None:
        self.config = config
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
            await self.admin.start()

    def _stop_metrics(self) -> None:
        if self.admin is not None:
            self.admin.close()
        self.hub.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def _spawn(self, worker_id: int) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "guard.runtime.worker",
            "--config",
            str(Path(self.config.path).resolve()),
            "--worker-id",
            str(worker_id),
            env=self._worker_env(),
        )
        self.procs[worker_id] = proc
        log.info("worker %d started (pid %d)", worker_id, proc.pid)
        return proc

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
            proc = await self._spawn(worker_id)
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

    def _signal_all(self, sig: int) -> None:
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
            return 1
        try:
            return await self._run()
        finally:
            await self._stop_control()
            self._stop_metrics()

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
        watcher = RouteWatcher(self.config.routes_path, self._reload)
        watcher.start()
        keepers = [asyncio.create_task(self._keep(i, stop)) for i in range(self.config.workers)]
        print(f"guard: supervising {self.config.workers} workers", file=sys.stderr, flush=True)
        await stop.wait()
        watcher.stop()
        self.stopping = True
        self._signal_all(signal.SIGTERM)
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
        return self.failed or 0


async def supervise(config: GuardConfig) -> int:
    return await Supervisor(config).run()
