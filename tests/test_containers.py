"""Container services on the process driver: wake and hold, failures, sleep, per-key, scale.

Every test runs a real Guard (``python -m guard run``) whose instances are real child
processes (``guard.demo``), reached over real sockets; what a test asserts about starts and
stops it reads from Guard's lifecycle log (JSON lines) and from /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GuardFactory, GuardProc
from tests.helpers import REPO, Conn, assert_guard_error, fetch, free_port, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process driver")

DEMO = [sys.executable, "-m", "guard.demo"]
ENV = {"PYTHONPATH": str(REPO)}
HOST = "app.test"


def app(
    *,
    command: list[str] | None = None,
    ready: dict[str, Any] | None = None,
    per_key: bool = False,
    **scale: Any,
) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "container": {
            "driver": "process",
            "command": command or [*DEMO, "http"],
            "env": ENV,
            "ready": ready or {"http": "/healthz"},
            "stop_timeout": "2s",
        },
        "scale": {"min": 0, "max": 4, "sleep_after": "60s", **scale},
    }
    if per_key:
        svc["per_key"] = True
    return svc


def events(g: GuardProc, name: str, service: str | None = None) -> list[dict[str, Any]]:
    found = []
    for line in g.stderr.splitlines():
        start = line.find("{")
        if "guard.lifecycle" not in line or start < 0:
            continue
        record = json.loads(line[start:])
        if record["event"] == name and (service is None or record.get("service") == service):
            found.append(record)
    return found


def instance_pids(g: GuardProc) -> list[int]:
    """Live children of Guard (the process driver's instances)."""
    children = Path(f"/proc/{g.pid}/task/{g.pid}/children").read_text().split()
    return [int(p) for p in children]


# Bursts come from one address: lift the per-IP connection cap (256 by default) above them.
MANY_CONNECTIONS = {"limits": {"max_connections_per_ip": 5000}}


def start_app(guard: GuardFactory, **kw: Any) -> GuardProc:
    routes = kw.pop("routes", None) or [
        {"name": "app", "match": {"host": HOST}, "service": "app"},
        {"name": "sbx", "match": {"host": "{key}.sbx.test"}, "service": "sbx"},
    ]
    services = kw.pop("services", None) or {"app": app(**kw), "sbx": app(per_key=True)}
    return guard(
        routes=routes,
        services=services,
        http=MANY_CONNECTIONS,
        extra={"drivers": {"process": {}}},
    )


async def _get(port: int, host: str, target: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def burst(port: int, n: int, host: str = HOST, target: str = "/") -> list[tuple[int, dict, bytes]]:
    async def run() -> list[tuple[int, dict, bytes]]:
        return await asyncio.gather(*(_get(port, host, target) for _ in range(n)))

    return asyncio.run(run())


# ------------------------------------------------------------------------ wake and hold


def test_cold_request_is_held_then_answered(guard: GuardFactory) -> None:
    g = start_app(guard)
    assert instance_pids(g) == []  # min: 0 -> nothing runs before traffic
    t0 = time.monotonic()
    r = fetch(g.port, target="/hello", host=HOST, timeout=15)
    assert r.status == 200, r.body
    assert r.json()["path"] == "/hello"
    cold = r.header("x-guard-cold-start")
    assert cold is not None and 0 <= int(cold) <= (time.monotonic() - t0) * 1000 + 1
    warm = fetch(g.port, host=HOST)
    assert warm.status == 200 and warm.header("x-guard-cold-start") is None
    assert warm.header("x-demo-port") == r.header("x-demo-port")
    assert len(events(g, "start", "app")) == 1
    assert len(instance_pids(g)) == 1


def test_500_concurrent_cold_requests_start_one_instance(guard: GuardFactory) -> None:
    g = start_app(guard, target_concurrency=1000, queue=1000)
    results = burst(g.port, 500)
    assert [s for s, _, _ in results] == [200] * 500
    assert len({h["x-demo-port"] for _, h, _ in results}) == 1
    assert len(events(g, "start", "app")) == 1


def test_burst_starts_what_target_concurrency_demands(guard: GuardFactory) -> None:
    # 300 held requests / target 100 -> 3 instances, never one per request.
    g = start_app(guard, target_concurrency=100, max=10, queue=1000)
    results = burst(g.port, 300)
    assert [s for s, _, _ in results] == [200] * 300
    assert len(events(g, "start", "app")) == 3


def test_start_failure_is_503_fast_with_the_exit_reason(guard: GuardFactory) -> None:
    g = start_app(guard, command=[sys.executable, "-c", "raise SystemExit(3)"], wake_timeout="30s")
    t0 = time.monotonic()
    r = fetch(g.port, host=HOST, timeout=10)
    assert time.monotonic() - t0 < 5  # the exit is seen at once, not after wake_timeout
    assert_guard_error(r, 503, "instance_start_failed")
    assert "exited with code 3" in r.json()["message"]
    # Crash loop: the next wake within the backoff fails fast without another start.
    again = fetch(g.port, host=HOST, timeout=10)
    assert_guard_error(again, 503, "instance_start_failed")
    assert "next start in" in again.json()["message"]
    assert len(events(g, "start", "app")) == 1


def test_wake_timeout_is_504(guard: GuardFactory) -> None:
    # The process runs but never listens on $PORT.
    g = start_app(guard, command=["sleep", "30"], ready={"tcp": True}, wake_timeout="1s")
    t0 = time.monotonic()
    r = fetch(g.port, host=HOST, timeout=10)
    took = time.monotonic() - t0
    assert_guard_error(r, 504, "wake_timeout")
    assert 0.9 <= took < 4


def test_queue_full_is_503_and_disconnected_clients_leave_the_queue(guard: GuardFactory) -> None:
    # A slow start (ready 1.5 s after start) and room for 2 held requests.
    g = start_app(guard, ready={"delay": "1500ms"}, queue=2)
    a, b = Conn(g.port, timeout=10), Conn(g.port, timeout=10)
    a.request("GET", "/", HOST)
    b.request("GET", "/", HOST)
    time.sleep(0.2)
    r = fetch(g.port, host=HOST)
    assert_guard_error(r, 503, "queue_full")
    b.close()  # a held client that gives up frees its place
    time.sleep(0.2)
    c = Conn(g.port, timeout=10)
    c.request("GET", "/", HOST)
    assert a.read_response().status == 200
    assert c.read_response().status == 200
    a.close()
    c.close()


def test_sleep_after_idle_then_wake_again(guard: GuardFactory) -> None:
    g = start_app(guard, sleep_after="1s")
    r = fetch(g.port, host=HOST, timeout=15)
    assert r.status == 200
    pid_count = len(instance_pids(g))
    assert pid_count == 1
    wait_for(lambda: bool(events(g, "stopped", "app")), 8, "the idle instance to stop")
    assert events(g, "stopped", "app")[0]["reason"] == "idle"
    assert instance_pids(g) == []
    again = fetch(g.port, host=HOST, timeout=15)
    assert again.status == 200 and again.header("x-guard-cold-start") is not None
    assert len(events(g, "start", "app")) == 2


def test_no_sleep_while_a_slow_stream_is_open(guard: GuardFactory) -> None:
    g = start_app(guard, sleep_after="500ms")
    # One response streaming for 3 s: 6x sleep_after, with bytes flowing all along.
    r = fetch(g.port, target="/stream?chunks=10&interval=0.3", host=HOST, timeout=20)
    assert r.status == 200 and r.body.count(b"chunk") == 10
    assert events(g, "stopped", "app") == []
    wait_for(lambda: bool(events(g, "stopped", "app")), 8, "sleep once the stream ended")


def test_no_sleep_while_a_websocket_is_open(guard: GuardFactory) -> None:
    from wsproto.events import TextMessage

    from tests.test_websocket import WsClient

    g = start_app(guard, sleep_after="500ms")
    with WsClient(g.port, host=HOST, timeout=15) as ws:  # the upgrade itself wakes it
        time.sleep(2.5)  # 5x sleep_after, the socket silent all along
        assert events(g, "stopped", "app") == []
        ws.text("still here")
        event = ws.event()
        assert isinstance(event, TextMessage) and event.data == "still here"
    wait_for(lambda: bool(events(g, "stopped", "app")), 8, "sleep once the websocket closed")


def test_held_request_keeps_its_body(guard: GuardFactory) -> None:
    g = start_app(guard)
    body = b"x" * 100_000
    r = fetch(g.port, "POST", "/upload", host=HOST, body=body, timeout=15)
    assert r.status == 200
    doc = r.json()
    assert doc["body_length"] == len(body) and doc["method"] == "POST"


# ------------------------------------------------------------------------------ per key


def test_per_key_isolation(guard: GuardFactory) -> None:
    g = start_app(guard)
    ports = {}
    for key in ("alice", "bob"):
        r = fetch(g.port, host=f"{key}.sbx.test", timeout=15)
        assert r.status == 200
        ports[key] = r.header("x-demo-port")
    assert ports["alice"] != ports["bob"]
    for _ in range(5):
        for key in ("alice", "bob"):
            r = fetch(g.port, host=f"{key}.sbx.test")
            assert r.header("x-demo-port") == ports[key]
            assert r.header("x-guard-cold-start") is None
    starts = events(g, "start", "sbx")
    assert sorted(e["key"] for e in starts) == ["alice", "bob"]


def test_per_key_bad_key_and_instance_limit(guard: GuardFactory) -> None:
    routes = [{"name": "sbx", "match": {"host": "sbx.test"}, "service": "sbx"}]
    services = {"sbx": {**app(per_key=True, max=1), "key": "header:x-sandbox"}}
    g = guard(routes=routes, services=services, extra={"drivers": {"process": {}}})
    assert_guard_error(fetch(g.port, host="sbx.test"), 400, "invalid_key")
    bad = fetch(g.port, host="sbx.test", headers=[("x-sandbox", "../etc")])
    assert_guard_error(bad, 400, "invalid_key")
    ok = fetch(g.port, host="sbx.test", headers=[("x-sandbox", "one")], timeout=15)
    assert ok.status == 200
    full = fetch(g.port, host="sbx.test", headers=[("x-sandbox", "two")], timeout=15)
    assert_guard_error(full, 503, "instance_limit")


def test_per_key_instance_sleeps_and_restarts(guard: GuardFactory) -> None:
    routes = [{"name": "sbx", "match": {"host": "{key}.sbx.test"}, "service": "sbx"}]
    g = guard(
        routes=routes,
        services={"sbx": app(per_key=True, sleep_after="1s")},
        extra={"drivers": {"process": {}}},
    )
    assert fetch(g.port, host="k1.sbx.test", timeout=15).status == 200
    wait_for(lambda: bool(events(g, "stopped", "sbx")), 8, "the idle key to sleep")
    r = fetch(g.port, host="k1.sbx.test", timeout=15)
    assert r.status == 200 and r.header("x-guard-cold-start") is not None


# ------------------------------------------------------------------ crashes and scaling


def test_crashed_instance_is_replaced(guard: GuardFactory) -> None:
    g = start_app(guard)
    assert fetch(g.port, host=HOST, timeout=15).status == 200
    (pid,) = instance_pids(g)
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: bool(events(g, "crash", "app")), 5, "the crash to be seen")
    # Crashed within CRASH_WINDOW of ready: one failed start, a 1 s backoff, then a new one.
    deadline = time.monotonic() + 10
    while True:
        r = fetch(g.port, host=HOST, timeout=15)
        if r.status == 200 or time.monotonic() > deadline:
            break
        assert_guard_error(r, 503, "instance_start_failed")
        time.sleep(0.2)
    assert r.status == 200
    assert len(events(g, "start", "app")) == 2


def test_scale_up_under_load_and_back_down_without_losing_requests(guard: GuardFactory) -> None:
    g = start_app(
        guard,
        target_concurrency=2,
        max=4,
        stable_window="2s",
        panic_window="1s",
        scale_down_delay="0s",
    )
    assert fetch(g.port, host=HOST, timeout=15).status == 200

    async def load(seconds: float, concurrency: int) -> list[int]:
        statuses: list[int] = []
        end = time.monotonic() + seconds

        async def client() -> None:
            while time.monotonic() < end:
                status, _, _ = await _get(g.port, HOST, "/slow?delay=0.1")
                statuses.append(status)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        return statuses

    statuses = asyncio.run(load(4, 8))
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    ready = events(g, "ready", "app")
    assert len(ready) >= 3, ready  # 8 concurrent / target 2 -> 4 (max)
    # Load drops to one client: the pool drains back, every response still a 200.
    statuses = asyncio.run(load(5, 1))
    assert set(statuses) == {200}
    drained = [e for e in events(g, "stopped", "app") if e["reason"] == "scale down"]
    assert drained, g.stderr[-3000:]


# ----------------------------------------------------------------------------- tcp, udp


def test_tcp_connection_and_udp_datagram_wake_their_services(guard: GuardFactory) -> None:
    tcp_port, udp_port = free_port(), free_port()
    routes = [
        {"name": "t", "listener": "t", "service": "echo-tcp"},
        {"name": "u", "listener": "u", "service": "echo-udp"},
    ]
    services = {
        "echo-tcp": app(command=[*DEMO, "tcp"], ready={"tcp": True}),
        "echo-udp": app(command=[*DEMO, "udp"], ready={"udp": "ping"}),
    }
    listeners = {
        "t": {"protocol": "tcp", "address": f"127.0.0.1:{tcp_port}"},
        "u": {"protocol": "udp", "address": f"127.0.0.1:{udp_port}"},
    }
    g = guard(
        routes=routes,
        services=services,
        extra={"drivers": {"process": {}}, "listeners": listeners},
    )
    with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as s:
        s.sendall(b"sent before the instance existed\n")
        got = b""
        while not got.endswith(b"\n"):
            got += s.recv(100)
        assert got == b"sent before the instance existed\n"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(10)
        u.sendto(b"first datagram", ("127.0.0.1", udp_port))
        data, _ = u.recvfrom(100)
        assert data == b"first datagram"
    assert len(events(g, "start", "echo-tcp")) == 1
    assert len(events(g, "start", "echo-udp")) == 1


# ---------------------------------------------------------------------------- lifecycle


def test_sigkilled_guard_leaves_no_orphans(guard: GuardFactory) -> None:
    g = start_app(guard, target_concurrency=1)
    burst(g.port, 3)
    assert fetch(g.port, host="a.sbx.test", timeout=15).status == 200
    pids = instance_pids(g)
    assert len(pids) >= 2
    g.proc.kill()
    g.proc.wait(5)

    def gone() -> bool:
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.split(")")[1].split()[0] != "Z":
                return False
        return True

    wait_for(gone, 5, "instances to die with Guard")


def test_sigterm_stops_instances(guard: GuardFactory) -> None:
    g = start_app(guard)
    assert fetch(g.port, host=HOST, timeout=15).status == 200
    (pid,) = instance_pids(g)
    g.proc.send_signal(signal.SIGTERM)
    assert g.proc.wait(10) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert events(g, "stopped", "app")[0]["reason"] == "shutdown"


# ------------------------------------------------------------------------- workers > 1


def test_two_workers_share_one_control_plane(guard: GuardFactory) -> None:
    """Each worker holds its own requests, but one control plane starts one instance and
    both workers route every key to the same instance."""
    g = guard(
        routes=[
            {"name": "app", "match": {"host": HOST}, "service": "app"},
            {"name": "sbx", "match": {"host": "{key}.sbx.test"}, "service": "sbx"},
        ],
        services={"app": app(target_concurrency=1000), "sbx": app(per_key=True)},
        extra={"workers": 2, "drivers": {"process": {}}},
    )
    results = burst(g.port, 200)
    assert [s for s, _, _ in results] == [200] * 200
    assert len({h["x-demo-port"] for _, h, _ in results}) == 1
    assert len(events(g, "start", "app")) == 1
    # New connections spread over both workers (SO_REUSEPORT): a key always lands on its
    # one instance, whichever worker took the connection.
    ports = {
        key: {h["x-demo-port"] for _, h, _ in burst(g.port, 20, host=f"{key}.sbx.test")}
        for key in ("k1", "k2")
    }
    assert all(len(p) == 1 for p in ports.values()) and ports["k1"] != ports["k2"]
    assert sorted(e["key"] for e in events(g, "start", "sbx")) == ["k1", "k2"]
