"""Fixtures for the proxy integration tests: Guard as a real child process, demo backends,
raw scripted backends, and the ``parser`` param every proxy test runs under."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import (
    REPO,
    Demo,
    RawBackend,
    free_port,
    rss_kib,
    run_demo,
    stop_process,
)

PARSERS = ["httptools", "h11"]


@pytest.fixture(scope="session", params=PARSERS)
def parser(request: pytest.FixtureRequest) -> str:
    """The HTTP parser Guard runs with (``http.parser``). Session-scoped so shared Guards
    can be keyed by it; pytest groups the tests of one parser together."""
    return request.param


@dataclass
class GuardProc:
    proc: subprocess.Popen
    port: int
    dir: Path
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@contextlib.contextmanager
def run_guard(
    directory: Path,
    parser: str,
    routes: list[dict[str, Any]],
    services: dict[str, dict[str, Any]],
    http: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Iterator[GuardProc]:
    """Write guard.yaml + routes/, start ``python -m guard run``, wait for the port.

    The files are JSON, which is YAML. ``http`` is merged over the defaults used here
    (a short drain so teardown is quick); ``extra`` over the whole guard.yaml (more
    listeners, drivers, usage)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "routes").mkdir(exist_ok=True)
    port = free_port()
    http_cfg = _merge({"parser": parser, "timeouts": {"drain": "2s"}}, http or {})
    cfg = {
        "workers": 1,
        "routes": "routes",
        "listeners": {"web": {"protocol": "http", "address": f"127.0.0.1:{port}"}},
        "http": http_cfg,
    }
    cfg = _merge(cfg, extra or {})
    (directory / "guard.yaml").write_text(json.dumps(cfg, indent=1))
    routes = [{"listener": "web", **r} for r in routes]
    (directory / "routes" / "routes.yaml").write_text(
        json.dumps({"routes": routes, "services": services}, indent=1)
    )
    stderr_path = directory / "guard.stderr"
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "guard", "run", "--config", str(directory / "guard.yaml")],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=err,
            stderr=subprocess.STDOUT,
        )
    g = GuardProc(proc, port, directory, stderr_path)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"guard exited with {proc.returncode}:\n{g.stderr}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"guard did not listen on {port}:\n{g.stderr}")
            time.sleep(0.02)
        yield g
    finally:
        g.stop()


GuardFactory = Callable[..., GuardProc]


@pytest.fixture
def guard(tmp_path: Path, parser: str) -> Iterator[GuardFactory]:
    """``guard(routes=[...], services={...}, http={...})`` -> a running GuardProc.

    Defaults: one catch-all route ``/`` to service ``app``. Every Guard started is stopped
    (SIGTERM, then SIGKILL) when the test ends."""
    stack = contextlib.ExitStack()
    n = [0]

    def start(
        routes: list[dict[str, Any]] | None = None,
        services: dict[str, dict[str, Any]] | None = None,
        http: dict[str, Any] | None = None,
        servers: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> GuardProc:
        if routes is None:
            routes = [{"name": "app", "match": {"path_prefix": "/"}, "service": "app"}]
        if services is None:
            assert servers is not None, "give services= or servers="
            services = {"app": {"servers": servers}}
        n[0] += 1
        return stack.enter_context(
            run_guard(tmp_path / f"guard{n[0]}", parser, routes, services, http, extra)
        )

    with stack:
        yield start


@pytest.fixture
def raw_backend() -> Iterator[Callable[..., RawBackend]]:
    """``raw_backend(handler, record=True)`` -> a started RawBackend, closed at the end."""
    made: list[RawBackend] = []

    def make(handler: Callable[..., None], *, record: bool = True) -> RawBackend:
        b = RawBackend(handler, record=record)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()
    for b in made:
        if b.errors:
            raise b.errors[0]


@pytest.fixture(scope="session")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Demo]]:
    """Three ``guard.demo http`` backends shared by the whole session."""
    d = tmp_path_factory.mktemp("demos")
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(run_demo(d)) for _ in range(3)]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    """A demo backend of the test's own (for tests that kill it)."""
    with run_demo(tmp_path) as d:
        yield d


# Host names of the shared Guard (std_guard), each a feature under test.
def std_routes(demos: list[Demo]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    a, b, c = (d.address for d in demos)
    routes = [
        {"name": "exact", "match": {"host": "exact.test"}, "service": "a"},
        {"name": "wild", "match": {"host": "*.wild.test"}, "service": "b"},
        {"name": "cap", "match": {"host": "{key}.cap.test"}, "service": "c"},
        {"name": "p-root", "match": {"host": "paths.test", "path_prefix": "/"}, "service": "a"},
        {"name": "p-api", "match": {"host": "paths.test", "path_prefix": "/api"}, "service": "b"},
        {"name": "p-v2", "match": {"host": "paths.test", "path_prefix": "/api/v2"}, "service": "c"},
        {"name": "p-exact", "match": {"host": "paths.test", "path": "/exact"}, "service": "c"},
        {"name": "m-any", "match": {"host": "methods.test"}, "service": "a"},
        {
            "name": "m-post",
            "match": {"host": "methods.test", "methods": ["POST", "PUT"]},
            "service": "b",
        },
        {"name": "h-any", "match": {"host": "headers.test"}, "service": "a"},
        {
            "name": "h-canary",
            "match": {"host": "headers.test", "headers": {"x-canary": "1"}},
            "service": "b",
        },
        {"name": "prio-low", "match": {"host": "prio.test"}, "service": "a", "priority": 0},
        {"name": "prio-high", "match": {"host": "prio.test"}, "service": "b", "priority": 5},
        {
            "name": "strip",
            "match": {"host": "strip.test", "path_prefix": "/api/v1"},
            "service": "a",
            "strip_prefix": True,
        },
        {"name": "rr", "match": {"host": "rr.test"}, "service": "rr"},
        {"name": "hash-h", "match": {"host": "hash.test"}, "service": "hash-h"},
        {"name": "hash-c", "match": {"host": "cookie.test"}, "service": "hash-c"},
        {"name": "p2c", "match": {"host": "p2c.test"}, "service": "p2c"},
        {"name": "lr", "match": {"host": "lr.test"}, "service": "lr"},
        {"name": "demo", "match": {"host": "demo.test"}, "service": "a"},
    ]
    three = [a, b, c]
    services = {
        "a": {"servers": [a]},
        "b": {"servers": [b]},
        "c": {"servers": [c]},
        "rr": {"servers": three, "balance": "round_robin"},
        "hash-h": {"servers": three, "balance": "hash", "hash_on": "header:x-user-id"},
        "hash-c": {"servers": three, "balance": "hash", "hash_on": "cookie:sid"},
        "p2c": {"servers": three, "balance": "p2c"},
        "lr": {"servers": three, "balance": "least_request"},
    }
    return routes, services


@pytest.fixture(scope="session")
def std_guard(
    tmp_path_factory: pytest.TempPathFactory, parser: str, demos: list[Demo]
) -> Iterator[GuardProc]:
    """One Guard per parser over the three demos, with the routes of ``std_routes``."""
    routes, services = std_routes(demos)
    with run_guard(tmp_path_factory.mktemp(f"std-{parser}"), parser, routes, services) as g:
        yield g
