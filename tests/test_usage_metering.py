"""Usage metering end to end: a real Guard writes its ledger; the test reads it back.

Traffic must match, to the byte, what the clients sent and received through Guard; an
instance's measured CPU must match the instance's own account of its CPU time (within 5 %).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from guard.usage import UsageRow
from guard.usage.ledger import UsageLedger
from tests.conftest import GuardFactory
from tests.helpers import REPO, Resp, assert_guard_error, fetch, free_port, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process driver")

# An HTTP server on $PORT whose /burn spins the CPU for a while and answers with the CPU
# time the process has used since it started (its own /proc figure: utime + stime).
BURNER = textwrap.dedent(
    """
    import os, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/burn"):
                end = time.process_time() + 0.4
                while time.process_time() < end:
                    pass
            t = os.times()
            body = repr(t.user + t.system).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
    """
)


# A pooled guard.demo service on the process driver.
DEMO = {
    "container": {
        "driver": "process",
        "command": [sys.executable, "-m", "guard.demo", "http"],
        "env": {"PYTHONPATH": str(REPO)},
        "ready": {"http": "/healthz"},
    },
}


def by_service(path: Path) -> list[UsageRow]:
    """The ledger's rows per service, read as `guard usage` reads them."""
    ledger = UsageLedger(path)
    ledger.open()
    try:
        return ledger.query(None, None, "service")
    finally:
        ledger.close()


def test_ledger_matches_traffic_and_cpu(guard: GuardFactory, tmp_path: Path) -> None:
    ledger_path = tmp_path / "usage.sqlite"
    env = {"PYTHONPATH": str(REPO)}
    services = {
        "demo": {
            "container": {
                "driver": "process",
                "command": [sys.executable, "-m", "guard.demo", "http"],
                "env": env,
                "ready": {"http": "/healthz"},
            },
            "scale": {"min": 0, "max": 1},
        },
        "burn": {
            "container": {
                "driver": "process",
                "command": [sys.executable, "-c", BURNER],
                "ready": {"tcp": True},
                "resources": {"cpu": 0.5, "memory": "256MiB"},
            },
            "scale": {"min": 0, "max": 1},
        },
    }
    routes = [
        {"name": "demo", "match": {"host": "demo.test"}, "service": "demo"},
        {"name": "burn", "match": {"host": "burn.test"}, "service": "burn"},
    ]
    g = guard(
        routes=routes,
        services=services,
        extra={"drivers": {"process": {}}, "usage": {"ledger": str(ledger_path), "flush": "200ms"}},
    )
    received = sent = 0
    for size in (1000, 25_000, 1):
        r = fetch(g.port, target=f"/bytes/{size}", host="demo.test", timeout=15)
        assert r.status == 200 and len(r.body) == size
        received += len(r.body)
    body = b"u" * 12_345
    r = fetch(g.port, "POST", "/upload", host="demo.test", body=body, timeout=15)
    assert r.status == 200
    sent += len(body)
    received += len(r.body)
    burned = 0.0
    for _ in range(2):
        r = fetch(g.port, target="/burn", host="burn.test", timeout=15)
        assert r.status == 200
        burned = float(r.body)  # cumulative: the last answer is the total
    assert burned >= 0.8
    g.stop()  # SIGTERM: drain, stop instances (their last slices), final flush
    assert g.proc.returncode == 0, g.stderr[-2000:]

    rows = {row.key: row for row in by_service(ledger_path)}
    demo, burn = rows["demo"], rows["burn"]
    assert demo.requests == 4
    assert demo.bytes_out == received  # response body bytes, counted as they passed
    assert demo.bytes_in == sent
    assert burn.instances == 1
    # The burner's own CPU time vs the driver's /proc reading, summed over slices.
    assert burn.measured_core_ms == pytest.approx(burned * 1000, rel=0.05)
    # Reserved: 0.5 cores for the instance's whole wall time.
    assert burn.reserved_core_ms == pytest.approx(burn.wall_seconds * 500, rel=1e-6)
    assert burn.measured_gb_s > 0


def test_ledger_keeps_flushed_usage_when_guard_is_sigkilled(
    guard: GuardFactory, tmp_path: Path
) -> None:
    ledger_path = tmp_path / "usage.sqlite"
    g = guard(
        servers=None,
        services={"app": DEMO},
        extra={"drivers": {"process": {}}, "usage": {"ledger": str(ledger_path), "flush": "100ms"}},
    )
    for _ in range(20):
        assert fetch(g.port, target="/bytes/100", timeout=15).status == 200

    def flushed() -> float:
        rows = by_service(ledger_path)
        return rows[0].requests if rows else 0

    wait_for(lambda: flushed() == 20, 5, "the 20 requests to be flushed")
    g.proc.kill()
    g.proc.wait(5)
    assert flushed() == 20  # what was flushed stays, counted once


def test_two_workers_send_their_traffic_to_the_one_ledger(
    guard: GuardFactory, tmp_path: Path
) -> None:
    ledger_path = tmp_path / "usage.sqlite"
    g = guard(
        services={"app": DEMO},
        extra={
            "workers": 2,
            "drivers": {"process": {}},
            "usage": {"ledger": str(ledger_path), "flush": "100ms"},
        },
    )
    for _ in range(30):  # new connections: the kernel spreads them over both workers
        assert fetch(g.port, target="/bytes/1000", timeout=15).status == 200
    g.stop()
    assert g.proc.returncode == 0, g.stderr[-2000:]
    (row,) = by_service(ledger_path)
    assert row.requests == 30 and row.bytes_out == 30_000
    assert row.instances == 1 and row.measured_core_ms > 0


def test_admin_usage_endpoint(guard: GuardFactory, tmp_path: Path) -> None:
    admin = free_port()
    g = guard(
        servers=None,
        services={"app": DEMO},
        extra={
            "drivers": {"process": {}},
            "usage": {"ledger": str(tmp_path / "u.sqlite"), "flush": "100ms"},
            "admin": {"address": f"127.0.0.1:{admin}"},
        },
    )
    for _ in range(5):
        assert fetch(g.port, target="/bytes/200", timeout=15).status == 200

    def usage(query: str) -> Resp:
        return fetch(admin, target=f"/v1/usage{query}", host="admin")

    wait_for(
        lambda: (
            usage("?by=service").json()["rows"][:1] != []
            and usage("?by=service").json()["rows"][0]["requests"] == 5
        ),
        5,
        "the requests to reach the ledger",
    )
    doc = usage("?by=service&since=1h&price=rivet").json()
    (row,) = doc["rows"]
    assert row["service"] == "app" and row["bytes_out"] == 1000
    assert doc["rate_card"] == "rivet" and row["cost_total"] > 0
    assert any("core-ms" in line for line in doc["rates"])
    csv = usage("?by=service&format=csv")
    assert csv.header("content-type").startswith("text/csv")
    assert csv.body.splitlines()[0].startswith(b"service,")
    assert_guard_error(usage("?by=route"), 400, "invalid_parameter")
    assert_guard_error(usage("?since=yesterday-ish"), 400, "invalid_parameter")
    # Rate card files are for the CLI: a request must not make Guard open a path.
    assert_guard_error(usage("?price=/etc/passwd"), 400, "invalid_parameter")
    assert_guard_error(usage("?color=blue"), 400, "invalid_parameter")
    # The meter's readings also reach /metrics.
    metrics = fetch(admin, target="/metrics", host="admin").body.decode()
    cpu = [ln for ln in metrics.splitlines() if ln.startswith("guard_instance_cpu_seconds_total{")]
    mem = [ln for ln in metrics.splitlines() if ln.startswith("guard_instance_memory_bytes{")]
    assert cpu and float(cpu[0].split()[-1]) > 0
    assert mem and float(mem[0].split()[-1]) > 0
