"""Overload and failure handling on the http proxy (issue 7): rate limits, circuit breaking,
retries on another server, passive outlier ejection. Real Guard, raw backends."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.conftest import GuardFactory
from tests.helpers import BackendConn, Conn, assert_guard_error, fetch, free_port, serve_keepalive


def status_backend(status: int, body: bytes) -> Any:
    def handler(conn: BackendConn) -> None:
        while (req := conn.read_request()) is not None:
            conn.backend.requests.append(req)
            conn.respond(status, body)

    return handler


def slow_backend(delay: float) -> Any:
    def handler(conn: BackendConn) -> None:
        while (req := conn.read_request()) is not None:
            conn.backend.requests.append(req)
            time.sleep(delay)
            conn.respond(200, b"slow")

    return handler


# ---------------------------------------------------------------------------- rate limits


def test_rate_limit_per_client_ip(guard: GuardFactory, raw_backend) -> None:  # type: ignore[no-untyped-def]
    b = raw_backend(serve_keepalive(b"ok"))
    g = guard(
        routes=[
            {
                "name": "app",
                "match": {"path_prefix": "/"},
                "service": "app",
                "rate_limit": {"average": 2, "burst": 3},
            }
        ],
        services={"app": {"servers": [b.address]}},
    )
    statuses = [fetch(g.port).status for _ in range(5)]
    assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429]
    r = fetch(g.port)
    assert_guard_error(r, 429, "rate_limited")
    assert r.header("retry-after") == "1"
    time.sleep(0.6)  # 2/s: one token back
    assert fetch(g.port).status == 200
    assert len(b.requests) == 4  # refused requests never reached the backend


def test_rate_limit_by_header(guard: GuardFactory, raw_backend) -> None:  # type: ignore[no-untyped-def]
    b = raw_backend(serve_keepalive(b"ok"))
    g = guard(
        routes=[
            {
                "name": "app",
                "match": {"path_prefix": "/"},
                "service": "app",
                "rate_limit": {"average": 1, "burst": 2, "by": "header:x-api-key"},
            }
        ],
        services={"app": {"servers": [b.address]}},
    )
    a = [fetch(g.port, headers=[("x-api-key", "a")]).status for _ in range(3)]
    other = [fetch(g.port, headers=[("x-api-key", "b")]).status for _ in range(2)]
    assert a == [200, 200, 429] and other == [200, 200]


# ---------------------------------------------------------------------- circuit breaking


def test_max_in_flight_refuses_fast(guard: GuardFactory, raw_backend) -> None:  # type: ignore[no-untyped-def]
    b = raw_backend(slow_backend(1.0))
    g = guard(services={"app": {"servers": [b.address], "limits": {"max_in_flight": 2}}})
    slow = [Conn(g.port, timeout=10) for _ in range(2)]
    for c in slow:
        c.request("GET", "/", "test")
    time.sleep(0.3)
    t0 = time.monotonic()
    r = fetch(g.port)
    assert_guard_error(r, 503, "overloaded")
    assert time.monotonic() - t0 < 0.5  # refused at once, not queued
    assert [c.read_response().status for c in slow] == [200, 200]
    for c in slow:
        c.close()
    assert fetch(g.port).status == 200  # the breaker closes with the load


def test_max_connections(guard: GuardFactory, raw_backend) -> None:  # type: ignore[no-untyped-def]
    b = raw_backend(slow_backend(1.0))
    g = guard(services={"app": {"servers": [b.address], "limits": {"max_connections": 1}}})
    first = Conn(g.port, timeout=10)
    first.request("GET", "/", "test")
    time.sleep(0.3)
    assert_guard_error(fetch(g.port), 503, "overloaded")  # it would need a second connection
    assert first.read_response().status == 200
    first.close()
    assert fetch(g.port, timeout=5).status == 200  # the idle pooled connection is reused


# ------------------------------------------------------------------------------- retries


def test_connect_error_is_retried_on_another_server(guard: GuardFactory, raw_backend) -> None:  # type: ignore[no-untyped-def]
    good = raw_backend(serve_keepalive(b"good"))
    dead = f"127.0.0.1:{free_port()}"  # nothing listens
    g = guard(
        services={
            "app": {
                "servers": [dead, good.address],
                "retries": {"attempts": 2, "on": ["connect_error"]},
            }
        }
    )
    # Round robin sends every other request to the dead server first: all must succeed,
    # POST included (nothing reached a backend before the retry).
    for method in ("GET", "POST", "GET", "POST"):
        body = b"x" if method == "POST" else None
        r = fetch(g.port, method, body=body)
        assert r.status == 200 and r.body == b"good"


def test_503_is_retried_for_get_not_for_post(guard: GuardFactory, raw_backend) -> None:  # type: ignore[no-untyped-def]
    bad = raw_backend(status_backend(503, b"bad"))
    good = raw_backend(serve_keepalive(b"good"))
    g = guard(
        services={
            "app": {
                "servers": [bad.address, good.address],
                "retries": {"attempts": 1, "on": ["503"]},
            }
        }
    )
    gets = [fetch(g.port).body for _ in range(4)]
    assert gets == [b"good"] * 4
    assert len(bad.requests) == 2  # two of the four went to bad first, then moved on
    posts = [fetch(g.port, "POST", body=b"p") for _ in range(2)]
    assert sorted(r.status for r in posts) == [200, 503]  # the backend may have acted on it


def test_retried_request_carries_its_body(guard: GuardFactory, raw_backend) -> None:  # type: ignore[no-untyped-def]
    bad = raw_backend(status_backend(503, b"bad"))
    good = raw_backend(serve_keepalive(b"good"))
    g = guard(
        services={
            "app": {
                "servers": [bad.address, good.address],
                "retries": {"attempts": 1, "on": ["503"]},
            }
        }
    )
    body = b"0123456789" * 1000
    for _ in range(2):
        r = fetch(g.port, "PUT", body=body)  # idempotent: may be replayed
        assert r.status == 200
    assert [req.body for req in good.requests] == [body, body]


# -------------------------------------------------------------------------------- outlier


def test_failing_server_is_ejected(guard: GuardFactory, raw_backend) -> None:  # type: ignore[no-untyped-def]
    bad = raw_backend(status_backend(500, b"bad"))
    goods = [raw_backend(serve_keepalive(b"good")) for _ in range(3)]
    admin = free_port()
    g = guard(
        services={
            "app": {
                "servers": [bad.address, *(x.address for x in goods)],
                "outlier": {"consecutive_errors": 2, "base_ejection": "30s"},
            }
        },
        extra={"admin": {"address": f"127.0.0.1:{admin}"}},
    )
    for _ in range(8):  # bad gets every 4th request: two failures in a row eject it
        fetch(g.port)
    assert len(bad.requests) == 2
    assert {fetch(g.port).body for _ in range(12)} == {b"good"}
    assert len(bad.requests) == 2
    metrics = fetch(admin, target="/metrics", host="admin").body.decode()
    assert f'guard_outlier_ejections_total{{backend="{bad.address}",service="app"}} 1.0' in metrics


@pytest.mark.parametrize("n", [20])
def test_retry_budget_bounds_retries_under_load(guard: GuardFactory, raw_backend, n: int) -> None:  # type: ignore[no-untyped-def]
    """All servers fail: retries stay within the budget (min 3 concurrent) instead of
    multiplying the load on a broken service."""
    bad = [raw_backend(status_backend(503, b"bad")) for _ in range(2)]
    g = guard(
        services={
            "app": {
                "servers": [x.address for x in bad],
                "retries": {"attempts": 3, "on": ["503"], "budget": "20%"},
            }
        }
    )
    results: list[int] = []

    def client() -> None:
        results.append(fetch(g.port, timeout=10).status)

    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [503] * n
    sent = sum(len(x.requests) for x in bad)
    assert n <= sent <= n * 4  # never more than attempts + 1 each
