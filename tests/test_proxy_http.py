"""Guard as a user sees it over real sockets: routing, balancing, connection reuse and the
access log. Every test runs under both parsers (the ``parser`` fixture)."""

from __future__ import annotations

import collections
import json
import time

import pytest
from helpers import (
    BackendConn,
    Conn,
    assert_guard_error,
    fetch,
    serve_keepalive,
    wait_for,
)


def port_of(resp) -> int:
    assert resp.status == 200, (resp.status, resp.raw_head, resp.body[:200])
    return int(resp.header("x-demo-port"))


# ------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("host", "path", "backend"),
    [
        ("exact.test", "/", 0),
        ("EXACT.Test:8080", "/", 0),  # port and case do not matter
        ("exact.test.", "/x", 0),  # nor a trailing dot
        ("a.wild.test", "/", 1),
        ("deep.er.wild.test", "/", 1),
        ("user42.cap.test", "/", 2),
        ("USER42.CAP.TEST:81", "/", 2),
        ("paths.test", "/", 0),
        ("paths.test", "/other", 0),
        ("paths.test", "/apix", 0),  # a prefix matches on a segment boundary only
        ("paths.test", "/api", 1),
        ("paths.test", "/api/x?q=1", 1),
        ("paths.test", "/api/v2", 2),  # longest prefix wins
        ("paths.test", "/api/v2/deeper", 2),
        ("paths.test", "/exact", 2),
        ("paths.test", "/exact/sub", 0),
        ("headers.test", "/", 0),
        ("prio.test", "/", 1),  # higher priority wins among equal matches
    ],
)
def test_routing_by_host_and_path(std_guard, demos, host, path, backend) -> None:
    resp = fetch(std_guard.port, "GET", path, host)
    assert port_of(resp) == demos[backend].port
    echo = resp.json()
    assert echo["path"] == path  # no rewriting without strip_prefix
    assert ["Host", host] in echo["headers"]  # names go on as received


def test_absolute_form_routes_by_authority_and_sends_its_host(std_guard, demos) -> None:
    resp = fetch(std_guard.port, "GET", "http://exact.test/x?y=1", "nothing.test")
    assert port_of(resp) == demos[0].port
    echo = resp.json()
    assert echo["path"] == "/x?y=1"  # origin-form upstream
    # RFC 9112 3.2.2: the backend sees the authority Guard routed by, not the client's Host
    hosts = [v for n, v in echo["headers"] if n == "host"]
    assert hosts == ["exact.test"]


def test_routing_by_method(std_guard, demos) -> None:
    assert port_of(fetch(std_guard.port, "GET", "/", "methods.test")) == demos[0].port
    assert port_of(fetch(std_guard.port, "POST", "/", "methods.test", body=b"x")) == demos[1].port
    assert port_of(fetch(std_guard.port, "PUT", "/", "methods.test", body=b"")) == demos[1].port
    assert port_of(fetch(std_guard.port, "DELETE", "/", "methods.test")) == demos[0].port


def test_routing_by_header(std_guard, demos) -> None:
    r = fetch(std_guard.port, "GET", "/", "headers.test", [("X-Canary", "1")])
    assert port_of(r) == demos[1].port
    r = fetch(std_guard.port, "GET", "/", "headers.test", [("X-Canary", "2")])
    assert port_of(r) == demos[0].port


@pytest.mark.parametrize(
    ("path", "seen"),
    [
        ("/api/v1/users?x=1&y=2", "/users?x=1&y=2"),
        ("/api/v1?x=1", "/?x=1"),
        ("/api/v1", "/"),
        ("/api/v1/", "/"),
        ("/api/v1/a/b", "/a/b"),
    ],
)
def test_strip_prefix(std_guard, demos, path, seen) -> None:
    resp = fetch(std_guard.port, "GET", path, "strip.test")
    assert port_of(resp) == demos[0].port
    assert resp.json()["path"] == seen


def test_strip_prefix_not_applied_outside_the_prefix(std_guard) -> None:
    # /api/v1x is not under /api/v1: no route for it on strip.test
    assert_guard_error(
        fetch(std_guard.port, "GET", "/api/v1x", "strip.test"), 404, "route_not_found"
    )


@pytest.mark.parametrize(
    ("host", "path"), [("nothing.test", "/"), ("wild.test", "/"), ("cap.test", "/"), (None, "/")]
)
def test_no_route_is_404(std_guard, host, path) -> None:
    version = "1.0" if host is None else "1.1"  # HTTP/1.0 may omit Host
    resp = fetch(std_guard.port, "GET", path, host, version=version)
    assert_guard_error(resp, 404, "route_not_found")


def test_no_route_keeps_the_connection(std_guard, demos) -> None:
    with Conn(std_guard.port) as c:
        c.request("GET", "/", "nothing.test")
        assert_guard_error(c.read_response(), 404, "route_not_found")
        c.request("GET", "/", "exact.test")
        assert port_of(c.read_response()) == demos[0].port


# ----------------------------------------------------------------------- balancing


def test_round_robin_splits_evenly(std_guard, demos) -> None:
    seen = collections.Counter()
    with Conn(std_guard.port) as c:  # one client connection: balancing is per request
        for _ in range(30):
            c.request("GET", "/healthz", "rr.test")
            seen[port_of(c.read_response())] += 1
    assert seen == {d.port: 10 for d in demos}


def test_hash_on_header_is_sticky(std_guard, demos) -> None:
    chosen = {}
    for user in range(12):
        ports = {
            port_of(
                fetch(
                    std_guard.port, "GET", "/healthz", "hash.test", [("X-User-Id", f"user-{user}")]
                )
            )
            for _ in range(4)
        }
        assert len(ports) == 1, f"user-{user} moved between {ports}"
        chosen[user] = ports.pop()
    # twelve users do not all hash onto one backend
    assert len(set(chosen.values())) >= 2


def test_hash_on_cookie_is_sticky(std_guard) -> None:
    chosen = {}
    for sid in range(12):
        cookie = [("Cookie", f"theme=dark; sid=s{sid}; lang=en")]
        ports = {
            port_of(fetch(std_guard.port, "GET", "/healthz", "cookie.test", cookie))
            for _ in range(4)
        }
        assert len(ports) == 1, f"sid s{sid} moved between {ports}"
        chosen[sid] = ports.pop()
        # the other cookies do not take part in the hash
        other = [("Cookie", f"sid=s{sid}")]
        assert (
            port_of(fetch(std_guard.port, "GET", "/healthz", "cookie.test", other)) == chosen[sid]
        )
    assert len(set(chosen.values())) >= 2


@pytest.mark.parametrize("host", ["p2c.test", "lr.test"])
def test_p2c_and_least_request_use_every_backend(std_guard, demos, host) -> None:
    seen = collections.Counter()
    with Conn(std_guard.port) as c:
        for _ in range(30):
            c.request("GET", "/healthz", host)
            seen[port_of(c.read_response())] += 1
    assert set(seen) == {d.port for d in demos}, seen


def test_least_request_avoids_a_busy_backend(std_guard, demos) -> None:
    # Two slow requests hold two backends; the next requests go to the third one.
    slow = [Conn(std_guard.port) for _ in range(2)]
    try:
        for c in slow:
            c.request("GET", "/slow?delay=0.6", "lr.test")
        time.sleep(0.15)
        ports = {port_of(fetch(std_guard.port, "GET", "/healthz", "lr.test")) for _ in range(3)}
        busy = {port_of(c.read_response()) for c in slow}
    finally:
        for c in slow:
            c.close()
    assert len(busy) == 2
    assert ports == {d.port for d in demos} - busy


# ---------------------------------------------------------------------- keep-alive


def test_client_keep_alive_reuses_one_upstream_connection(guard, raw_backend) -> None:
    backend = raw_backend(serve_keepalive(b"hello"))
    g = guard(servers=[backend.address])
    with Conn(g.port) as c:
        for i in range(50):
            c.request("GET", f"/r{i}")
            r = c.read_response()
            assert (r.status, r.body) == (200, b"hello")
    assert backend.accepted == 1
    assert [r.target for r in backend.requests] == [f"/r{i}" for i in range(50)]


def test_pool_reuses_upstream_across_client_connections(guard, raw_backend) -> None:
    backend = raw_backend(serve_keepalive(b"hello"))
    g = guard(servers=[backend.address])
    for i in range(50):
        with Conn(g.port) as c:
            c.request("GET", f"/c{i}")
            assert c.read_response().body == b"hello"
    assert backend.accepted == 1
    assert len(backend.requests) == 50


def _one_response_then_close(conn: BackendConn) -> None:
    """Answer one request as keep-alive (no Connection: close), then close the socket."""
    req = conn.read_request()
    if req is None:
        return
    conn.backend.requests.append(req)
    conn.respond(200, b"fresh")
    conn.close()


def _close_on_second_request(conn: BackendConn) -> None:
    """Answer one request as keep-alive; close without answering when the next arrives
    (the race where the backend's idle close crosses Guard's reuse)."""
    req = conn.read_request()
    if req is None:
        return
    conn.backend.requests.append(req)
    conn.respond(200, b"fresh")
    conn.read_request()
    conn.close()


@pytest.mark.parametrize("handler", [_one_response_then_close, _close_on_second_request])
@pytest.mark.parametrize("pause", [0.0, 0.2])
def test_stale_pooled_connection_is_retried(guard, raw_backend, handler, pause) -> None:
    backend = raw_backend(handler)
    g = guard(servers=[backend.address])
    for i in range(4):
        with Conn(g.port) as c:
            c.request("GET", f"/n{i}")
            r = c.read_response()
            assert (r.status, r.body) == (200, b"fresh"), (r.raw_head, r.body)
        time.sleep(pause)
    assert [r.target for r in backend.requests] == [f"/n{i}" for i in range(4)]


def test_post_on_a_stale_pooled_connection_is_not_replayed(guard, raw_backend) -> None:
    """The backend may have acted on a POST before closing: Guard answers 502 instead of
    sending it twice (RFC 9110 9.2.2); a GET in the same spot is retried (above)."""
    backend = raw_backend(_close_on_second_request)
    g = guard(servers=[backend.address])
    with Conn(g.port) as c:
        c.request("GET", "/first")
        assert c.read_response().status == 200
    with Conn(g.port) as c:
        c.send(b"POST /pay HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        assert_guard_error(c.read_response(), 502, "upstream_protocol_error")
    time.sleep(0.2)
    assert [r.target for r in backend.requests] == ["/first"]
    assert backend.accepted == 1


# ---------------------------------------------------------------------- access log


def _log_lines(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_access_log_one_json_line_per_request(guard, demos, tmp_path) -> None:
    log = tmp_path / "access.log"
    g = guard(
        routes=[{"name": "app", "match": {"host": "app.test"}, "service": "app"}],
        services={"app": {"servers": [demos[0].address]}},
        http={"access_log": str(log)},
    )
    ok = fetch(g.port, "GET", "/bytes/1234", "app.test")
    assert ok.status == 200
    assert_guard_error(fetch(g.port, "GET", "/", "nowhere.test"), 404, "route_not_found")
    wait_for(lambda: len(_log_lines(log)) >= 2, 2.5, "access log lines")
    time.sleep(0.1)
    lines = _log_lines(log)
    assert len(lines) == 2, lines
    first, second = lines
    assert first["route"] == "app" and first["service"] == "app"
    assert first["backend"] == demos[0].address
    assert first["status"] == 200 and first["bytes_out"] == 1234
    assert first["method"] == "GET" and first["path"] == "/bytes/1234"
    assert 0 <= first["duration"] < 5
    assert second["status"] == 404 and second["route"] is None
    assert second["error"] == "route_not_found"


def test_access_log_flushed_on_sigterm(guard, demos, tmp_path) -> None:
    log = tmp_path / "access.log"
    g = guard(
        routes=[{"name": "app", "match": {"path_prefix": "/"}, "service": "app"}],
        services={"app": {"servers": [demos[1].address]}},
        http={"access_log": str(log)},
    )
    for i in range(3):
        assert fetch(g.port, "GET", f"/x{i}").status == 200
    g.stop()  # well before the 1 s flush interval
    assert g.proc.returncode == 0, g.stderr
    lines = _log_lines(log)
    assert [(x["path"], x["status"], x["backend"]) for x in lines] == [
        (f"/x{i}", 200, demos[1].address) for i in range(3)
    ]
