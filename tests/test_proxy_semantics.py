"""HTTP proxy semantics over real sockets: header rewriting, HTTP/1.0, Expect, bodyless
responses, pipelining and who closes the connection. Both parsers (``parser`` fixture)."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest
from helpers import BackendConn, Conn, fetch

CURL = "/usr/bin/curl"


def echo_headers(resp) -> list[tuple[str, str]]:
    assert resp.status == 200, (resp.raw_head, resp.body[:300])
    return [(n.lower(), v) for n, v in resp.json()["headers"]]


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if n == name]


# --------------------------------------------------------------- header rewriting


def test_hop_by_hop_headers_are_removed(std_guard) -> None:
    resp = fetch(
        std_guard.port,
        "GET",
        "/hop",
        "demo.test",
        [
            ("Connection", "keep-alive, X-Secret, x-Other"),
            ("Keep-Alive", "timeout=5, max=100"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "h2c"),  # no "upgrade" token in Connection: not an upgrade request
            ("Proxy-Connection", "keep-alive"),
            ("X-Secret", "s3cret"),
            ("X-Other", "2"),
            ("X-Kept", "yes"),
        ],
    )
    headers = echo_headers(resp)
    names = {n for n, _ in headers}
    for gone in (
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "x-secret",
        "x-other",
    ):
        assert gone not in names, (gone, headers)
    assert values(headers, "x-kept") == ["yes"]
    assert values(headers, "host") == ["demo.test"]


def test_forwarding_headers_set_and_client_values_overwritten(std_guard) -> None:
    resp = fetch(
        std_guard.port,
        "GET",
        "/fwd",
        "demo.test",
        [
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("Forwarded", "for=1.2.3.4;proto=https"),
        ],
    )
    headers = echo_headers(resp)
    assert values(headers, "x-forwarded-for") == ["127.0.0.1"]
    assert values(headers, "x-forwarded-proto") == ["http"]
    assert values(headers, "x-forwarded-host") == ["demo.test"]
    assert values(headers, "forwarded") == ["for=127.0.0.1;proto=http;host=demo.test"]


def test_forwarding_headers_without_client_values(std_guard) -> None:
    headers = echo_headers(fetch(std_guard.port, "GET", "/fwd", "demo.test"))
    assert values(headers, "x-forwarded-for") == ["127.0.0.1"]
    assert values(headers, "x-forwarded-proto") == ["http"]
    assert values(headers, "x-forwarded-host") == ["demo.test"]
    assert len(values(headers, "forwarded")) == 1


def test_client_cannot_delete_forwarding_headers_via_connection(std_guard) -> None:
    resp = fetch(
        std_guard.port,
        "GET",
        "/fwd",
        "demo.test",
        [
            ("Connection", "X-Forwarded-For, Forwarded, X-Forwarded-Host, X-Forwarded-Proto"),
            ("X-Forwarded-For", "6.6.6.6"),
        ],
    )
    headers = echo_headers(resp)
    assert values(headers, "x-forwarded-for") == ["127.0.0.1"]
    assert values(headers, "x-forwarded-proto") == ["http"]
    assert values(headers, "x-forwarded-host") == ["demo.test"]
    assert values(headers, "forwarded") == ["for=127.0.0.1;proto=http;host=demo.test"]


def test_trusted_proxy_forwarding_headers_are_appended(guard, demos) -> None:
    g = guard(servers=[demos[0].address], http={"trusted_proxies": ["127.0.0.1/32"]})
    resp = fetch(
        g.port,
        "GET",
        "/fwd",
        "site.test",
        [
            ("X-Forwarded-For", "1.2.3.4, 10.0.0.1"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "public.example"),
            ("Forwarded", "for=1.2.3.4;proto=https"),
        ],
    )
    headers = echo_headers(resp)
    assert values(headers, "x-forwarded-for") == ["1.2.3.4, 10.0.0.1, 127.0.0.1"]
    assert values(headers, "x-forwarded-proto") == ["https"]
    assert values(headers, "x-forwarded-host") == ["public.example"]
    assert values(headers, "forwarded") == [
        "for=1.2.3.4;proto=https, for=127.0.0.1;proto=http;host=site.test"
    ]
    # Named in Connection, a trusted peer's X-Forwarded-For was meant for Guard alone:
    # not believed, but Guard's own value is still there.
    resp = fetch(
        g.port,
        "GET",
        "/fwd",
        "site.test",
        [
            ("Connection", "X-Forwarded-For"),
            ("X-Forwarded-For", "1.2.3.4"),
        ],
    )
    assert values(echo_headers(resp), "x-forwarded-for") == ["127.0.0.1"]


def test_untrusted_network_is_not_believed(guard, demos) -> None:
    g = guard(servers=[demos[0].address], http={"trusted_proxies": ["10.0.0.0/8"]})
    resp = fetch(g.port, "GET", "/fwd", "site.test", [("X-Forwarded-For", "1.2.3.4")])
    assert values(echo_headers(resp), "x-forwarded-for") == ["127.0.0.1"]


# -------------------------------------------------------------------- HTTP/1.0


def test_http10_client_without_keep_alive_is_closed(std_guard) -> None:
    with Conn(std_guard.port) as c:
        c.request("GET", "/bytes/100", "demo.test", version="1.0")
        r = c.read_response()
        assert r.status == 200 and len(r.body) == 100
        assert r.header("transfer-encoding") is None
        assert c.closed_within(2)


def test_http10_client_with_keep_alive(std_guard) -> None:
    with Conn(std_guard.port) as c:
        for i in range(3):
            c.request("GET", f"/ka{i}", "demo.test", [("Connection", "keep-alive")], version="1.0")
            r = c.read_response()
            assert r.status == 200
            assert r.header("connection") == "keep-alive"
            assert r.json()["path"] == f"/ka{i}"
        assert not c.closed_within(0.2)


# ----------------------------------------------------------------- Expect: 100


def test_expect_100_continue_with_curl(std_guard, tmp_path) -> None:
    data = tmp_path / "upload.bin"
    data.write_bytes(b"x" * (512 * 1024))
    t0 = time.monotonic()
    out = subprocess.run(
        [
            CURL,
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--expect100-timeout",
            "5",
            "-H",
            "Host: demo.test",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            f"@{data}",
            f"{std_guard.url}/upload",
        ],
        capture_output=True,
        timeout=20,
    )
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition(b"\n")
    assert code == b"200"
    doc = json.loads(body)
    assert doc["body_length"] == 512 * 1024
    assert elapsed < 2.0, f"curl waited for 100 Continue ({elapsed:.2f}s)"


def test_expect_100_continue_over_a_pooled_connection(guard, demos, tmp_path) -> None:
    """Later uploads reuse the pooled upstream connection and still get their 100 at once."""
    g = guard(servers=[demos[0].address])
    data = tmp_path / "upload.bin"
    data.write_bytes(b"y" * 100_000)
    for _ in range(3):
        t0 = time.monotonic()
        out = subprocess.run(
            [
                CURL,
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--expect100-timeout",
                "5",
                "-H",
                "Expect: 100-continue",
                "--data-binary",
                f"@{data}",
                f"{g.url}/up",
            ],
            capture_output=True,
            timeout=20,
        )
        assert out.returncode == 0 and out.stdout == b"200", out
        assert time.monotonic() - t0 < 2.0


def test_expect_100_continue_raw(std_guard) -> None:
    """The client waits for the interim 100 before sending the body."""
    with Conn(std_guard.port) as c:
        c.send(
            b"POST /exp HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = c.read_head()
        assert interim.status == 100
        c.send(b"hello")
        r = c.read_response()
        assert r.status == 200 and r.json()["body"] == "hello"
        # the connection carries on
        c.request("GET", "/healthz", "demo.test")
        assert c.read_response().body == b"ok"


def _records_without_100(conn) -> None:
    """A backend that never sends 100 Continue: it just reads whole requests."""
    while (req := conn.read_request()) is not None:
        conn.backend.requests.append(req)
        conn.respond(200, b"stored")


def test_expect_answered_by_guard_and_not_forwarded(guard, raw_backend) -> None:
    """The client gets 100 from Guard on a new and on a pooled upstream connection alike,
    and the backend never sees Expect (it would not answer it)."""
    backend = raw_backend(_records_without_100)
    g = guard(servers=[backend.address])
    for i in range(3):  # the first opens the upstream connection, the others reuse it
        with Conn(g.port) as c:
            c.send(
                b"POST /e%d HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\n\r\n" % i
            )
            assert c.read_head().status == 100
            c.send(b"hello")
            r = c.read_response()
            assert (r.status, r.body) == (200, b"stored")
    assert len(backend.requests) == 3
    assert all(r.header("expect") is None and r.body == b"hello" for r in backend.requests)
    assert backend.accepted == 1


# ------------------------------------------------------------ bodyless responses


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("HEAD", "/bytes/1000", 200),
        ("HEAD", "/stream?chunks=3&interval=0", 200),
        ("HEAD", "/", 200),
        ("GET", "/status/204", 204),
        ("GET", "/status/304", 304),
    ],
)
def test_bodyless_responses_keep_the_connection_usable(std_guard, method, path, status) -> None:
    with Conn(std_guard.port) as c:
        for _ in range(2):
            c.request(method, path, "demo.test")
            r = c.read_response(method)
            assert r.status == status
            if path == "/bytes/1000":
                assert r.header("content-length") == "1000"
            # the next message on the socket must be the next response, not body bytes
            c.request("GET", "/healthz", "demo.test")
            r2 = c.read_response()
            assert (r2.status, r2.body) == (200, b"ok"), (r2.raw_head, r2.body)
        assert not c.buf


# ------------------------------------------------------------------- pipelining


def test_pipelined_requests_answered_in_order(std_guard) -> None:
    with Conn(std_guard.port) as c:
        c.send(
            b"GET /slow?delay=0.2 HTTP/1.1\r\nHost: demo.test\r\n\r\n"
            b"GET /bytes/10 HTTP/1.1\r\nHost: demo.test\r\n\r\n"
            b"POST /third HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /healthz HTTP/1.1\r\nHost: demo.test\r\n\r\n"
        )
        r1, r2, r3, r4 = (c.read_response() for _ in range(4))
    assert r1.body.startswith(b"slept")
    assert r2.body == b"abcdefghij"
    assert r3.json()["path"] == "/third" and r3.json()["body"] == "abc"
    assert r4.body == b"ok"


def test_pipelined_requests_to_different_routes(std_guard, demos) -> None:
    with Conn(std_guard.port) as c:
        c.send(
            b"".join(
                b"GET /p%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, host)
                for i, host in enumerate([b"exact.test", b"nothing.test", b"x.wild.test"])
            )
        )
        r1, r2, r3 = (c.read_response() for _ in range(3))
    assert r1.json()["path"] == "/p0" and r1.json()["port"] == demos[0].port
    assert r2.status == 404 and r2.header("x-guard-error") == "route_not_found"
    assert r3.json()["path"] == "/p2" and r3.json()["port"] == demos[1].port


def test_many_pipelined_requests(std_guard) -> None:
    sizes = [(i * 7919) % 5000 for i in range(60)]
    with Conn(std_guard.port) as c:
        c.send(b"".join(b"GET /bytes/%d HTTP/1.1\r\nHost: demo.test\r\n\r\n" % n for n in sizes))
        got = [len(c.read_response().body) for _ in sizes]
    assert got == sizes


# --------------------------------------------------------------- interim, framing


def _early_hints(conn: BackendConn) -> None:
    while conn.read_request() is not None:
        conn.send(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )


def test_informational_response_relayed(guard, raw_backend) -> None:
    g = guard(servers=[raw_backend(_early_hints).address])
    with Conn(g.port) as c:
        for _ in range(2):
            c.request("GET", "/")
            hint = c.read_head()
            assert hint.status == 103 and hint.header("link") == "</a.css>; rel=preload"
            r = c.read_response()
            assert (r.status, r.body) == (200, b"ok")


def _close_delimited(conn: BackendConn) -> None:
    if conn.read_request() is not None:
        conn.send(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhello ")
        time.sleep(0.05)
        conn.send(b"world")
        conn.close()


def test_close_delimited_response_is_chunked_for_http11(guard, raw_backend) -> None:
    backend = raw_backend(_close_delimited)
    g = guard(servers=[backend.address])
    with Conn(g.port) as c:
        for _ in range(2):  # and the client connection survives the backend's close
            c.request("GET", "/")
            r = c.read_response()
            assert r.chunked and r.body == b"hello world"
            assert r.header("x-a") == "1" and r.header("connection") is None
    with Conn(g.port) as c:
        c.request("GET", "/", version="1.0")
        r = c.read_response()
        assert not r.chunked and r.body == b"hello world" and c.eof


def test_via_header_when_enabled(guard, demos) -> None:
    g = guard(servers=[demos[0].address], http={"via": True})
    r = fetch(g.port, "GET", "/via")
    assert r.header("via") == "1.1 guard"
    assert values(echo_headers(r), "via") == ["1.1 guard"]


def test_max_requests_per_connection(guard, demos) -> None:
    g = guard(servers=[demos[0].address], http={"limits": {"max_requests_per_connection": 3}})
    with Conn(g.port) as c:
        for i in range(3):
            c.request("GET", "/healthz")
            r = c.read_response()
            assert r.body == b"ok"
            assert (r.header("connection") == "close") == (i == 2)
        assert c.closed_within(2)


# ------------------------------------------------------------- connection close


def test_client_connection_close_closes_after_response(std_guard) -> None:
    with Conn(std_guard.port) as c:
        c.request("GET", "/bye", "demo.test", [("Connection", "close")])
        r = c.read_response()
        assert r.status == 200 and r.json()["path"] == "/bye"
        assert r.header("connection") == "close"
        assert c.closed_within(2)


@pytest.mark.parametrize(
    "third",
    [b"GET /healthz HTTP/1.1\r\nHost: demo.test\r\n\r\n", b"garbage that is not http\r\n\r\n"],
)
def test_nothing_answered_after_a_pipelined_connection_close(std_guard, third) -> None:
    """RFC 9112 9.6: after the response to a "close" request, the connection ends; what
    the client sent behind it is neither processed nor answered (same for both parsers)."""
    with Conn(std_guard.port) as c:
        c.send(
            b"GET /one HTTP/1.1\r\nHost: demo.test\r\n\r\n"
            b"GET /two HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n" + third
        )
        r1, r2 = c.read_response(), c.read_response()
        assert r1.json()["path"] == "/one" and r1.header("connection") is None
        assert r2.json()["path"] == "/two" and r2.header("connection") == "close"
        assert c.read_until_close(limit=3) == b""


def test_half_close_after_pipelined_requests_answers_them(std_guard) -> None:
    with Conn(std_guard.port) as c:
        c.send(
            b"GET /slow?delay=0.1 HTTP/1.1\r\nHost: demo.test\r\n\r\n"
            b"GET /two HTTP/1.1\r\nHost: demo.test\r\n\r\n"
            b"GET /three HTTP/1.1\r\nHost: demo.test\r\n\r\n"
        )
        c.sock.shutdown(socket.SHUT_WR)
        bodies = [c.read_response().body for _ in range(3)]
        assert bodies[0].startswith(b"slept")
        assert [json.loads(b)["path"] for b in bodies[1:]] == ["/two", "/three"]
        assert c.read_until_close(limit=3) == b""


def _close_after_each(conn: BackendConn) -> None:
    req = conn.read_request()
    if req is None:
        return
    conn.backend.requests.append(req)
    conn.respond(200, req.target.encode(), [("Connection", "close"), ("X-Gone", "1")])
    conn.close()


def test_backend_connection_close_keeps_client_connection(guard, raw_backend) -> None:
    backend = raw_backend(_close_after_each)
    g = guard(servers=[backend.address])
    with Conn(g.port) as c:
        for i in range(3):
            c.request("GET", f"/k{i}")
            r = c.read_response()
            assert (r.status, r.body) == (200, f"/k{i}".encode())
            assert r.header("connection") is None  # the backend's close is hop-by-hop
            assert r.header("x-gone") == "1"
        assert not c.closed_within(0.2)
    assert backend.accepted == 3
