"""Active health checks: the pure state machine, then a real Guard with a backend that dies
and comes back."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from guard.config.model import HealthConfig
from guard.control.health import ServerHealth
from tests.conftest import GuardFactory
from tests.helpers import fetch, free_port, wait_for


def test_fall_and_rise() -> None:
    cfg = HealthConfig(http="/h", unhealthy_after=3, healthy_after=2)
    s = ServerHealth("a:1", "a", 1)
    assert s.up
    assert [s.record(False, cfg) for _ in range(3)] == [False, False, True]
    assert not s.up
    assert s.record(True, cfg) is False and not s.up
    assert s.record(False, cfg) is False  # a failure resets the run of successes
    assert [s.record(True, cfg) for _ in range(2)] == [False, True]
    assert s.up and s.checks == {"ok": 3, "fail": 4}


class Backend:
    """A threaded HTTP server on a fixed port that can be stopped and started again."""

    def __init__(self, port: int, name: str) -> None:
        self.port = port
        self.name = name
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        name = self.name.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-length", str(len(name)))
                self.end_headers()
                self.wfile.write(name)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def backends() -> list[Backend]:
    made = [Backend(free_port(), "a"), Backend(free_port(), "b")]
    for b in made:
        b.start()
    yield made
    for b in made:
        b.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_down_server_is_taken_out_and_comes_back(
    guard: GuardFactory, backends: list[Backend], workers: int
) -> None:
    a, b = backends
    admin = free_port()
    g = guard(
        services={
            "app": {
                "servers": [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"],
                "health": {
                    "http": "/healthz",
                    "interval": "100ms",
                    "timeout": "200ms",
                    "unhealthy_after": 2,
                    "healthy_after": 2,
                },
            }
        },
        extra={"admin": {"address": f"127.0.0.1:{admin}"}, "workers": workers},
    )
    wait_for(lambda: {fetch(g.port).body for _ in range(10)} == {b"a", b"b"}, 5, "both serving")
    b.stop()

    def only_a() -> bool:
        return all(fetch(g.port).body == b"a" for _ in range(6))

    wait_for(only_a, 5, "b to be taken out")
    # Taken out: every request now succeeds on a, none tries b.
    assert {fetch(g.port).status for _ in range(20)} == {200}
    metrics = fetch(admin, target="/metrics", host="admin").body.decode()
    assert f'guard_backend_up{{backend="127.0.0.1:{b.port}",service="app"}} 0.0' in metrics
    assert f'guard_backend_up{{backend="127.0.0.1:{a.port}",service="app"}} 1.0' in metrics
    b.start()
    wait_for(lambda: b"b" in {fetch(g.port).body for _ in range(6)}, 5, "b to come back")
