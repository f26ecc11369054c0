"""One data-plane process: listeners, route tables, upstream pools, drain on SIGTERM.

With ``workers: 1`` this runs inside ``guard run`` itself; with more, the supervisor starts
one of these per worker (``python -m guard.runtime.worker``), each binding the listeners
with SO_REUSEPORT so the kernel spreads connections over them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from guard.admin.api import AdminApi
from guard.admin.routes_api import ReloadOutcome
from guard.admin.server import AdminPages, AdminServer
from guard.config import load_config, load_routes
from guard.config.model import (
    GuardConfig,
    ListenerConfig,
    RouteConfig,
    RoutesConfig,
    ServiceConfig,
)
from guard.control.link import ENV as CONTROL_SOCKET_ENV
from guard.control.link import RemoteLink
from guard.control.messages import (
    ContainerUpdate,
    ControlLink,
    ServiceEndpoints,
    ServiceHealth,
    WakeFailure,
)
from guard.control.metering import TrafficReport
from guard.control.plane import REPORT_INTERVAL, ControlPlane
from guard.errors import ConfigErrors
from guard.http.forwarding import TrustedProxies
from guard.metrics.collector import MetricsPage
from guard.metrics.reader import WorkerMetrics
from guard.metrics.relay import ENV as METRICS_SOCKET_ENV
from guard.metrics.relay import SnapshotSender
from guard.metrics.snapshot import merge
from guard.proxy.context import AccessLog, ListenerContext
from guard.proxy.deadlines import DeadlineSweeper, tick_for
from guard.proxy.http_proxy import HttpProxyProtocol
from guard.proxy.ratelimit import RateLimits, RouteLimiter
from guard.proxy.tcp_proxy import (
    TcpClientProtocol,
    TcpListenerContext,
    TcpRouting,
    build_tcp_routing,
)
from guard.proxy.tls import CertificateStore, TlsTermination
from guard.proxy.udp_proxy import UdpListenerContext, UdpListenerProtocol
from guard.proxy.websocket import CLOSE_TIMEOUT
from guard.routing import HttpRouteTable, build_http_tables
from guard.runtime.control_host import ControlHost, needs_control_host, needs_control_plane
from guard.runtime.handover import PidFile, notify_ready, start_successor, take_sockets
from guard.runtime.sockets import ADMIN, BACKLOG, ListenSockets
from guard.runtime.traffic import TrafficTally
from guard.runtime.watch import RouteWatcher, signature
from guard.upstream.api_containers import ApiContainers
from guard.upstream.container_service import ContainerService
from guard.upstream.pool import UpstreamSettings
from guard.upstream.resolver import Resolver
from guard.upstream.service import Service

log = logging.getLogger("guard.worker")

# How long a draining Guard keeps idle keep-alive connections open for one last request
# (answered with Connection: close) before closing them: a close under a client that is
# sending its next request right then would cost it that request.
IDLE_CLOSE_WINDOW = 1.0
HTTP_PROTOCOLS = ("http", "https")
L4_PROTOCOLS = ("tcp", "udp")


class Worker:
    """Owns the data plane of one process for the lifetime of one config."""

    def __init__(self, config: GuardConfig, sockets: ListenSockets, *, worker_id: int = 0) -> None:
        self.config = config
        self.sockets = sockets  # bound (or inherited) already: see guard.runtime.sockets
        self.worker_id = worker_id
        self.loop = asyncio.get_running_loop()
        http = config.http
        t = http.timeouts
        # tcp/udp idle timeouts join the http ones: the tick must suit the shortest.
        l4_timeouts = [
            (lc.idle or 0.0) if lc.protocol == "tcp" else lc.udp_idle
            for lc in config.listeners.values()
            if lc.protocol in L4_PROTOCOLS
        ]
        self.sweeper = DeadlineSweeper(
            self.loop,
            tick_for(
                [
                    t.connect,
                    t.request_header,
                    t.response_header,
                    t.idle,
                    t.body_read,
                    t.websocket_idle,
                    *l4_timeouts,
                ]
            ),
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
        self.services: dict[str, Service | ContainerService] = {}
        self.link: ControlLink | None = None  # set by attach_control, for container services
        self._report_timer: asyncio.TimerHandle | None = None
        self.contexts: dict[str, ListenerContext] = {}
        self.tcp_contexts: dict[str, TcpListenerContext] = {}
        self.rate_limits = RateLimits(config.workers)
        self.udp_contexts: dict[str, UdpListenerContext] = {}
        self.tls: dict[str, TlsTermination] = {}  # https listeners, by name
        self.servers: list[asyncio.Server] = []
        self.udp_transports: list[asyncio.BaseTransport] = []
        self.stopping = asyncio.Event()
        self.draining = False
        self.stopped = False
        self._early_endpoints: dict[str, ServiceEndpoints] = {}
        self._health: dict[str, ServiceHealth] = {}  # latest verdict per static service
        self._tally: TrafficTally | None = None
        self._tally_timer: asyncio.TimerHandle | None = None
        self.metrics = WorkerMetrics(self)
        self.api_containers = ApiContainers(self, config.containers)  # POST /v1/containers
        # Queue rejections of API containers since deleted: their sum on /metrics (one
        # label for all) must not go down when a container goes.
        self.api_rejected_gone = 0

    # ------------------------------------------------------------------ building
    def container_service(self, cfg: ServiceConfig, link: ControlLink) -> ContainerService:
        """The data-plane half of a container service (route files' and API containers')."""
        return ContainerService(
            cfg,
            self.upstream_settings,
            loop=self.loop,
            resolver=self.resolver,
            sweeper=self.sweeper,
            link=link,
            worker_id=self.worker_id,
        )

    def _build(
        self, routes: RoutesConfig
    ) -> tuple[dict[str, Service | ContainerService], dict[str, HttpRouteTable]]:
        services: dict[str, Service | ContainerService] = {}
        for name, cfg in routes.services.items():
            current = self.services.get(name)
            if cfg.container is not None:
                if self.link is None:
                    raise RuntimeError("container services need a control plane")
                if isinstance(current, ContainerService):
                    # Kept across reloads: it holds requests and knows the live instances.
                    current.configure(cfg)
                    services[name] = current
                    continue
                services[name] = self.container_service(cfg, self.link)
            elif cfg.servers:
                svc = services[name] = Service(
                    cfg,
                    self.upstream_settings,
                    loop=self.loop,
                    resolver=self.resolver,
                    sweeper=self.sweeper,
                )
                health = self._health.get(name)
                if health is not None:
                    svc.set_down(health.down)  # rebuilt on reload: keep the last verdict
        services.update(self.api_containers.services)  # not from route files: kept as they are
        http_listeners = {
            n for n, lc in self.config.listeners.items() if lc.protocol in HTTP_PROTOCOLS
        }
        tables = build_http_tables(
            [r for r in routes.routes if r.listener in http_listeners], services
        )
        for name in http_listeners:
            tables.setdefault(name, HttpRouteTable(name, []))
        self.api_containers.wrap(tables)
        return services, tables

    def _build_l4(
        self, routes: RoutesConfig
    ) -> tuple[dict[str, TcpRouting], dict[str, RouteConfig | None]]:
        """Per tcp listener its SNI table / owning route; per udp listener its one route."""
        tcp: dict[str, TcpRouting] = {}
        udp: dict[str, RouteConfig | None] = {}
        for name, lc in self.config.listeners.items():
            mine = [r for r in routes.routes if r.listener == name]
            if lc.protocol == "tcp":
                tcp[name] = build_tcp_routing(name, mine)
            elif lc.protocol == "udp":
                if len(mine) > 1:
                    log.warning(
                        "udp listener %s: %d routes, only %s is used", name, len(mine), mine[0].name
                    )
                udp[name] = mine[0] if mine else None
        return tcp, udp

    def attach_control(self, plane: ControlPlane) -> None:
        """Use ``plane`` for container services (before ``start``)."""
        self.link = plane.attach(self.worker_id, self)

    # DataPlaneSink: the control plane's messages
    def apply_endpoints(self, update: ServiceEndpoints) -> None:
        svc = self.services.get(update.service)
        if isinstance(svc, ContainerService):
            svc.apply_endpoints(update)
        else:
            self._early_endpoints[update.service] = update  # before start(): applied there

    def apply_health(self, update: ServiceHealth) -> None:
        self._health[update.service] = update
        svc = self.services.get(update.service)
        if isinstance(svc, Service):
            svc.set_down(update.down)

    def apply_containers(self, update: ContainerUpdate) -> None:
        added, removed = self.api_containers.apply(update)
        self.services.update(added)
        for svc in removed:
            if self.services.get(svc.name) is svc:
                del self.services[svc.name]
            self.api_rejected_gone += svc.rejected
            svc.close()

    def wake_failed(self, failure: WakeFailure) -> None:
        svc = self.services.get(failure.service)
        if isinstance(svc, ContainerService):
            svc.wake_failed(failure)

    def start_traffic_tally(self, send: Callable[[TrafficReport], None], interval: float) -> None:
        """Send per-route traffic deltas to ``send`` every ``interval`` (usage ledger)."""
        self._tally = TrafficTally(self, send)

        def tick() -> None:
            if self.stopped:
                return
            self.flush_traffic()
            self._tally_timer = self.loop.call_later(interval, tick)

        self._tally_timer = self.loop.call_later(interval, tick)

    def flush_traffic(self) -> None:
        if self._tally is not None:
            self._tally.flush()

    def _report_load(self) -> None:
        link = self.link
        if link is None or self.stopped:
            return
        for svc in self.services.values():
            if isinstance(svc, ContainerService):
                link.report(svc.report())
        self._report_timer = self.loop.call_later(REPORT_INTERVAL, self._report_load)

    async def start(self) -> None:
        self.sweeper.start()
        services, tables = self._build(self.config.routes)
        self.services = services
        for update in self._early_endpoints.values():
            self.apply_endpoints(update)
        self._early_endpoints.clear()
        if self.link is not None:
            self._report_load()
        limiters = self.rate_limits.build(self.config.routes.routes)
        await self._start_l4(services, limiters)
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
            )
            ctx.limiters = limiters.get(name, {})
            self.contexts[name] = ctx
            factory = self._with_tls(name, lc, partial(HttpProxyProtocol, ctx))
            await self._listen(factory, name)
            log.info(
                "worker %d: listener %s (%s) on %s", self.worker_id, name, lc.protocol, lc.address
            )

    def _with_tls(
        self, name: str, lc: ListenerConfig, factory: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        """``factory`` for an http listener; for https, TLS termination in front of it."""
        if lc.tls is None:
            return factory
        store = CertificateStore(
            lc.tls.certificates, where=f"{self.config.path}: listeners.{name}.tls"
        )
        tls = self.tls[name] = TlsTermination(
            name,
            store,
            factory,
            loop=self.loop,
            handshake_timeout=self.config.http.timeouts.tls_handshake,
        )
        return tls.protocol

    async def _listen(self, factory: Callable[[], asyncio.Protocol], name: str) -> None:
        """Serve a stream listener's sockets (one per address, or this worker's slots)."""
        for sock in self.sockets.of(name):
            server = await self.loop.create_server(factory, sock=sock, backlog=BACKLOG)
            self.servers.append(server)

    async def _start_l4(
        self,
        services: dict[str, Service | ContainerService],
        limiters: dict[str, dict[str, RouteLimiter]],
    ) -> None:
        tcp_routing, udp_routes = self._build_l4(self.config.routes)
        connect = self.config.http.timeouts.connect
        for name, lc in self.config.listeners.items():
            if lc.protocol == "tcp":
                pp = lc.proxy_protocol
                tctx = TcpListenerContext(
                    name,
                    tcp_routing[name],
                    services,
                    loop=self.loop,
                    sweeper=self.sweeper,
                    resolver=self.resolver,
                    connect_timeout=connect,
                    idle=lc.idle,
                    accept_proxy=pp is not None and pp.accept,
                    trusted=pp.trusted if pp is not None else (),
                )
                tctx.limiters = limiters.get(name, {})
                self.tcp_contexts[name] = tctx
                await self._listen(partial(TcpClientProtocol, tctx), name)
            elif lc.protocol == "udp":
                uctx = UdpListenerContext(
                    name,
                    udp_routes[name],
                    services,
                    loop=self.loop,
                    sweeper=self.sweeper,
                    resolver=self.resolver,
                    idle=lc.udp_idle,
                    max_sessions=lc.max_sessions,
                )
                uctx.use_limiters(limiters.get(name, {}))
                self.udp_contexts[name] = uctx
                for sock in self.sockets.of(name):
                    transport, _ = await self.loop.create_datagram_endpoint(
                        partial(UdpListenerProtocol, uctx), sock=sock
                    )
                    self.udp_transports.append(transport)
            else:
                continue
            log.info(
                "worker %d: listener %s (%s) on %s", self.worker_id, name, lc.protocol, lc.address
            )

    def read_routes(self) -> RoutesConfig | None:
        """The route files, validated; None (logged, counted) when they are not valid."""
        try:
            return load_routes(self.config.routes_path, self.config.listeners, self.config.drivers)
        except ConfigErrors as e:
            log.error("route reload rejected, keeping the current table:\n%s", e)
            self.metrics.reloads["failure"] += 1
            return None

    def reload_routes(self) -> bool:
        """Rebuild route tables and services from the route files; keep the old on error."""
        routes = self.read_routes()
        if routes is None:
            return False
        self.apply_routes(routes)
        return True

    def apply_routes(self, routes: RoutesConfig) -> None:
        old = self.services
        services, tables = self._build(routes)
        limiters = self.rate_limits.build(routes.routes)
        for name, ctx in self.contexts.items():
            ctx.table = tables[name]  # one reference swap: in-flight requests keep theirs
            ctx.limiters = limiters.get(name, {})
        # Open tcp connections and udp sessions keep the backend they were given.
        tcp_routing, udp_routes = self._build_l4(routes)
        for name, tctx in self.tcp_contexts.items():
            tctx.routing = tcp_routing[name]
            tctx.services = services
            tctx.limiters = limiters.get(name, {})
        for name, uctx in self.udp_contexts.items():
            uctx.route = udp_routes[name]
            uctx.services = services
            uctx.use_limiters(limiters.get(name, {}))
        self.services = services
        kept = [svc for svc in services.values() if isinstance(svc, ContainerService)]
        retired = [svc for svc in old.values() if not any(svc is k for k in kept)]
        self.metrics.retire(retired)  # their pools' counters must not vanish
        for svc in retired:
            svc.close()
        self.metrics.reloads["success"] += 1
        log.info(
            "routes reloaded: %d routes, %d services", len(routes.routes), len(routes.services)
        )

    # ------------------------------------------------------------------ stopping
    async def drain(self, grace: float, *, hold_websockets: bool = False) -> None:
        """Stop accepting, let what is in flight finish within ``grace``, then close.

        Keep-alive connections are closed only between requests: for ``IDLE_CLOSE_WINDOW``
        every response says ``Connection: close`` and ends its connection (a client that
        was about to reuse one gets its answer, then reconnects, to the Guard that took
        over); after it the idle rest are closed, as nginx and HAProxy do. WebSockets get
        a 1001 close at once, or, with ``hold_websockets`` (a restart: the successor
        serves new ones), only as the grace runs out; tcp connections run to their end.
        """
        self.draining = True
        for server in self.servers:
            server.close()
        self.api_containers.stop()
        for uctx in self.udp_contexts.values():
            uctx.close()  # a datagram session has no "in flight": it ends with its socket
        for transport in self.udp_transports:
            transport.close()
        # Connections accepted just before the close may not have reached their protocol
        # yet; they are served (the flag below would have a tcp relay refuse them).
        await asyncio.sleep(0)
        for ctx in self.contexts.values():
            ctx.draining = True  # from here on every response ends its connection
        for tctx in self.tcp_contexts.values():
            tctx.draining = True
        now = self.loop.time()
        deadline = now + grace
        close_idle_at = now + min(IDLE_CLOSE_WINDOW, grace)
        close_websockets_at = max(now, deadline - CLOSE_TIMEOUT) if hold_websockets else now
        told: set[object] = set()  # WebSockets sent their 1001
        while True:
            now = self.loop.time()
            for ctx in self.contexts.values():
                for conn in list(ctx.connections):
                    if isinstance(conn, HttpProxyProtocol):
                        if now >= close_idle_at:
                            conn.drain()  # idle: closed now; busy: after this response
                    elif now >= close_websockets_at and conn not in told:
                        told.add(conn)
                        conn.drain()  # type: ignore[attr-defined]
            http_left = sum(len(ctx.connections) for ctx in self.contexts.values())
            tcp_left = sum(len(t.connections) for t in self.tcp_contexts.values())
            if not http_left and not tcp_left:
                break
            if now >= deadline:
                log.warning(
                    "drain grace expired with %d http/WebSocket and %d tcp connections open;"
                    " closing them",
                    http_left,
                    tcp_left,
                )
                for ctx in self.contexts.values():
                    for conn in list(ctx.connections):
                        conn.transport.abort()  # type: ignore[attr-defined]
                for tctx in self.tcp_contexts.values():
                    for tconn in list(tctx.connections):
                        tconn.abort()
                break
            await asyncio.sleep(0.02)
        self.api_containers.close()
        for svc in self.services.values():
            svc.close()
        self.stopped = True
        for timer in (self._report_timer, self._tally_timer):
            if timer is not None:
                timer.cancel()
        if self.access_log is not None:
            self.access_log.flush()
        self.sweeper.stop()


async def serve(
    config: GuardConfig,
    sockets: ListenSockets,
    *,
    worker_id: int = 0,
    metrics_socket: str | None = None,
    control_socket: str | None = None,
) -> int:
    """Run one data-plane worker until SIGTERM/SIGINT, then drain and return 0.

    Alone (``workers: 1``) it serves the admin address itself, hosts the control plane
    and the usage ledger, and on SIGUSR2 hands its sockets to a new Guard and drains once
    that one serves (``guard.runtime.handover``); under the supervisor it streams its
    metrics to ``metrics_socket`` and reaches the supervisor's control plane on
    ``control_socket``.
    """
    # What the route files looked like when this process read them: a reload signal that
    # came while it was starting (ignored until the handler below exists) is made up for
    # by comparing once the handler is in place.
    routes_seen = signature(config.routes_path)
    worker = Worker(config, sockets, worker_id=worker_id)
    loop = worker.loop
    host: ControlHost | None = None
    remote: RemoteLink | None = None
    send_traffic: Callable[[TrafficReport], None] | None = None
    if control_socket:
        remote = RemoteLink(control_socket, worker_id, worker)
        await remote.connect()
        worker.link = remote
        send_traffic = remote.traffic
    elif needs_control_host(config):
        host = ControlHost(config)
        await host.start()
        worker.attach_control(host.plane)
        send_traffic = host.traffic
    served = [config.routes]  # the route files in force, for the admin API
    reload_lock = asyncio.Lock()  # reloads in turn: an older read of the files never lands last

    async def reload() -> ReloadOutcome:
        """SIGHUP, a changed file, or the admin API (which answers once this returns)."""
        async with reload_lock:
            # Parsing and validating route files is the slow part (YAML): off the event
            # loop, so traffic keeps flowing while a large table loads.
            routes = await asyncio.to_thread(worker.read_routes)
            if routes is None:
                return ReloadOutcome.rejected("the route files did not load (see Guard's log)")
            if worker.link is None and needs_control_plane(routes):
                why = (
                    "container services and health checks need the control plane; restart"
                    " Guard to start it"
                )
                log.error("route reload rejected: %s", why)
                worker.metrics.reloads["failure"] += 1
                return ReloadOutcome.rejected(why)
            if host is not None:
                await host.reload(routes)  # controllers first: the worker's wakes need them
            worker.apply_routes(routes)
            served[0] = routes
            return ReloadOutcome(routes)

    admin: AdminServer | None = None
    sender: SnapshotSender | None = None
    if metrics_socket:
        sender = SnapshotSender(metrics_socket, worker_id, worker.metrics.snapshot)
    elif config.admin is not None:
        page = MetricsPage(
            worker.metrics.snapshot
            if host is None
            else lambda: merge([worker.metrics.snapshot(), host.snapshot()])
        )
        admin = AdminServer(
            config.admin,
            AdminPages(
                metrics=page.render,
                metrics_type=page.content_type,
                metrics_async=page.render_async,
                draining=lambda: worker.draining,
                api=AdminApi.build(
                    config,
                    routes=lambda: served[0],
                    plane=lambda: host.plane if host is not None else None,
                    reload_now=reload,
                ).handle,
            ),
        )
        await admin.start(sockets.of(ADMIN))  # before the listeners
    async with reload_lock:  # an admin API write meanwhile applies to the started worker
        await worker.start()
    if config.usage is not None and send_traffic is not None:
        worker.start_traffic_tally(send_traffic, config.usage.flush)
    if sender is not None:
        sender.start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reloads: set[asyncio.Task[ReloadOutcome]] = set()

    def on_sighup() -> None:
        task = loop.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    if signature(config.routes_path) != routes_seen:
        on_sighup()
    watcher: RouteWatcher | None = None
    alone = not metrics_socket  # else the supervisor watches, signals and restarts us
    handed_over = False
    restarting: list[asyncio.Task[None]] = []

    async def restart() -> None:
        nonlocal handed_over
        successor = await start_successor(sockets)
        if successor is not None and not stop.is_set():
            handed_over = True
            if host is not None:
                host.hand_over(successor.adopted)  # released at close, not stopped
            stop.set()

    def on_sigusr2() -> None:
        if stop.is_set() or any(not t.done() for t in restarting):
            log.warning("SIGUSR2 ignored: a restart or a drain is already under way")
            return
        restarting[:] = [loop.create_task(restart())]

    def on_sigusr1() -> None:
        nonlocal handed_over
        handed_over = True  # the supervisor's successor serves: drain as after a restart
        stop.set()

    pid_file = PidFile(config.pid_file if alone else None)
    if alone:
        watcher = RouteWatcher(config.routes_path, on_sighup)
        watcher.start()
        loop.add_signal_handler(signal.SIGUSR2, on_sigusr2)
        pid_file.write()
    else:
        loop.add_signal_handler(signal.SIGUSR1, on_sigusr1)
    if worker_id == 0:
        listeners = len(worker.contexts) + len(worker.tcp_contexts) + len(worker.udp_contexts)
        print(f"guard: serving ({listeners} listeners)", file=sys.stderr, flush=True)
    # The Guard that started us (or the supervisor) may hand over now, releasing the
    # instances this one adopted from it.
    notify_ready(host.adopted() if host is not None else ())
    await stop.wait()
    for task in restarting:
        if not task.done():
            task.cancel()  # SIGTERM during a restart: the successor is stopped too
            with contextlib.suppress(asyncio.CancelledError):
                await task
    log.info("worker %d: draining (grace %.1fs)", worker_id, config.http.timeouts.drain)
    # /healthz answers 503 "draining" throughout, so load balancers stop sending first;
    # after a handover the new Guard answers it, and this one stops accepting there too.
    if watcher is not None:
        watcher.stop()
    if admin is not None and handed_over:
        admin.stop_accepting()
    await worker.drain(config.http.timeouts.drain, hold_websockets=handed_over)
    worker.flush_traffic()  # the last partial interval reaches the ledger too
    if host is not None:
        await host.close()  # after the drain: in-flight requests finished on instances
    if remote is not None:
        await remote.close()
    if sender is not None:
        await sender.close()
    if admin is not None:
        admin.close()
    sockets.close()
    pid_file.remove()
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
    # A SIGHUP (route reload) can arrive before the loop installs its handler; its default
    # action would kill a worker that is still starting.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # restarts are the supervisor's business
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # "a successor serves": handled once serving
    _die_with_parent()
    from guard.runtime.logs import setup_logging
    from guard.runtime.loop import run

    setup_logging()
    config = load_config(args.config)
    try:
        # The supervisor's sockets for this worker's slot; one only in this worker's
        # config (guard.yaml changed since the supervisor started) is bound here.
        sockets = take_sockets(config, slots=1, reuse_port=True, admin=False)
        return run(
            serve(
                config,
                sockets,
                worker_id=args.worker_id,
                metrics_socket=os.environ.get(METRICS_SOCKET_ENV),
                control_socket=os.environ.get(CONTROL_SOCKET_ENV),
            )
        )
    except OSError as e:
        print(f"guard worker {args.worker_id}: cannot listen: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
