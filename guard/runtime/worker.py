"""One data-plane process: listeners, route tables, upstream pools, drain on SIGTERM.

With ``workers: 1`` this runs inside ``guard run`` itself; with more, the supervisor starts
one of these per worker (``python -m guard.runtime.worker``), each binding the listeners
with SO_REUSEPORT so the kernel spreads connections over them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from guard.config import load_config, load_routes
from guard.config.model import GuardConfig, RoutesConfig
from guard.errors import ConfigErrors
from guard.http.forwarding import TrustedProxies
from guard.proxy.context import AccessLog, ListenerContext
from guard.proxy.deadlines import DeadlineSweeper, tick_for
from guard.proxy.http_proxy import HttpProxyProtocol
from guard.routing import HttpRouteTable, build_http_tables
from guard.upstream.pool import UpstreamSettings
from guard.upstream.resolver import Resolver
from guard.upstream.service import Service

log = logging.getLogger("guard.worker")

HTTP_PROTOCOLS = ("http",)


class Worker:
    """Owns the data plane of one process for the lifetime of one config."""

    def __init__(self, config: GuardConfig, *, reuse_port: bool, worker_id: int = 0) -> None:
        self.config = config
        self.reuse_port = reuse_port
        self.worker_id = worker_id
        self.loop = asyncio.get_running_loop()
        http = config.http
        t = http.timeouts
        self.sweeper = DeadlineSweeper(
            self.loop, tick_for([t.connect, t.request_header, t.response_header, t.idle])
        )
        self.resolver = Resolver()
        self.upstream_settings = UpstreamSettings(
            parser=http.parser,
            max_header_bytes=max(http.limits.max_header_bytes, 64 * 1024),
            max_headers=max(http.limits.max_headers, 256),
            connect_timeout=t.connect,
            idle_timeout=t.idle,
        )
        self.access_log = AccessLog.open(self.loop, http.access_log) if http.access_log else None
        self.services: dict[str, Service] = {}
        self.contexts: dict[str, ListenerContext] = {}
        self.servers: list[asyncio.Server] = []
        self.stopping = asyncio.Event()

    # ------------------------------------------------------------------ building
    def _build(self, routes: RoutesConfig) -> tuple[dict[str, Service], dict[str, HttpRouteTable]]:
        services = {
            name: Service(
                cfg, self.upstream_settings, loop=self.loop, resolver=self.resolver,
                sweeper=self.sweeper,
            )
            for name, cfg in routes.services.items()
            if cfg.servers
        }
        http_listeners = {
            n for n, lc in self.config.listeners.items() if lc.protocol in HTTP_PROTOCOLS
        }
        tables = build_http_tables(
            [r for r in routes.routes if r.listener in http_listeners], services
        )
        for name in http_listeners:
            tables.setdefault(name, HttpRouteTable(name, []))
        return services, tables

    async def start(self) -> None:
        self.sweeper.start()
        services, tables = self._build(self.config.routes)
        self.services = services
        http = self.config.http
        trusted = TrustedProxies(http.trusted_proxies)
        via = b"guard" if http.via else None
        for name, lc in self.config.listeners.items():
            if lc.protocol not in HTTP_PROTOCOLS:
                continue
            ctx = ListenerContext(
                name=name,
                proto=b"https" if lc.protocol == "https" else b"http",
                http=http,
                table=tables[name],
                sweeper=self.sweeper,
                trusted=trusted,
                via=via,
                access_log=self.access_log,
                services=services,
            )
            self.contexts[name] = ctx
            server = await self.loop.create_server(
                lambda ctx=ctx: HttpProxyProtocol(ctx),
                lc.host,
                lc.port,
                reuse_address=True,
                reuse_port=self.reuse_port,
                backlog=4096,
            )
            self.servers.append(server)
            log.info("worker %d: listener %s (%s) on %s", self.worker_id, name, lc.protocol,
                     lc.address)

    def reload_routes(self) -> bool:
        """Rebuild route tables and services from the route files; keep the old on error."""
        try:
            routes = load_routes(
                self.config.routes_path, self.config.listeners, self.config.drivers
            )
        except ConfigErrors as e:
            log.error("route reload rejected, keeping the current table:\n%s", e)
            return False
        old = self.services
        services, tables = self._build(routes)
        for name, ctx in self.contexts.items():
            ctx.table = tables[name]  # one reference swap: in-flight requests keep theirs
            ctx.services = services
        self.services = services
        for svc in old.values():
            svc.close()
        log.info("routes reloaded: %d routes, %d services", len(routes.routes),
                 len(routes.services))
        return True

    # ------------------------------------------------------------------ stopping
    async def drain(self, grace: float) -> None:
        for server in self.servers:
            server.close()
        for ctx in self.contexts.values():
            ctx.draining = True
            for conn in list(ctx.connections):
                conn.drain()  # type: ignore[attr-defined]
        deadline = self.loop.time() + grace
        while any(ctx.connections for ctx in self.contexts.values()):
            if self.loop.time() >= deadline:
                left = sum(len(ctx.connections) for ctx in self.contexts.values())
                log.warning("drain grace expired with %d connections open; closing them", left)
                for ctx in self.contexts.values():
                    for conn in list(ctx.connections):
                        conn.transport.abort()  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.02)
        for svc in self.services.values():
            svc.close()
        if self.access_log is not None:
            self.access_log.flush()
        self.sweeper.stop()


async def serve(config: GuardConfig, *, reuse_port: bool = False, worker_id: int = 0) -> int:
    """Run one data-plane worker until SIGTERM/SIGINT, then drain and return 0."""
    worker = Worker(config, reuse_port=reuse_port, worker_id=worker_id)
    loop = worker.loop
    await worker.start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, worker.reload_routes)
    if worker_id == 0:
        print(f"guard: serving ({len(worker.servers)} listeners)", file=sys.stderr, flush=True)
    await stop.wait()
    log.info("worker %d: draining (grace %.1fs)", worker_id, config.http.timeouts.drain)
    await worker.drain(config.http.timeouts.drain)
    return 0


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="guard-worker")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--worker-id", type=int, default=0)
    args = parser.parse_args(argv)
    _die_with_parent()
    from guard.runtime.logs import setup_logging
    from guard.runtime.loop import run

    setup_logging()
    config = load_config(args.config)
    try:
        return run(serve(config, reuse_port=True, worker_id=args.worker_id))
    except OSError as e:
        print(f"guard worker {args.worker_id}: cannot listen: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
