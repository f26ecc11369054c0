"""The pure-Python cost of one proxied request, with the sockets taken out.

A keep-alive GET goes through the real client protocol, route table, balancer, pool,
forwarder and both httptools parsers, against transports that only count writes. What is
left is exactly the per-request Python work Guard adds on top of the syscalls, the number
to watch when changing the hot path (the load harness measures the whole thing).

Two exchanges: ``plain`` (wrk's GET and nginx's answer: both take the plain shortcut,
guard.http.plain) and ``general`` (a client X-Forwarded-For and Apache's Keep-Alive
response field: both parsed header by header).

    python -m pytest benchmarks/test_bench_proxy_path.py --benchmark-only
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from guard.config.model import HttpConfig, HttpLimits, RouteConfig, ServerAddress, ServiceConfig
from guard.http.forwarding import TrustedProxies
from guard.proxy.context import ListenerContext
from guard.proxy.deadlines import DeadlineSweeper
from guard.proxy.http_proxy import HttpProxyProtocol
from guard.routing import build_http_tables
from guard.upstream.pool import UpstreamConnection, UpstreamSettings
from guard.upstream.resolver import Resolver
from guard.upstream.service import Service

REQUEST = (
    b"GET /api/users?page=2 HTTP/1.1\r\nHost: app.localhost:8080\r\nUser-Agent: wrk\r\n"
    b"Accept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 17:40:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
    b"hello world\n"
)
GENERAL_REQUEST = REQUEST.replace(b"Accept: */*", b"Accept: */*\r\nX-Forwarded-For: 10.1.2.3")
GENERAL_RESPONSE = RESPONSE.replace(
    b"Connection: keep-alive", b"Keep-Alive: timeout=5, max=100\r\nConnection: Keep-Alive"
)
EXCHANGES = {"plain": (REQUEST, RESPONSE), "general": (GENERAL_REQUEST, GENERAL_RESPONSE)}


class CountingTransport:
    """Enough of asyncio.Transport for the proxy: writes are counted, not sent."""

    def __init__(self) -> None:
        self.writes = 0
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.bytes += len(data)

    def writelines(self, data: list[bytes]) -> None:
        self.writes += 1
        self.bytes += sum(map(len, data))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.parametrize("exchange", list(EXCHANGES))
def test_proxied_request_python_cost(
    benchmark, loop: asyncio.AbstractEventLoop, exchange: str
) -> None:
    request, response = EXCHANGES[exchange]
    sweeper = DeadlineSweeper(loop, 0.5)
    settings = UpstreamSettings("httptools", 65536, 256, 5.0, 60.0)
    service = Service(
        ServiceConfig(name="app", servers=(ServerAddress("127.0.0.1", 9),)),
        settings,
        loop=loop,
        resolver=Resolver(),
        sweeper=sweeper,
    )
    routes = [RouteConfig(name="r0", listener="web", service="app")]
    tables = build_http_tables(routes, {"app": service})
    ctx = ListenerContext(
        name="web",
        proto=b"http",
        # no per-connection request cap: the benchmark reuses one connection throughout
        http=HttpConfig(limits=HttpLimits(max_requests_per_connection=1 << 62)),
        table=tables["web"],
        sweeper=sweeper,
        trusted=TrustedProxies([]),
        via=None,
    )
    client_transport = CountingTransport()
    client = HttpProxyProtocol(ctx)
    client.connection_made(client_transport)  # type: ignore[arg-type]
    pool = service.pools[0]
    upstream = UpstreamConnection(pool)
    upstream_transport = CountingTransport()
    upstream.connection_made(upstream_transport)  # type: ignore[arg-type]
    pool.release(upstream)

    def one_request() -> None:
        client.data_received(request)
        conn = client._upstream
        assert conn is upstream
        conn.data_received(response)

    benchmark(one_request)
    # One write each way per request: the head and body were coalesced.
    assert client_transport.writes == upstream_transport.writes
    assert pool.connects == 0 and pool.idle_count == 1
    assert ctx.stats["r0"].total == client_transport.writes
