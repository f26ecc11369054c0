"""Prometheus metrics on the admin address, end to end: real Guard processes (workers: 1
and 2) in front of a ``guard.demo`` backend; counters must move exactly as requests flow."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO, Conn, Demo, assert_guard_error, free_port, stop_process, wait_for
from prometheus_client.parser import text_string_to_metric_families

SIZE = 1500  # bytes of each /bytes response body


@dataclass
class Running:
    proc: subprocess.Popen
    port: int
    admin: int
    dir: Path

    @property
    def log(self) -> str:
        return (self.dir / "guard.log").read_text(errors="replace")


def write_files(d: Path, port: int, admin: str, backend: str, workers: int) -> Path:
    (d / "routes").mkdir(parents=True, exist_ok=True)
    cfg = {
        "workers": workers,
        "routes": "routes",
        "listeners": {"web": {"protocol": "http", "address": f"127.0.0.1:{port}"}},
        "admin": {"address": admin},
        "http": {"timeouts": {"drain": "2s"}},
    }
    (d / "guard.yaml").write_text(json.dumps(cfg))
    routes = {
        "routes": [
            {
                "name": "app",
                "listener": "web",
                "match": {"path_prefix": "/bytes"},
                "service": "app",
            },
            {
                "name": "echo",
                "listener": "web",
                "match": {"path_prefix": "/echo"},
                "service": "app",
            },
            {
                "name": "slow",
                "listener": "web",
                "match": {"path_prefix": "/slow"},
                "service": "app",
            },
        ],
        "services": {"app": {"servers": [backend]}},
    }
    (d / "routes" / "routes.yaml").write_text(json.dumps(routes))
    return d / "guard.yaml"


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def run_guard(d: Path, backend: Demo, workers: int) -> Iterator[Running]:
    port, admin = free_port(), free_port()
    cfg = write_files(d, port, f"127.0.0.1:{admin}", backend.address, workers)
    with (d / "guard.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "guard", "run", "--config", str(cfg)],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    g = Running(proc, port, admin, d)
    try:
        wait_for(
            lambda: proc.poll() is not None or (_listening(port) and _listening(admin)),
            15,
            "guard and its admin address",
        )
        assert proc.poll() is None, g.log
        yield g
    finally:
        stop_process(proc)


def admin_get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class Scrape:
    def __init__(self, port: int) -> None:
        status, headers, body = admin_get(port, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=")
        self.families = {f.name: f for f in text_string_to_metric_families(body.decode())}

    def samples(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        out = []
        for fam in self.families.values():
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    out.append((s.labels, s.value))
        return out

    def value(self, name: str, **labels: str) -> float:
        return sum(v for _, v in self.samples(name, **labels))


def wait_value(
    port: int, name: str, expected: float, timeout: float = 6.0, **labels: str
) -> Scrape:
    """Scrape until ``name{labels}`` sums to ``expected`` (workers report once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        scrape = Scrape(port)
        got = scrape.value(name, **labels)
        if got == expected:
            return scrape
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} = {got}, expected {expected}")
        time.sleep(0.1)


def get_bytes(conn: Conn, n: int = SIZE) -> None:
    conn.request("GET", f"/bytes/{n}")
    resp = conn.read_response()
    assert resp.status == 200 and len(resp.body) == n


def check_histogram(scrape: Scrape, name: str, count: int, **labels: str) -> None:
    buckets = scrape.samples(f"{name}_bucket", **labels)
    counts = [v for _, v in buckets]
    assert [b["le"] for b, _ in buckets][-1] == "+Inf"
    assert counts == sorted(counts), f"{name} buckets not cumulative: {counts}"
    assert counts[-1] == count == scrape.value(f"{name}_count", **labels)
    assert scrape.value(f"{name}_sum", **labels) > 0


# ------------------------------------------------------------------------ workers: 1


def test_counters_move_exactly_with_one_worker(tmp_path: Path, demos: list[Demo]) -> None:
    n = 20
    route = {"listener": "web", "route": "app", "service": "app"}
    with run_guard(tmp_path, demos[0], workers=1) as g:
        with Conn(g.port) as c:  # one keep-alive connection: the upstream one is reused
            for _ in range(n):
                get_bytes(c)
            c.request("POST", "/echo", body=b"x" * 777)
            assert c.read_response().status == 200
            c.request("GET", "/nowhere")
            assert_guard_error(c.read_response(), 404, "route_not_found")

        s = Scrape(g.admin)
        assert s.value("guard_requests_total", **route, code="2xx", method="GET") == n
        assert s.value("guard_requests_total", route="app") == n
        assert s.value("guard_response_bytes_total", **route) == n * SIZE
        assert s.value("guard_request_bytes_total", route="echo") == 777
        assert s.value("guard_requests_total", route="echo", code="2xx", method="POST") == 1
        assert (
            s.value(
                "guard_requests_total",
                listener="web",
                route="",
                service="",
                code="4xx",
                method="GET",
            )
            == 1
        )
        assert s.value("guard_errors_total", listener="web", route="", code="route_not_found") == 1
        assert s.value("guard_errors_total") == 1
        check_histogram(s, "guard_request_duration_seconds", n, **route)
        check_histogram(s, "guard_overhead_duration_seconds", n, **route)
        # The overhead is a part of the whole duration.
        assert s.value("guard_overhead_duration_seconds_sum", **route) <= s.value(
            "guard_request_duration_seconds_sum", **route
        )
        backend = {"service": "app", "backend": demos[0].address}
        connects = s.value("guard_upstream_connections_total", **backend)
        reused = s.value("guard_upstream_reused_total", **backend)
        assert connects >= 1 and reused > 0 and connects + reused == n + 1
        assert s.value("guard_backend_in_flight", **backend) == 0
        assert s.value("guard_worker_requests_total", worker="0") == n + 2

        # Open connections: three idle clients, nothing else (the scrape is not one).
        idle = [socket.create_connection(("127.0.0.1", g.port)) for _ in range(3)]
        try:
            wait_value(g.admin, "guard_open_connections", 3, listener="web", protocol="http")
        finally:
            for sock in idle:
                sock.close()
        wait_value(g.admin, "guard_open_connections", 0, listener="web", protocol="http")

        # A reload rebuilds the pools: their counters carry over, then keep counting.
        g.proc.send_signal(signal.SIGHUP)
        wait_value(g.admin, "guard_config_reloads_total", 1, result="success")
        after = Scrape(g.admin)
        assert after.value("guard_upstream_connections_total", **backend) == connects
        assert after.value("guard_upstream_reused_total", **backend) == reused
        with Conn(g.port) as c:
            for _ in range(3):
                get_bytes(c)
        more = Scrape(g.admin)
        assert more.value("guard_requests_total", **route) == n + 3
        assert (
            more.value("guard_upstream_connections_total", **backend)
            + more.value("guard_upstream_reused_total", **backend)
        ) == n + 4
        (tmp_path / "routes" / "routes.yaml").write_text("routes: [{name: broken}]\n")
        g.proc.send_signal(signal.SIGHUP)
        wait_value(g.admin, "guard_config_reloads_total", 1, result="failure")


def test_admin_endpoints(tmp_path: Path, demos: list[Demo]) -> None:
    with run_guard(tmp_path, demos[0], workers=1) as g:
        assert admin_get(g.admin, "/healthz")[::2] == (200, b'{"status": "ok"}')
        status, headers, body = admin_get(g.admin, "/v1/no-such-thing")
        assert status == 404 and headers["x-guard-error"] == "not_found"
        # /v1/containers exists, and says what it needs (containers.listener).
        status, headers, _ = admin_get(g.admin, "/v1/containers")
        assert status == 409 and headers["x-guard-error"] == "containers_not_configured"
        assert json.loads(body)["error"] == "not_found"
        status, headers, _ = admin_get(g.admin, "/metrics", "POST")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        status, _, body = admin_get(g.admin, "/metrics", "HEAD")
        assert status == 200 and body == b""
        # Keep-alive: several requests on one connection.
        conn = http.client.HTTPConnection("127.0.0.1", g.admin, timeout=5)
        for _ in range(3):
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() == b'{"status": "ok"}'
        conn.close()
        # Draining: /healthz says so while an in-flight request finishes.
        with Conn(g.port) as slow:
            slow.request("GET", "/slow?delay=1.5")
            wait_value(g.admin, "guard_backend_in_flight", 1, service="app")
            g.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: admin_get(g.admin, "/healthz")[0] == 503, 1.2, "503 draining")
            assert admin_get(g.admin, "/healthz")[2] == b'{"status": "draining"}'
            assert slow.read_response().status == 200


@pytest.mark.parametrize(
    ("admin", "message"),
    [
        ({"address": "0.0.0.0:{port}"}, "is not a loopback address"),
        (
            {
                "address": "127.0.0.1:{port}",
                "tokens": [{"token_env": "GUARD_TEST_UNSET_TOKEN", "tenant": "*"}],
            },
            "admin.tokens[0].token_env: environment variable GUARD_TEST_UNSET_TOKEN is not set",
        ),
    ],
)
def test_admin_refusals(tmp_path: Path, admin: dict, message: str) -> None:
    cfg = write_files(tmp_path, free_port(), "127.0.0.1:1", "127.0.0.1:9", 1)
    doc = json.loads(cfg.read_text())
    doc["admin"] = {**admin, "address": admin["address"].format(port=free_port())}
    cfg.write_text(json.dumps(doc))
    out = subprocess.run(
        [sys.executable, "-m", "guard", "run", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr


# ------------------------------------------------------------------------ workers: 2


def _worker_pids(supervisor: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_one_scrape_sums_all_workers(tmp_path: Path, demos: list[Demo]) -> None:
    route = {"listener": "web", "route": "app", "service": "app"}
    with run_guard(tmp_path, demos[0], workers=2) as g:
        wait_for(lambda: len(_worker_pids(g.proc.pid)) == 2, 10, "two workers")
        # One connection per request, so SO_REUSEPORT spreads them; a worker may still be
        # binding when the first ones arrive, so send in rounds until both served some.
        n = 0
        per_worker: dict[str, float] = {}
        for _ in range(25):
            for _ in range(40):
                with Conn(g.port) as c:
                    get_bytes(c)
            n += 40
            s = wait_value(g.admin, "guard_requests_total", n, **route)
            per_worker = {lab["worker"]: v for lab, v in s.samples("guard_worker_requests_total")}
            if set(per_worker) == {"0", "1"} and all(per_worker.values()):
                break
        assert set(per_worker) == {"0", "1"} and all(per_worker.values()), per_worker
        assert sum(per_worker.values()) == n
        assert s.value("guard_response_bytes_total", **route) == n * SIZE
        check_histogram(s, "guard_request_duration_seconds", n, **route)
        check_histogram(s, "guard_overhead_duration_seconds", n, **route)
        assert admin_get(g.admin, "/healthz")[0] == 200

        # SIGHUP reaches every worker; each counts its own reload.
        g.proc.send_signal(signal.SIGHUP)
        wait_value(g.admin, "guard_config_reloads_total", 2, result="success")

        # A worker killed outright: its counts stay in the sum, its replacement adds on.
        victim = _worker_pids(g.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: len(_worker_pids(g.proc.pid)) == 2 and victim not in _worker_pids(g.proc.pid),
            10,
            "a restarted worker",
        )
        assert Scrape(g.admin).value("guard_requests_total", **route) == n
        wait_for(lambda: _listening(g.port), 5, "the listener")
        for _ in range(4):
            with Conn(g.port) as c:
                get_bytes(c)
        wait_value(g.admin, "guard_requests_total", n + 4, **route)


# ------------------------------------------------------------------------ tcp and udp


def test_tcp_and_udp_counters(tmp_path: Path) -> None:
    from l4_procs import start_demo, start_guard

    tcp_demo, tcp_backend = start_demo("tcp")
    udp_demo, udp_backend = start_demo("udp")
    tcp_port, udp_port, admin = free_port(), free_port(), free_port()
    guard = None
    try:
        guard = start_guard(
            tmp_path,
            f"""workers: 1
routes: routes
listeners:
  t: {{protocol: tcp, address: "127.0.0.1:{tcp_port}"}}
  u: {{protocol: udp, address: "127.0.0.1:{udp_port}"}}
admin: {{address: "127.0.0.1:{admin}"}}
""",
            f"""routes:
  - {{name: tr, listener: t, service: techo}}
  - {{name: ur, listener: u, service: uecho}}
services:
  techo: {{servers: ["127.0.0.1:{tcp_backend}"]}}
  uecho: {{servers: ["127.0.0.1:{udp_backend}"]}}
""",
        )
        payload = b"t" * 1000
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as s:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += s.recv(65536)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            for _ in range(3):
                u.sendto(b"u" * 100, ("127.0.0.1", udp_port))
                assert u.recvfrom(65536)[0] == b"u" * 100
            scrape = wait_value(admin, "guard_tcp_sent_bytes_total", 1000, listener="t", route="tr")
            wait_value(admin, "guard_open_connections", 0, listener="t", protocol="tcp")
        assert scrape.value("guard_tcp_accepted_total", listener="t") == 1
        assert scrape.value("guard_tcp_connections_total", listener="t", route="tr") == 1
        assert scrape.value("guard_tcp_received_bytes_total", listener="t", route="tr") == 1000
        assert scrape.value("guard_tcp_errors_total", listener="t") == 0
        assert scrape.value("guard_udp_sessions_total", listener="u") == 1
        assert scrape.value("guard_udp_received_bytes_total", listener="u") == 300
        assert scrape.value("guard_udp_sent_bytes_total", listener="u") == 300
        assert scrape.value("guard_udp_received_packets_total", listener="u") == 3
        assert scrape.value("guard_udp_sent_packets_total", listener="u") == 3
        assert scrape.value("guard_open_connections", listener="u", protocol="udp") == 1
        assert scrape.value("guard_backend_in_flight", service="uecho") == 1  # the session
    finally:
        if guard is not None:
            guard.stop()
        tcp_demo.stop()
        udp_demo.stop()
