"""``protocol: udp`` listeners: datagram relaying with one session per client address.

The listener socket is one ``asyncio.DatagramProtocol``. A client address seen for the
first time gets a session: a backend chosen by the service's balancer (client_ip is the
hash key for ``balance: hash``) and a *connected* UDP socket of its own towards that
backend, so the kernel only hands the session replies from its backend and every reply
goes back to the right client through the listener socket. Datagrams keep their
boundaries: each one is relayed with a single ``sendto``.

Sessions expire after the listener's ``udp_idle`` without traffic either way (a deadline
checked by the worker's sweeper, no timer per session). The table is bounded by
``max_sessions``: a new client beyond it evicts the oldest session (by creation, which
a dict keeps in order for free: no per-datagram bookkeeping), and that is counted.

The only task is the one opening a session's upstream socket; datagrams arriving
meanwhile wait in a small bounded queue.

A route's ``rate_limit`` counts datagrams from the client (per client IP, or per tenant):
a datagram is the udp request (a DNS query, a game tick, a QUIC packet), and counting only
new sessions, as L4 connection limiters do for tcp, would leave one session free to flood
the backend at any rate. A datagram over the limit from a new address opens no session
(the session is refused, counted as ``rate_limited``); on an open session it is dropped
(counted in ``datagrams_rate_limited``). The key is the client IP, not the address, so
changing source ports buys nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, cast

from guard.errors import GuardError
from guard.proxy.deadlines import NEVER, DeadlineSweeper
from guard.proxy.l4_stats import L4Stats
from guard.upstream.resolver import ResolveError, Resolver

if TYPE_CHECKING:
    from guard.balancing.backend import Backend
    from guard.config.model import RouteConfig
    from guard.proxy.ratelimit import RouteLimiter
    from guard.upstream.container_service import ContainerService, Hold, WakeableService
    from guard.upstream.pool import UpstreamPool
    from guard.upstream.service import Service

log = logging.getLogger("guard.udp")

MAX_DATAGRAM = 65_507  # the largest UDP payload over IPv4
MAX_QUEUED = 64  # datagrams held per session while its upstream socket is being opened
# Socket buffers for the listener: a burst of small datagrams from many clients must not
# overflow the kernel's default (~200 KiB) while the loop is busy elsewhere.
SOCKET_BUFFER = 4 * 1024 * 1024

Address = tuple  # (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6


class UdpListenerContext:
    """Shared state of one udp listener; ``route``/``services`` are swapped on reload
    (open sessions keep their backend)."""

    __slots__ = (
        "idle",
        "limiter",
        "loop",
        "max_sessions",
        "name",
        "resolver",
        "route",
        "services",
        "sessions",
        "stats",
        "sweeper",
        "transport",
    )

    def __init__(
        self,
        name: str,
        route: RouteConfig | None,
        services: dict[str, Service | ContainerService],
        *,
        loop: asyncio.AbstractEventLoop,
        sweeper: DeadlineSweeper,
        resolver: Resolver,
        idle: float,
        max_sessions: int,
    ) -> None:
        self.name = name
        self.route = route
        self.services = services
        self.loop = loop
        self.sweeper = sweeper
        self.resolver = resolver
        self.idle = idle
        self.max_sessions = max_sessions
        self.stats = L4Stats()
        self.sessions: dict[Address, UdpSession] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.limiter: RouteLimiter | None = None  # the route's rate_limit

    def use_limiters(self, limiters: dict[str, RouteLimiter]) -> None:
        """Take the route's limiter from the listener's (after ``route`` was set)."""
        route = self.route
        self.limiter = limiters.get(route.name) if route is not None else None

    def close(self) -> None:
        """Stop the listener and end every session (drain, shutdown)."""
        for session in list(self.sessions.values()):
            session.close()
        if self.transport is not None:
            self.transport.close()


class UdpListenerProtocol(asyncio.DatagramProtocol):
    __slots__ = ("ctx", "sessions", "stats", "sweeper")

    def __init__(self, ctx: UdpListenerContext) -> None:
        self.ctx = ctx
        self.sessions = ctx.sessions
        self.stats = ctx.stats
        self.sweeper = ctx.sweeper

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.ctx.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        session = self.sessions.get(addr)
        if session is None:
            self._new_session(data, addr)
            return
        if len(data) > MAX_DATAGRAM:  # only possible over IPv6; could not be relayed as one
            self.stats.datagrams_dropped += 1
            return
        limiter = self.ctx.limiter
        if limiter is not None and limiter.check(addr[0]):
            stats = self.stats
            stats.datagrams_rate_limited += 1
            stats.datagrams_dropped += 1
            return
        session.deadline = self.sweeper.now + session.idle
        upstream = session.transport
        if upstream is not None:
            # The hot path: one send on the session's connected socket, two counters.
            upstream.sendto(data)
            stats = self.stats
            stats.packets_in += 1
            stats.bytes_in += len(data)
        else:
            session.enqueue(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for replies we sent to clients: nothing to do per datagram.
        log.debug("udp %s: %s", self.ctx.name, exc)

    def _new_session(self, data: bytes, addr: Address) -> None:
        ctx = self.ctx
        stats = self.stats
        if len(data) > MAX_DATAGRAM:
            stats.datagrams_dropped += 1
            return
        route = ctx.route
        service = ctx.services.get(route.service) if route is not None else None
        if service is None:
            stats.no_route += 1
            stats.datagrams_dropped += 1
            return
        limiter = ctx.limiter
        if limiter is not None and limiter.check(addr[0]):
            stats.rate_limited += 1
            stats.datagrams_dropped += 1
            return
        pool = service.pick([], addr[0], b"")
        if pool is None and not service.wakeable:
            stats.no_backend += 1
            stats.datagrams_dropped += 1
            return
        sessions = self.sessions
        if len(sessions) >= ctx.max_sessions:
            oldest = next(iter(sessions.values()))
            stats.sessions_evicted += 1
            oldest.close()
        session = UdpSession(ctx, addr, pool.backend if pool is not None else None)
        sessions[addr] = session
        stats.connections += 1
        stats.sessions += 1
        session.enqueue(data)
        container = cast("WakeableService", service) if service.wakeable else None
        session.container = container
        if pool is not None:
            session.task = ctx.loop.create_task(session.open())
            return
        # A container service with no instance ready: the session's datagrams queue (up to
        # MAX_QUEUED) while it waits for a wake; the session's idle deadline becomes the
        # wake deadline.
        assert container is not None  # (only a container service has no instance ready)
        try:
            session.hold = container.hold(session, container.key_of(None, []), [], addr[0], b"")
        except GuardError as e:
            stats.wake_failed += 1
            log.info("udp %s: %s", ctx.name, e.message)
            session.close()
            return
        session.deadline = ctx.sweeper.now + container.wake_timeout


class UdpSession(asyncio.DatagramProtocol):
    """One client address bound to one backend, with its own connected upstream socket."""

    __slots__ = (
        "addr",
        "backend",
        "closed",
        "container",
        "ctx",
        "deadline",
        "hold",
        "idle",
        "pending",
        "stats",
        "task",
        "transport",
    )

    def __init__(self, ctx: UdpListenerContext, addr: Address, backend: Backend | None) -> None:
        self.ctx = ctx
        self.addr = addr
        self.backend = backend
        if backend is not None:
            backend.in_flight += 1  # an open session counts as activity on its backend
        self.container: WakeableService | None = None
        self.hold: Hold | None = None
        self.stats = ctx.stats
        self.idle = ctx.idle
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] | None = []
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.deadline = ctx.sweeper.now + ctx.idle
        ctx.sweeper.add(self)

    def enqueue(self, data: bytes) -> None:
        pending = self.pending
        if pending is None or len(pending) >= MAX_QUEUED:
            self.stats.datagrams_dropped += 1
            return
        pending.append(data)

    # held for a wake (Waiter)
    def on_woken(self, pool: UpstreamPool, waited: float) -> None:
        self.hold = None
        if self.closed:
            return
        self.backend = pool.backend
        pool.backend.in_flight += 1
        self.deadline = self.ctx.sweeper.now + self.idle
        self.task = self.ctx.loop.create_task(self.open())

    def on_wake_failed(self, error: GuardError) -> None:
        self.hold = None
        if not self.closed:
            self.stats.wake_failed += 1
            self.stats.datagrams_dropped += len(self.pending or ())
            log.info("udp %s: session %s: %s", self.ctx.name, self.addr, error.message)
            self.close()

    async def open(self) -> None:
        ctx = self.ctx
        backend = self.backend
        assert backend is not None
        try:
            addresses = ctx.resolver.cached(backend.host)
            if addresses is None:
                addresses = await ctx.resolver.resolve(backend.host)
            address = ctx.resolver.pick_address(addresses)
            await ctx.loop.create_datagram_endpoint(
                lambda: self, remote_addr=(address, backend.port)
            )
        except (OSError, ResolveError) as e:
            self.task = None
            if not self.closed:
                self.stats.connect_failed += 1
                log.info("udp %s: cannot open a socket to %s: %s", ctx.name, backend.name, e)
                self.close()
        self.task = None

    # -- asyncio.DatagramProtocol (the upstream socket)
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:
            transport.close()
            return
        self.transport = upstream = transport  # type: ignore[assignment]
        pending, self.pending = self.pending, None
        if pending:
            stats = self.stats
            for data in pending:
                cast(asyncio.DatagramTransport, upstream).sendto(data)
                stats.packets_in += 1
                stats.bytes_in += len(data)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        listener = self.ctx.transport
        if listener is None or self.closed:
            return
        listener.sendto(data, self.addr)
        stats = self.stats
        stats.packets_out += 1
        stats.bytes_out += len(data)
        self.deadline = self.ctx.sweeper.now + self.idle

    def error_received(self, exc: Exception) -> None:
        # ECONNREFUSED from an ICMP port-unreachable: the backend is not listening (yet).
        # The session stays; the client's retries decide, as with a direct UDP exchange.
        log.debug("udp %s: backend %s: %s", self.ctx.name, self.backend, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    # -- deadline
    def on_deadline(self) -> None:
        if self.hold is not None:
            self.stats.wake_failed += 1  # no instance ready within wake_timeout
            self.stats.datagrams_dropped += len(self.pending or ())
        else:
            self.stats.sessions_expired += 1
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.deadline = NEVER
        ctx = self.ctx
        ctx.sweeper.discard(self)
        if ctx.sessions.get(self.addr) is self:
            del ctx.sessions[self.addr]
        self.stats.sessions -= 1
        hold, container = self.hold, self.container
        if hold is not None and container is not None:
            self.hold = None
            container.cancel(hold)
        if self.backend is not None:
            self.backend.in_flight -= 1
            if container is not None:
                container.done()
        self.pending = None
        task = self.task
        if task is not None and not task.done():
            task.cancel()
        if self.transport is not None:
            self.transport.close()


def udp_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """The listener socket, bound, with large buffers (and SO_REUSEPORT for workers > 1:
    the kernel then hashes each client address to one worker, so sessions stay put)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            # Capped by net.core.*mem_max: the kernel then keeps its maximum.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
