"""Micro-benchmarks for guard.routing against a 10,000-route table.

Run: python -m pytest benchmarks/test_bench_routing.py -q --benchmark-only
Target: < 2 µs per match.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from guard.config.model import RouteConfig, RouteMatch
from guard.routing import HttpRouteTable, build_http_tables

HEADERS = [
    (b"host", b"h1234.example.com"),
    (b"user-agent", b"bench/1.0"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip"),
    (b"x-request-id", b"abc"),
]


def _route(name: str, match: RouteMatch, priority: int = 0) -> RouteConfig:
    return RouteConfig(name=name, listener="web", service="svc", match=match, priority=priority)


def make_routes() -> list[RouteConfig]:
    """10,000 routes: 5,000 on exact hosts, 2,000 capture/wildcard, 3,000 on one host."""
    routes: list[RouteConfig] = []
    # 1,250 exact hosts x 4 prefixes = 5,000
    for h in range(1250):
        host = f"h{h}.example.com"
        routes.append(_route(f"e{h}-root", RouteMatch(host=host)))
        routes.append(_route(f"e{h}-api", RouteMatch(host=host, path_prefix="/api")))
        routes.append(_route(f"e{h}-v1", RouteMatch(host=host, path_prefix="/api/v1")))
        routes.append(
            _route(
                f"e{h}-users", RouteMatch(host=host, path_prefix="/api/v1/users", methods=("GET",))
            )
        )
    # 1,000 capture + 1,000 wildcard
    for c in range(1000):
        routes.append(_route(f"c{c}", RouteMatch(host=f"{{key}}.sbx{c}.localhost")))
        routes.append(
            _route(f"w{c}", RouteMatch(host=f"*.wild{c}.example.org", path_prefix="/static"))
        )
    # 3,000 prefixes on a single path-heavy host
    for p in range(3000):
        prefix = f"/svc{p % 100}/team{p // 100}/v{p % 3}"
        routes.append(_route(f"p{p}", RouteMatch(host="busy.example.com", path_prefix=prefix)))
    assert len(routes) == 10_000
    return routes


@pytest.fixture(scope="module")
def table() -> HttpRouteTable[str]:
    return build_http_tables(make_routes(), {"svc": "svc"})["web"]


def _check(fn: Callable[[], object], expected: str | None) -> None:
    result = fn()
    name = None if result is None else result.route.name  # type: ignore[attr-defined]
    assert name == expected


def test_bench_exact_host_deep_prefix(benchmark, table: HttpRouteTable[str]) -> None:
    def run() -> object:
        return table.match(b"h1234.example.com", b"/api/v1/users/42/orders", b"GET", HEADERS)

    _check(run, "e1234-users")
    benchmark(run)


def test_bench_path_heavy_host(benchmark, table: HttpRouteTable[str]) -> None:
    def run() -> object:
        return table.match(
            b"busy.example.com:8080", b"/svc42/team12/v0/items/9/detail", b"GET", HEADERS
        )

    _check(run, "p1242")
    benchmark(run)


def test_bench_capture_host(benchmark, table: HttpRouteTable[str]) -> None:
    def run() -> object:
        return table.match(b"alice.sbx512.localhost", b"/index.html", b"GET", HEADERS)

    _check(run, "c512")
    benchmark(run)


def test_bench_wildcard_host(benchmark, table: HttpRouteTable[str]) -> None:
    def run() -> object:
        return table.match(b"cdn.eu.wild77.example.org", b"/static/app.js", b"GET", HEADERS)

    _check(run, "w77")
    benchmark(run)


def test_bench_miss(benchmark, table: HttpRouteTable[str]) -> None:
    def run() -> object:
        return table.match(b"nope.example.net", b"/api/v1/users/42", b"GET", HEADERS)

    _check(run, None)
    benchmark(run)


def test_bench_miss_uncached_host(benchmark, table: HttpRouteTable[str]) -> None:
    # Worst case for the host cache: every request carries a new Host value.
    counter = iter(range(10**9))

    def run() -> object:
        host = b"x%d.a.b.c.example.net" % next(counter)
        return table.match(host, b"/api/v1/users/42", b"GET", HEADERS)

    benchmark(run)


def test_bench_build_10k(benchmark) -> None:
    routes = make_routes()
    tables = benchmark(build_http_tables, routes, {"svc": "svc"})
    assert len(tables["web"].routes) == 10_000
