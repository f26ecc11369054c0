"""The admin address: a small HTTP/1.1 server for ``GET /healthz``, ``GET /metrics`` and
the REST API under ``/v1`` (``guard.admin.api``).

Not a hot path (a scrape a second, a health check, an operator's change), so it favours
being small and strict over fast: keep-alive and pipelining (answers in request order),
bounds on a request's head (64 KiB) and body (1 MiB), an idle timeout, and Guard's usual
JSON errors with ``x-guard-error``. Without ``admin.tokens`` it refuses to listen anywhere
but loopback (the spec: no tokens, no remote admin API).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import httptools

from guard.admin.answers import REASONS, Answer, Request, error_answer, json_answer
from guard.config.model import AdminConfig

log = logging.getLogger("guard.admin")

MAX_HEAD = 64 * 1024  # request line and headers
MAX_BODY = 1024 * 1024  # a route or service body is a few hundred bytes; the issue says 1 MiB
IDLE_TIMEOUT = 60.0


def bind_refusal(admin: AdminConfig) -> str | None:
    """Why ``admin.address`` may not be served as configured, or None if it may."""
    if admin.tokens:
        return None
    host = admin.host.strip("[]")
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a name other than localhost: it may resolve to anything
    return (
        f"admin.address: {admin.host}:{admin.port} is not a loopback address; without "
        "admin.tokens the admin API only listens on loopback (127.0.0.1, ::1, localhost)"
    )


@dataclass(frozen=True, slots=True)
class AdminPages:
    """What the server answers with, as callables so every request sees the current state."""

    metrics: Callable[[], bytes]
    metrics_type: str
    draining: Callable[[], bool]
    # When set, /metrics is rendered through this instead (off the event loop), so a
    # large page does not stall the traffic the same loop carries.
    metrics_async: Callable[[], Awaitable[bytes]] | None = None
    # Everything under /v1 (guard.admin.api.AdminApi.handle); None: no REST API here.
    api: Callable[[Request], Awaitable[Answer]] | None = None


def answer(pages: AdminPages, method: str, path: str) -> Answer:
    """The routing of /healthz and /metrics: pure, so it is tested without sockets."""
    if path not in ("/healthz", "/metrics"):
        return error_answer(404, "not_found", f"no admin endpoint {path}")
    if method not in ("GET", "HEAD"):
        return error_answer(405, "method_not_allowed", f"{path} takes GET", ("allow", "GET, HEAD"))
    if path == "/healthz":
        if pages.draining():
            return json_answer(503, {"status": "draining"})
        return json_answer(200, {"status": "ok"})
    return Answer(200, pages.metrics(), pages.metrics_type)


@dataclass(slots=True)
class _Stream:
    """A response whose head is written now and whose body follows in chunks."""

    head: bytes
    first: bytes
    body: AsyncIterator[bytes]
    keep_alive: bool


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _response(a: Answer, *, head_only: bool, keep_alive: bool) -> bytes:
    length = "transfer-encoding: chunked" if a.stream else f"content-length: {len(a.body)}"
    lines = [
        f"HTTP/1.1 {a.status} {REASONS.get(a.status, 'Unknown')}",
        f"content-type: {a.content_type}",
        length,
        "cache-control: no-store",
        *(f"{k}: {v}" for k, v in a.extra),
    ]
    if not keep_alive:
        lines.append("connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + a.body


class AdminProtocol(asyncio.Protocol):
    def __init__(self, pages: AdminPages, connections: set[AdminProtocol]) -> None:
        self.pages = pages
        self.connections = connections
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.size = 0  # bytes of the request being read
        self.limit = MAX_HEAD  # what self.size may reach: the head's, then head and body's
        self.refusal: Answer | None = None  # decided while parsing, sent after feed_data
        self.idle: asyncio.TimerHandle | None = None
        # Responses in request order; a Task stands for one still being rendered.
        self.out: deque[tuple[bytes | asyncio.Task[bytes | _Stream], bool]] = deque()
        self.pump: asyncio.Task[None] | None = None  # a streamed body being sent

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self.pump is not None:
            self.pump.cancel()  # ends the stream's generator (a log follow stops)
        if self.idle is not None:
            self.idle.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self._arm()
        self.size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(error_answer(400, "bad_request", "protocol upgrades are not served here"))
            return
        except httptools.HttpParserError as e:
            self._fail(error_answer(400, "bad_request", f"malformed request: {e}"))
            return
        if self.refusal is not None:
            self._fail(self.refusal)
        elif self.size > self.limit and self.transport is not None:
            if self.limit == MAX_HEAD:
                self._fail(error_answer(431, "header_too_large", "admin heads are at most 64 KiB"))
            else:
                self._fail(error_answer(413, "body_too_large", "admin bodies are at most 1 MiB"))

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []
        self.limit = MAX_HEAD

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.limit = self.size + MAX_BODY  # the head is all read: the body may add 1 MiB
        length = next((v for k, v in self.headers if k == "content-length"), None)
        if length is not None and length.strip().isdigit() and int(length) > MAX_BODY:
            # Refused before its body arrives, rather than read and thrown away.
            self.refusal = error_answer(413, "body_too_large", "admin bodies are at most 1 MiB")
            return
        expect = next((v for k, v in self.headers if k == "expect"), "")
        if expect.lower() == "100-continue" and not self.out and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.refusal is None:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.transport is None or self.refusal is not None:
            return
        self.size = 0
        method = self.parser.get_method().decode("latin-1")
        url = httptools.parse_url(self.url) if self.url else None
        path = url.path.decode("latin-1") if url is not None else ""
        keep_alive = self.parser.should_keep_alive()
        head_only = method == "HEAD"
        api = self.pages.api
        if api is not None and (path == "/v1" or path.startswith("/v1/")):
            query = (url.query or b"").decode("latin-1") if url is not None else ""
            request = Request(method, path, query, tuple(self.headers), b"".join(self.body))
            self.body = []
            task = asyncio.get_running_loop().create_task(
                self._deferred(api(request), head_only, keep_alive)
            )
            task.add_done_callback(lambda _: self._write_ready())
            self.out.append((task, keep_alive))
            return
        render = self.pages.metrics_async
        if render is not None and path == "/metrics" and method in ("GET", "HEAD"):
            task = asyncio.get_running_loop().create_task(
                self._metrics(render, head_only, keep_alive)
            )
            task.add_done_callback(lambda _: self._write_ready())
            self.out.append((task, keep_alive))
            return
        try:
            a = answer(self.pages, method, path)
        except Exception:
            log.exception("admin: %s %s failed", method, path)
            a = error_answer(500, "internal_error", "the admin server failed to answer")
        self.out.append((_response(a, head_only=head_only, keep_alive=keep_alive), keep_alive))
        self._write_ready()

    async def _metrics(
        self, render: Callable[[], Awaitable[bytes]], head_only: bool, keep_alive: bool
    ) -> bytes:
        try:
            a = Answer(200, await render(), self.pages.metrics_type)
        except Exception:
            log.exception("admin: rendering /metrics failed")
            a = error_answer(500, "internal_error", "the admin server failed to answer")
        return _response(a, head_only=head_only, keep_alive=keep_alive)

    async def _deferred(
        self, pending: Awaitable[Answer], head_only: bool, keep_alive: bool
    ) -> bytes | _Stream:
        try:
            a = await pending
        except Exception:
            log.exception("admin: answering failed")
            a = error_answer(500, "internal_error", "the admin server failed to answer")
        head = _response(a, head_only=True, keep_alive=keep_alive)
        if a.stream is not None:
            if head_only:
                await a.stream.aclose()  # type: ignore[attr-defined]
                return head
            return _Stream(head, a.body, a.stream, keep_alive)
        return head if head_only else head + a.body

    async def _send_stream(self, stream: _Stream) -> None:
        body = stream.body
        try:
            if stream.first and self.transport is not None:
                self.transport.write(_chunk(stream.first))
            async for data in body:
                if self.transport is None:
                    return
                if data:
                    self.transport.write(_chunk(data))
            if self.transport is not None:
                self.transport.write(b"0\r\n\r\n")
                if not stream.keep_alive:
                    self.transport.close()
                    self.transport = None
        except Exception:
            log.exception("admin: a streamed answer failed")
            if self.transport is not None:
                self.transport.abort()  # the client sees a cut chunked body, not a clean end
                self.transport = None
        finally:
            await body.aclose()  # type: ignore[attr-defined]

    def _write_ready(self) -> None:
        """Write the finished responses at the head of the queue, in request order."""
        out = self.out
        while out and self.transport is not None and self.pump is None:
            queued, keep_alive = out[0]
            if isinstance(queued, asyncio.Task):
                if not queued.done():
                    return
                item = queued.result()
            else:
                item = queued
            out.popleft()
            if isinstance(item, _Stream):
                self.transport.write(item.head)
                self.pump = asyncio.get_running_loop().create_task(self._send_stream(item))
                self.pump.add_done_callback(self._stream_done)
                return
            self.transport.write(item)
            if not keep_alive:
                self.transport.close()
                self.transport = None

    # -- helpers
    def _fail(self, a: Answer) -> None:
        if self.transport is not None:
            self.transport.write(_response(a, head_only=False, keep_alive=False))
            self.transport.close()
            self.transport = None

    def _arm(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._on_idle)

    def _on_idle(self) -> None:
        if self.pump is not None:
            self._arm()  # a client reading a stream sends nothing meanwhile
        elif self.transport is not None:
            self.transport.close()

    def _stream_done(self, _: asyncio.Task[None]) -> None:
        self.pump = None
        self._write_ready()


class AdminServer:
    def __init__(self, admin: AdminConfig, pages: AdminPages) -> None:
        self.admin = admin
        self.pages = pages
        self.connections: set[AdminProtocol] = set()
        self._servers: list[asyncio.Server] = []

    async def start(self, socks: Sequence[socket.socket] = ()) -> None:
        """Listen on ``admin.address``, or on ``socks`` already bound to it (inherited
        across a restart: guard.runtime.sockets)."""
        refusal = bind_refusal(self.admin)
        if refusal is not None:
            raise PermissionError(refusal)  # `guard run` says this before getting here
        loop = asyncio.get_running_loop()

        def factory() -> AdminProtocol:
            return AdminProtocol(self.pages, self.connections)

        if socks:
            for sock in socks:
                self._servers.append(await loop.create_server(factory, sock=sock))
        else:
            self._servers.append(
                await loop.create_server(
                    factory, self.admin.host.strip("[]"), self.admin.port, reuse_address=True
                )
            )
        log.info(
            "admin API on %s:%d (/healthz, /metrics%s)",
            self.admin.host,
            self.admin.port,
            ", /v1" if self.pages.api is not None else "",
        )

    def stop_accepting(self) -> None:
        """Leave new connections to the Guard that took over; answer the open ones."""
        for server in self._servers:
            server.close()

    def close(self) -> None:
        self.stop_accepting()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
