"""``protocol: tcp`` listeners: a byte relay per client connection.

Two thin ``asyncio.Protocol`` objects per connection, one on each socket, call each
other's transports directly: data in is a write out, a full write buffer on one side
pauses reading on the other, EOF on one side is ``write_eof`` on the other and the pair
closes once both directions have ended. The only task is the one that opens the backend
connection; the relay itself is callbacks only and the idle timeout is a deadline checked
by the worker's sweeper, so an idle relayed connection owns no timer and no task.

Before connecting, a connection may have to *peek*: read (and keep) its first bytes to
take a PROXY header off them (``proxy_protocol: {accept: true}``) and/or to find the SNI
in a TLS ClientHello (routes with ``match: {sni: ...}``). The ClientHello bytes are then
forwarded untouched; the PROXY header is consumed.

Zero-copy relaying with ``os.splice`` is not used: uvloop (libuv) owns the accepted and
connected sockets and keeps them registered in its own epoll set, so splicing from them
would mean racing libuv for readiness on the same fds (or dup-ing and detaching every
socket, which uvloop's transports do not support). The buffered relay reads up to 256 KiB
per callback, which keeps per-byte Python overhead small; see benchmarks/load_l4.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from guard.errors import GuardError
from guard.proxy.deadlines import NEVER, DeadlineSweeper
from guard.proxy.l4_stats import L4Stats
from guard.proxy.proxy_protocol import (
    V1_PREFIX,
    V2_MAX,
    V2_SIGNATURE,
    ProxyProtocolError,
    decode,
    encode,
)
from guard.routing.sni import NEED_MORE, NO_SNI, NOT_TLS, TOO_LARGE, SniTable, parse_sni
from guard.upstream.resolver import ResolveError, Resolver

if TYPE_CHECKING:
    from guard.balancing.backend import Backend
    from guard.config.model import RouteConfig
    from guard.proxy.ratelimit import RouteLimiter
    from guard.upstream.container_service import ContainerService, Hold, WakeableService
    from guard.upstream.pool import UpstreamPool
    from guard.upstream.service import Service

log = logging.getLogger("guard.tcp")

# How long a client may take to send its PROXY header / ClientHello. Not a config key:
# legitimate clients send both in their first packet.
PEEK_TIMEOUT = 10.0
# Client bytes held while the backend connection is being opened; reading pauses beyond.
MAX_EARLY_BYTES = 256 * 1024

# _HOLDING: routed to a container service with no ready instance; waiting for a wake.
_PEEK, _CONNECTING, _RELAY, _CLOSED, _HOLDING = 0, 1, 2, 3, 4

# Reasons client reading is paused: it resumes only when none is left.
_PAUSE_BACKEND = 1  # the backend's write buffer is full
_PAUSE_EARLY = 2  # too many bytes wait for the backend connection


class TcpRoute:
    __slots__ = ("name", "service")

    def __init__(self, name: str, service: str) -> None:
        self.name = name
        self.service = service

    def __str__(self) -> str:
        return f"route {self.name}"


class TcpRouting:
    """The routes of one tcp listener: an SNI table and/or the route that owns the port.

    With both, a stream whose SNI matches no route (or that is not TLS) goes to the
    owning route instead of being closed.
    """

    __slots__ = ("default", "sni")

    def __init__(self, default: TcpRoute | None, sni: SniTable[TcpRoute] | None) -> None:
        self.default = default
        self.sni = sni


def build_tcp_routing(listener: str, routes: Iterable[RouteConfig]) -> TcpRouting:
    default: TcpRoute | None = None
    sni: SniTable[TcpRoute] | None = None
    for route in routes:
        if route.listener != listener:
            continue
        target = TcpRoute(route.name, route.service)
        if route.match.sni:
            if sni is None:
                sni = SniTable()
            sni.add(route.match.sni, target)
        elif default is None:
            default = target
        else:
            log.warning(
                "tcp listener %s: route %s ignored, route %s already owns the port",
                listener,
                route.name,
                default.name,
            )
    return TcpRouting(default, sni)


class TcpListenerContext:
    """Shared by every connection of one tcp listener; ``routing``/``services`` are swapped
    on reload (open connections keep the backend they have)."""

    __slots__ = (
        "connect_timeout",
        "connections",
        "draining",
        "idle",
        "limiters",
        "loop",
        "name",
        "resolver",
        "route_services",
        "route_stats",
        "routing",
        "services",
        "stats",
        "sweeper",
        "trusted",
    )

    def __init__(
        self,
        name: str,
        routing: TcpRouting,
        services: dict[str, Service | ContainerService],
        *,
        loop: asyncio.AbstractEventLoop,
        sweeper: DeadlineSweeper,
        resolver: Resolver,
        connect_timeout: float,
        idle: float | None,
        accept_proxy: bool = False,
        trusted: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.routing = routing
        self.services = services
        self.loop = loop
        self.sweeper = sweeper
        self.resolver = resolver
        self.connect_timeout = connect_timeout
        self.idle = idle or 0.0
        # None: PROXY headers are not read on this listener at all.
        self.trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = (
            tuple(ipaddress.ip_network(c, strict=False) for c in trusted) if accept_proxy else None
        )
        self.stats = L4Stats()
        self.route_stats: dict[str, L4Stats] = {}
        self.route_services: dict[str, str] = {}  # route -> service, for the usage ledger
        self.connections: set[TcpClientProtocol] = set()
        self.draining = False
        # route name -> its rate_limit (one token per connection), swapped on reload
        self.limiters: dict[str, RouteLimiter] = {}

    def stats_for(self, route: str, service: str = "") -> L4Stats:
        stats = self.route_stats.get(route)
        if stats is None:
            stats = self.route_stats[route] = L4Stats()
            self.route_services[route] = service
        return stats

    def is_trusted(self, ip: str) -> bool:
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.trusted)


class TcpClientProtocol(asyncio.Protocol):
    """The client side of one relayed connection; also owns the pair's deadline."""

    __slots__ = (
        "backend",
        "buf",
        "client_addr",
        "client_eof",
        "connect_task",
        "container",
        "ctx",
        "deadline",
        "expect_proxy",
        "held_route",
        "hold",
        "idle",
        "local_addr",
        "paused",
        "spoof_check",
        "state",
        "stats",
        "sweeper",
        "transport",
        "up_transport",
        "upstream_eof",
    )

    def __init__(self, ctx: TcpListenerContext) -> None:
        self.ctx = ctx
        self.sweeper = ctx.sweeper
        self.idle = ctx.idle
        self.stats = ctx.stats  # the route's stats once routed
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.up_transport: asyncio.Transport | None = None
        self.buf: bytearray | None = None
        self.state = _PEEK
        self.deadline = NEVER
        self.backend: Backend | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.hold: Hold | None = None
        self.container: WakeableService | None = None
        self.held_route: TcpRoute | None = None
        self.client_addr: tuple[str, int] = ("", 0)
        self.local_addr: tuple[str, int] = ("", 0)
        self.client_eof = False
        self.upstream_eof = False
        self.expect_proxy = False
        self.spoof_check = False
        self.paused = 0

    # ------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ctx = self.ctx
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client_addr = (peer[0], peer[1]) if peer else ("", 0)
        self.local_addr = (local[0], local[1]) if local else ("", 0)
        ctx.connections.add(self)
        ctx.stats.connections += 1
        if ctx.draining:
            transport.close()
            return
        if ctx.trusted is not None:
            # Trusted peers must send a header; from anyone else a header is a spoofing
            # attempt (it would let them choose their own client address): closed.
            if ctx.is_trusted(self.client_addr[0]):
                self.expect_proxy = True
            else:
                self.spoof_check = True
        if self.expect_proxy or self.spoof_check or ctx.routing.sni is not None:
            self.buf = bytearray()
            self.deadline = self.sweeper.now + PEEK_TIMEOUT
            self.sweeper.add(self)
            return
        self._start(ctx.routing.default)

    def data_received(self, data: bytes) -> None:
        if self.state == _RELAY:
            # The hot path: one write, one counter, one deadline assignment.
            self.up_transport.write(data)  # type: ignore[union-attr]
            self.stats.bytes_in += len(data)
            if self.idle:
                self.deadline = self.sweeper.now + self.idle
            return
        buf = self.buf
        if buf is None:
            return  # closing
        buf += data
        if self.state == _PEEK:
            self._peek()
        elif self.state in (_CONNECTING, _HOLDING) and len(buf) > MAX_EARLY_BYTES:
            self._pause(_PAUSE_EARLY)

    def eof_received(self) -> bool:
        self.client_eof = True
        state = self.state
        if state == _PEEK:
            self._peek()
            if self.state == _PEEK:
                self._reject(None)  # EOF before the stream could be routed
            return True
        if state == _RELAY:
            up = self.up_transport
            assert up is not None
            if up.can_write_eof():
                up.write_eof()
            if self.upstream_eof:
                self._close_both()
        # _CONNECTING: write_eof is sent once connected, after the early bytes.
        return True  # keep our side open for the backend's remaining bytes

    def pause_writing(self) -> None:
        # The client is not taking our writes: stop reading from the backend.
        up = self.up_transport
        if up is not None and not up.is_closing():
            up.pause_reading()

    def resume_writing(self) -> None:
        up = self.up_transport
        if up is not None and not up.is_closing():
            up.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
        self.buf = None
        ctx = self.ctx
        ctx.connections.discard(self)
        self.sweeper.discard(self)
        task = self.connect_task
        if task is not None and not task.done():
            task.cancel()
        self.connect_task = None
        up = self.up_transport
        if up is not None:
            # A reset client gets its backend reset too; a clean close lets the backend's
            # already-queued bytes go out first (there is nowhere for them to go anyway).
            if exc is None:
                up.close()
            else:
                up.abort()
        hold = self.hold
        if hold is not None and self.container is not None:
            self.hold = None
            self.container.cancel(hold)
        backend = self.backend
        if backend is not None:
            backend.in_flight -= 1
            self.backend = None
            if self.container is not None:
                self.container.done()

    # ------------------------------------------------------------ deadline
    def on_deadline(self) -> None:
        state = self.state
        stats = self.ctx.stats
        if state == _PEEK:
            if self._peek_timeout():
                return
        elif state == _CONNECTING:
            stats.connect_failed += 1
            log.info("tcp %s: connect to %s timed out", self.ctx.name, self.backend)
        elif state == _RELAY:
            stats.idle_timeouts += 1
        elif state == _HOLDING:
            stats.wake_failed += 1
            log.info("tcp %s: no instance ready in time for %s", self.ctx.name, self.held_route)
        self.abort()

    def _peek_timeout(self) -> bool:
        """A slow or silent client: server-first protocols go to the owning route."""
        ctx = self.ctx
        if not self.expect_proxy and ctx.routing.default is not None:
            self._start(ctx.routing.default)
            return True
        if self.expect_proxy:
            ctx.stats.proxy_rejected += 1
        else:
            ctx.stats.not_tls += 1
        return False

    def abort(self) -> None:
        """Close both sides now, dropping whatever is buffered (timeouts, drain expiry)."""
        if self.up_transport is not None:
            self.up_transport.abort()
        self.transport.abort()

    # ------------------------------------------------------------ routing
    def _peek(self) -> None:
        buf = self.buf
        assert buf is not None
        ctx = self.ctx
        if self.expect_proxy:
            try:
                header = decode(buf)
            except ProxyProtocolError as e:
                self._reject_proxy(str(e))
                return
            if header is None:
                if len(buf) > V2_MAX or self.client_eof:
                    self._reject_proxy("incomplete header")
                return
            del buf[: header.length]
            self.expect_proxy = False
            if not header.local and header.src_addr is not None:
                self.client_addr = (header.src_addr, header.src_port or 0)
                self.local_addr = (header.dst_addr or "", header.dst_port or 0)
        elif self.spoof_check:
            n = len(buf)
            if (
                n < 12
                and not self.client_eof
                and (bytes(buf) == V1_PREFIX[:n] or bytes(buf) == V2_SIGNATURE[:n])
            ):
                return  # could still become a header: wait for more
            if buf[:6] == V1_PREFIX or buf[:12] == V2_SIGNATURE:
                self._reject_proxy("PROXY header from an untrusted peer")
                return
            self.spoof_check = False
        routing = ctx.routing
        if routing.sni is None:
            self._start(routing.default)
            return
        if not buf and not self.client_eof:
            return
        name = parse_sni(buf)
        if name == NEED_MORE and not self.client_eof:
            return
        if name in (NEED_MORE, NOT_TLS, NO_SNI, TOO_LARGE):
            route = routing.default
            if route is None:
                ctx.stats.not_tls += 1
                self._reject(f"no SNI ({name})")
                return
        else:
            route = routing.sni.lookup(name) or routing.default
            if route is None:
                ctx.stats.unknown_sni += 1
                self._reject(f"unknown SNI {name!r}")
                return
        self._start(route)

    def _reject_proxy(self, why: str) -> None:
        self.ctx.stats.proxy_rejected += 1
        self._reject(why)

    def _reject(self, why: str | None) -> None:
        if why:
            log.debug("tcp %s: closing %s:%d: %s", self.ctx.name, *self.client_addr, why)
        self.buf = None
        self.transport.close()

    def _start(self, route: TcpRoute | None) -> None:
        ctx = self.ctx
        service = ctx.services.get(route.service) if route is not None else None
        if route is None or service is None:
            ctx.stats.no_route += 1
            self._reject("no route")
            return
        limiter = ctx.limiters.get(route.name) if ctx.limiters else None
        if limiter is not None and limiter.check(self.client_addr[0]):
            # Closed before anything is opened upstream (or a container woken): a client
            # over its limit costs one accept.
            ctx.stats.rate_limited += 1
            ctx.stats_for(route.name, route.service).rate_limited += 1
            self._reject(f"{route}: rate limit reached")
            return
        pool = service.pick([], self.client_addr[0], b"")
        if pool is None and service.wakeable:
            # A container service with no instance ready: hold the connection (its early
            # bytes buffer, up to MAX_EARLY_BYTES) until one is, or wake_timeout.
            container = cast("WakeableService", service)
            try:
                self.hold = container.hold(
                    self, container.key_of(None, []), [], self.client_addr[0], b""
                )
            except GuardError as e:
                ctx.stats.wake_failed += 1
                self._reject(f"service {service.name}: {e.message}")
                return
            self.container = container
            self.held_route = route
            self.state = _HOLDING
            if self.buf is None:
                self.buf = bytearray()
            self.deadline = self.sweeper.now + container.wake_timeout
            self.sweeper.add(self)
            return
        if pool is None:
            ctx.stats.no_backend += 1
            self._reject(f"service {service.name}: no available backend")
            return
        if service.wakeable:
            self.container = cast("WakeableService", service)
        self._begin(route, service, pool)

    # held for a wake (Waiter)
    def on_woken(self, pool: UpstreamPool, waited: float) -> None:
        self.hold = None
        route, service = self.held_route, self.container
        if self.state != _HOLDING or route is None or service is None:
            return
        self._begin(route, service, pool)

    def on_wake_failed(self, error: GuardError) -> None:
        self.hold = None
        if self.state == _HOLDING:
            self.ctx.stats.wake_failed += 1
            self._reject(f"{self.held_route}: {error.message}")

    def _begin(
        self, route: TcpRoute, service: Service | WakeableService, pool: UpstreamPool
    ) -> None:
        ctx = self.ctx
        backend = pool.backend
        backend.in_flight += 1
        self.backend = backend
        self.stats = stats = ctx.stats_for(route.name, route.service)
        stats.connections += 1
        pp = service.config.proxy_protocol
        header = encode(pp.send, self.client_addr, self.local_addr) if pp is not None else b""
        self.state = _CONNECTING
        if self.buf is None:
            self.buf = bytearray()
        self.deadline = self.sweeper.now + ctx.connect_timeout
        self.sweeper.add(self)
        self.connect_task = ctx.loop.create_task(self._connect(backend, header))

    async def _connect(self, backend: Backend, header: bytes) -> None:
        ctx = self.ctx
        resolver = ctx.resolver
        try:
            addresses = resolver.cached(backend.host)
            if addresses is None:
                addresses = await resolver.resolve(backend.host)
            address = resolver.pick_address(addresses)
            await ctx.loop.create_connection(
                lambda: TcpUpstreamProtocol(self, header), address, backend.port
            )
        except (OSError, ResolveError) as e:
            if self.state == _CONNECTING:
                ctx.stats.connect_failed += 1
                log.info("tcp %s: connect to %s failed: %s", ctx.name, backend.name, e)
                self.transport.close()

    def _upstream_made(self, up: asyncio.Transport, header: bytes) -> None:
        if self.state != _CONNECTING:
            up.abort()  # the client went away (or timed out) while we were connecting
            return
        self.up_transport = up
        self.connect_task = None
        self.state = _RELAY
        buf = self.buf
        self.buf = None
        if self.idle:
            self.deadline = self.sweeper.now + self.idle
        else:
            # No idle timeout: keep this connection out of the sweeper's per-tick scan.
            self.deadline = NEVER
            self.sweeper.discard(self)
        # Resume before writing: the write may pause us again (backend buffer full).
        self._resume(_PAUSE_EARLY)
        early = bytes(buf) if buf else b""
        if header or early:
            self.stats.bytes_in += len(early)
            up.write(header + early if header else early)
        if self.client_eof and up.can_write_eof():
            up.write_eof()

    # ------------------------------------------------------------ backend events
    def _upstream_eof(self) -> None:
        self.upstream_eof = True
        transport = self.transport
        if transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()
        if self.client_eof:
            self._close_both()

    def _upstream_lost(self, exc: Exception | None) -> None:
        if self.state != _CLOSED:
            # Flush what the backend sent, then close; a reset backend resets the client.
            if exc is None:
                self.transport.close()
            else:
                self.transport.abort()

    def _close_both(self) -> None:
        self.transport.close()
        if self.up_transport is not None:
            self.up_transport.close()

    # ------------------------------------------------------------ flow control
    def _pause(self, reason: int) -> None:
        if not self.paused and not self.transport.is_closing():
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and not self.transport.is_closing():
            self.transport.resume_reading()


class TcpUpstreamProtocol(asyncio.Protocol):
    """The backend side of one relayed connection."""

    __slots__ = ("client", "header")

    def __init__(self, client: TcpClientProtocol, header: bytes) -> None:
        self.client = client
        self.header = header

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client._upstream_made(transport, self.header)  # type: ignore[arg-type]
        self.header = b""

    def data_received(self, data: bytes) -> None:
        client = self.client
        client.transport.write(data)
        client.stats.bytes_out += len(data)
        if client.idle:
            client.deadline = client.sweeper.now + client.idle

    def eof_received(self) -> bool:
        self.client._upstream_eof()
        return True  # keep our side open: the client may still be sending

    def pause_writing(self) -> None:
        self.client._pause(_PAUSE_BACKEND)

    def resume_writing(self) -> None:
        self.client._resume(_PAUSE_BACKEND)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._upstream_lost(exc)
