"""Slowloris and friends (issue 7): connection caps, the body read timeout, and 2,000 slow
connections that must not keep normal clients from being served."""

from __future__ import annotations

import socket
import time

from tests.conftest import GuardFactory
from tests.helpers import Conn, assert_guard_error, fetch, free_port, serve_keepalive


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return out
        if not data:
            return out
        out += data


def test_per_ip_cap(guard: GuardFactory, raw_backend) -> None:  # type: ignore[no-untyped-def]
    b = raw_backend(serve_keepalive())
    admin = free_port()
    g = guard(
        servers=[b.address],
        http={"limits": {"max_connections_per_ip": 3}},
        extra={"admin": {"address": f"127.0.0.1:{admin}"}},
    )
    held = [socket.create_connection(("127.0.0.1", g.port)) for _ in range(3)]
    time.sleep(0.2)
    extra = socket.create_connection(("127.0.0.1", g.port))
    answer = read_all(extra)
    assert answer.startswith(b"HTTP/1.1 503") and b"connection_limit" in answer
    # Another address is not affected (all of 127/8 is loopback).
    assert fetch_from("127.0.0.2", g.port).startswith(b"HTTP/1.1 200")
    held[0].close()
    time.sleep(0.2)
    assert fetch(g.port).status == 200  # a place came free
    metrics = fetch(admin, target="/metrics", host="admin").body.decode()
    assert (
        'guard_connections_refused_total{listener="web",reason="max_connections_per_ip"} 1.0'
        in metrics
    )
    for s in held[1:]:
        s.close()
    extra.close()


def test_listener_cap(guard: GuardFactory, raw_backend) -> None:  # type: ignore[no-untyped-def]
    b = raw_backend(serve_keepalive())
    g = guard(servers=[b.address], http={"limits": {"max_connections": 4}})
    held = [socket.create_connection(("127.0.0.1", g.port)) for _ in range(4)]
    time.sleep(0.2)
    answer = read_all(socket.create_connection(("127.0.0.1", g.port)))
    assert answer.startswith(b"HTTP/1.1 503")
    for s in held:
        s.close()
    time.sleep(0.2)
    assert fetch(g.port).status == 200


def test_body_read_timeout(guard: GuardFactory, raw_backend) -> None:  # type: ignore[no-untyped-def]
    b = raw_backend(serve_keepalive())
    g = guard(servers=[b.address], http={"timeouts": {"body_read": "500ms"}})
    with Conn(g.port, timeout=5) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        t0 = time.monotonic()
        r = c.read_response()
        assert 0.4 < time.monotonic() - t0 < 3
        assert_guard_error(r, 408, "request_timeout")
        assert c.closed_within(2)
    # A body that keeps coming, slowly but within the timeout each time, is fine.
    with Conn(g.port, timeout=5) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n")
        for byte in b"abcd":
            time.sleep(0.3)
            c.send(bytes([byte]))
        assert c.read_response().status == 200


def fetch_from(source: str, port: int) -> bytes:
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    try:
        return read_all(s)
    finally:
        s.close()


def test_2000_slow_connections_do_not_starve_normal_clients(
    guard: GuardFactory,
    raw_backend,  # type: ignore[no-untyped-def]
) -> None:
    b = raw_backend(serve_keepalive())
    g = guard(
        servers=[b.address],
        http={
            "timeouts": {"request_header": "3s"},
            "limits": {"max_connections_per_ip": 5000},  # all 2,000 get in: the worst case
        },
    )
    slow: list[socket.socket] = []
    try:
        for i in range(2000):
            s = socket.create_connection(("127.0.0.1", g.port))
            s.setblocking(False)
            # Half a request head, and never the rest (slowloris).
            s.send(b"GET /%d HTTP/1.1\r\nHost: t\r\nX-Slow: " % i)
            slow.append(s)
        latencies = []
        for _ in range(50):
            t0 = time.monotonic()
            assert fetch_from("127.0.0.3", g.port).startswith(b"HTTP/1.1 200")
            latencies.append(time.monotonic() - t0)
        latencies.sort()
        assert latencies[len(latencies) // 2] < 0.1, latencies  # p50 unaffected
        # The request-header timeout clears them out (408 and close), every one.
        deadline = time.monotonic() + 15
        open_ones = slow
        while open_ones and time.monotonic() < deadline:
            time.sleep(0.5)
            still = []
            for s in open_ones:
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    still.append(s)
                    continue
                except ConnectionResetError:
                    continue
                if data:
                    still.append(s)  # the 408; the close follows
            open_ones = still
        assert not open_ones, f"{len(open_ones)} slow connections still open"
    finally:
        for s in slow:
            s.close()
