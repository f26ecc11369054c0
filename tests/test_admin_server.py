"""The admin server over real sockets: /metrics rendered off the loop, answers in order."""

from __future__ import annotations

import asyncio
import threading
import time

from guard.admin.server import AdminPages, AdminServer
from guard.config.model import AdminConfig


async def _start(render_seconds: float) -> tuple[AdminServer, int, list[str]]:
    events: list[str] = []

    def slow_render() -> bytes:
        time.sleep(render_seconds)  # a large page: CPU-bound in prometheus-client
        events.append("rendered")
        return b"guard_up 1\n"

    async def render_async() -> bytes:
        return await asyncio.get_running_loop().run_in_executor(None, slow_render)

    pages = AdminPages(
        metrics=slow_render,
        metrics_type="text/plain",
        draining=lambda: False,
        metrics_async=render_async,
    )
    server = AdminServer(AdminConfig("127.0.0.1", 0), pages)
    await server.start()
    assert server._servers
    port = server._servers[0].sockets[0].getsockname()[1]
    return server, port, events


async def _read_responses(reader: asyncio.StreamReader, n: int) -> list[bytes]:
    bodies = []
    for _ in range(n):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        bodies.append(await reader.readexactly(length))
    return bodies


def test_pipelined_metrics_then_healthz_answered_in_order() -> None:
    async def main() -> None:
        server, port, _ = await _start(0.2)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
            )
            bodies = await asyncio.wait_for(_read_responses(reader, 2), 5)
            assert bodies == [b"guard_up 1\n", b'{"status": "ok"}']
            writer.close()
        finally:
            server.close()

    asyncio.run(main())


def test_slow_metrics_render_does_not_stall_other_requests() -> None:
    async def main() -> None:
        server, port, events = await _start(0.5)
        try:
            r1, w1 = await asyncio.open_connection("127.0.0.1", port)
            w1.write(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
            await asyncio.sleep(0.05)  # the render is under way in a thread
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            w2.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            assert await asyncio.wait_for(_read_responses(r2, 1), 5) == [b'{"status": "ok"}']
            assert events == []  # healthz was answered while /metrics still rendered
            assert await asyncio.wait_for(_read_responses(r1, 1), 5) == [b"guard_up 1\n"]
            w1.close()
            w2.close()
        finally:
            server.close()

    asyncio.run(main())


def test_metrics_page_renders_from_a_snapshot_taken_on_the_loop() -> None:
    from guard.metrics.collector import MetricsPage

    calls: list[str] = []

    def source() -> dict:
        calls.append(threading.current_thread().name)
        return {}

    async def main() -> bytes:
        return await MetricsPage(source).render_async()

    page = asyncio.run(main())
    assert calls == [threading.main_thread().name]
    assert page.startswith(b"# HELP guard_")
