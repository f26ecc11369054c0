"""Keep-alive connections to one backend, reused across requests.

``UpstreamConnection`` is the thin ``asyncio.Protocol`` on the backend side: it owns the
response parser and forwards its events to whichever client exchange holds it. The pool
hands out the most recently used idle connection first (LIFO keeps few sockets warm) and
closes idle ones after ``timeouts.idle``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from guard.balancing.backend import Backend
from guard.errors import GuardError, UpstreamConnectFailed, UpstreamTimeout
from guard.http.codec import ResponseHead, make_response_parser
from guard.proxy.deadlines import NEVER, DeadlineSweeper
from guard.proxy.writes import CORK, BufferedWriter
from guard.upstream.resolver import ResolveError, Resolver

if TYPE_CHECKING:
    from guard.http.codec import ResponseParser


class UpstreamClient(Protocol):
    """What an upstream connection reports to (the client side of one exchange)."""

    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_complete(self) -> None: ...
    def on_upstream_error(self, conn: UpstreamConnection, error: GuardError) -> None: ...
    def on_upstream_lost(self, conn: UpstreamConnection) -> None: ...
    def on_upstream_pause(self) -> None: ...
    def on_upstream_resume(self) -> None: ...
    def on_upstream_switched(self, conn: UpstreamConnection, tail: bytes) -> None: ...
    def on_plain_response(self, head: ResponseHead, body: bytes) -> None:
        """A whole plain response: the same as head, body (if any) and complete."""


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    parser: str
    max_header_bytes: int
    max_headers: int
    connect_timeout: float
    idle_timeout: float
    max_idle_per_backend: int = 256


class UpstreamConnection(BufferedWriter, asyncio.Protocol):
    __slots__ = (
        "_got_bytes",
        "_wbuf",
        "client",
        "closed",
        "deadline",
        "parser",
        "pool",
        "transport",
        "uses",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        s = pool.settings
        self.parser: ResponseParser = make_response_parser(
            s.parser, self, max_header_bytes=s.max_header_bytes, max_headers=s.max_headers
        )
        self.transport: asyncio.Transport | None = None
        self._wbuf: list[bytes] = []
        self.client: UpstreamClient | None = None
        self.closed = False
        self.uses = 0  # requests carried; > 1 means a reused keep-alive connection
        self._got_bytes = False  # any response byte since the current attach()
        self.deadline = NEVER

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        pool = self.pool
        pool.open += 1
        # A member of the sweeper for as long as it is open: while busy its deadline is
        # NEVER, so reuse is two attribute stores rather than a set add and discard.
        pool._sweeper.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            # Bytes on an idle connection answer no request: it cannot be trusted again.
            self.close()
            return
        self._got_bytes = True
        parser = self.parser
        plain = parser.take_plain(data)
        if plain is not None:
            # The whole response in one read, and a plain one: the parser's events without
            # its per-header work (and uncorked: it makes one write of head and body).
            client.on_plain_response(*plain)
            return
        cork = CORK
        cork.depth += 1
        try:
            parser.feed(data)
            if parser.upgraded_tail is not None and self.client is not None:
                # A 101 the exchange accepted (else it would have let go of us by now).
                self.client.on_upstream_switched(self, parser.upgraded_tail)
        except GuardError as e:
            client.on_upstream_error(self, e)
        finally:
            cork.depth -= 1  # CORK.release(), inlined: this runs once per read
            if not cork.depth and cork.dirty:
                cork.flush()

    def eof_received(self) -> bool:
        # EOF before any byte of the response is not a malformed response: it is the
        # backend closing a (reused) connection, which connection_lost -> on_upstream_lost
        # retries or answers. Only feed the parser an EOF that can end or cut a response
        # (h11 raises on an EOF in SEND_RESPONSE, which made a stale pooled connection a
        # 502 under `parser: h11` instead of a retry).
        if self.client is not None and self._got_bytes:
            try:
                if self.parser.feed_eof():
                    return False
            except GuardError as e:
                self.client.on_upstream_error(self, e)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.open -= 1
        self.pool.forget(self)
        client = self.client
        if client is not None:
            self.client = None
            client.on_upstream_lost(self)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.on_upstream_pause()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.on_upstream_resume()

    # -- response parser events, forwarded to the exchange
    def on_response_head(self, head: ResponseHead) -> None:
        if self.client is not None:
            self.client.on_response_head(head)

    def on_response_body(self, data: bytes) -> None:
        if self.client is not None:
            self.client.on_response_body(data)

    def on_response_complete(self) -> None:
        if self.client is not None:
            self.client.on_response_complete()

    # -- deadline (only while idle in the pool)
    def on_deadline(self) -> None:
        self.close()

    # -- used by the exchange
    def attach(self, client: UpstreamClient, method: bytes) -> None:
        self.client = client
        self.uses += 1
        self._got_bytes = False
        self.parser.start(method)

    def write(self, data: bytes) -> None:
        self._out(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def detach(self) -> asyncio.Transport:
        """Give the socket up to a protocol switch: it never returns to the pool."""
        self.flush_writes()
        transport = self.transport
        assert transport is not None
        self.client = None
        self.closed = True  # nothing may reuse, or close, the socket through this object
        self.transport = None
        self.pool.forget(self)
        return transport

    @property
    def reusable(self) -> bool:
        return not self.closed and not self.parser.garbage

    def close(self) -> None:
        self.client = None
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()


ConnectCallback = Callable[[UpstreamConnection | None, GuardError | None], None]


class UpstreamPool:
    """Idle keep-alive connections to one backend, plus how to make new ones."""

    __slots__ = (
        "_idle",
        "_loop",
        "_resolver",
        "_sweeper",
        "backend",
        "connects",
        "open",
        "reuses",
        "settings",
    )

    def __init__(
        self,
        backend: Backend,
        settings: UpstreamSettings,
        *,
        loop: asyncio.AbstractEventLoop,
        resolver: Resolver,
        sweeper: DeadlineSweeper,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self._loop = loop
        self._resolver = resolver
        self._sweeper = sweeper
        self._idle: list[UpstreamConnection] = []
        self.connects = 0
        self.reuses = 0
        self.open = 0  # connections open now, idle or busy (circuit breaking reads it)

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def acquire(self) -> UpstreamConnection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.deadline = NEVER
                self.reuses += 1
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        conn.client = None
        if not conn.reusable or len(self._idle) >= self.settings.max_idle_per_backend:
            conn.close()
            return
        conn.deadline = self._sweeper.now + self.settings.idle_timeout
        self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self._sweeper.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def close_idle(self) -> None:
        for conn in list(self._idle):
            conn.close()

    def connect(self, done: ConnectCallback) -> asyncio.Task[None]:
        """Open a new connection in a task; ``done`` gets it or the reason it failed."""
        return self._loop.create_task(self._connect(done))

    async def _connect(self, done: ConnectCallback) -> None:
        backend = self.backend
        try:
            addresses = self._resolver.cached(backend.host)
            if addresses is None:
                addresses = await self._resolver.resolve(backend.host)
            address = self._resolver.pick_address(addresses)
            _, conn = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: UpstreamConnection(self), address, backend.port
                ),
                self.settings.connect_timeout,
            )
        except TimeoutError:
            done(None, UpstreamTimeout(f"connect to {backend.name} timed out"))
            return
        except ResolveError as e:
            done(None, UpstreamConnectFailed(f"cannot resolve {backend.host}: {e}"))
            return
        except OSError as e:
            done(None, UpstreamConnectFailed(f"connect to {backend.name}: {e.strerror or e}"))
            return
        self.connects += 1
        done(conn, None)
