"""A binary restart (SIGUSR2) hands running docker containers to the new Guard (issue 7).

The new Guard adopts the old one's running containers at its start (same guard id, same
spec), serves them warm while the old one drains, and starts metering them once the old
one, which releases them instead of stopping them, has exited: the usage ledger holds each
container's slices end to end, none twice. With ``workers: 2`` the control plane lives in
the supervisor, which does the same.

Skipped without a daemon, failing under CI=true (tests/test_docker_driver.py's fixtures).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests import test_docker_driver
from tests.helpers import fetch, wait_for
from tests.test_containers_docker import GUARD_ID, SERVE, containers, service_names
from tests.test_docker_driver import IMAGE, SOCKET
from tests.test_restart import guard_group, restart_under_load, wait_pid, write_config

docker_image = test_docker_driver.docker_image
__all__ = ["docker_image", "service_names"]  # fixtures, shared

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="docker on linux"),
    pytest.mark.timeout(120),
]


def _service(per_key: bool = False) -> dict[str, Any]:
    return {
        "container": {
            "driver": "docker",
            "image": IMAGE,
            "command": SERVE,
            "ready": {"http": "/"},
            "stop_timeout": "2s",
        },
        "scale": {"min": 0, "max": 4, "sleep_after": "60s"},
        "per_key": per_key,
    }


def _events(output: str, name: str) -> list[dict[str, Any]]:
    found = []
    for line in output.splitlines():
        start = line.find("{")
        if "guard.lifecycle" in line and start >= 0:
            record = json.loads(line[start:])
            if record["event"] == name:
                found.append(record)
    return found


def _slices(ledger: Path) -> dict[str, list[tuple[float, float, float | None]]]:
    """instance -> its (start, end, stopped_at) slices, in time order."""
    with sqlite3.connect(ledger) as db:
        rows = db.execute(
            "SELECT instance, t_start, t_end, stopped_at FROM instance_slices ORDER BY t_start"
        ).fetchall()
    out: dict[str, list[tuple[float, float, float | None]]] = {}
    for instance, start, end, stopped in rows:
        out.setdefault(instance, []).append((start, end, stopped))
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_a_binary_restart_hands_the_containers_over(
    tmp_path: Path, docker_image: str, service_names: list[str], workers: int
) -> None:
    app, sbx = f"dk{uuid.uuid4().hex[:8]}", f"dk{uuid.uuid4().hex[:8]}"
    service_names += [app, sbx]
    ledger = tmp_path / "usage.db"
    extra = {
        "drivers": {"docker": {"network": "host", "socket": SOCKET, "guard_id": GUARD_ID}},
        "usage": {"ledger": str(ledger), "flush": "1s"},
        "http": {"timeouts": {"drain": "3s"}},
    }
    cfg, port, pid_file = write_config(tmp_path, "127.0.0.1:9", workers=workers, extra=extra)
    routes = [
        {"name": "app", "listener": "web", "service": app, "match": {"host": "load.test"}},
        {"name": "sbx", "listener": "web", "service": sbx, "match": {"host": "{key}.sbx.test"}},
    ]
    services = {app: _service(), sbx: _service(per_key=True)}
    (tmp_path / "routes" / "main.yaml").write_text(
        json.dumps({"routes": routes, "services": services})
    )
    with guard_group(cfg) as g:
        first = wait_pid(pid_file, other_than=None, child=g)
        assert fetch(port, host="load.test", timeout=30).status == 200
        assert fetch(port, host="k1.sbx.test", timeout=30).status == 200
        before = sorted(c["id"] for c in containers(app, sbx))
        assert len(before) == 2
        restart_under_load(g, port, pid_file, first)  # no request failed, none reset
        # The same containers serve, warm: adopted, not restarted or started again.
        for host in ("load.test", "k1.sbx.test"):
            r = fetch(port, host=host, timeout=30)
            assert r.status == 200 and r.header("x-guard-cold-start") is None, host
        assert sorted(c["id"] for c in containers(app, sbx)) == before
        assert len(_events(g.output, "start")) == 2  # the first Guard's two, no more
        assert len(_events(g.output, "adopt")) == 2
        assert len(_events(g.output, "released")) == 2
        assert "(adopted 2 instances)" in g.output
        wait_for(lambda: "has exited" in g.output, 5, "the new Guard seeing the old one exit")
        wait_for(lambda: len(_slices(ledger)) == 2, 10, "slices of both instances")
        output = g.output
    # The new Guard's SIGTERM stopped them; the ledger has each end to end, once.
    assert containers(app, sbx) == []
    for instance, slices in _slices(ledger).items():
        for (_, end, stopped), (start, _, _) in itertools.pairwise(slices):
            assert stopped is None, (instance, slices)  # released, not stopped, mid-way
            # The new Guard resumes where the old one's last slice ended (the ledger).
            assert start == end, f"{instance}: billed twice or a gap: {slices}\n{output}"
        assert slices[-1][2] is not None, (instance, slices)  # stopped by the last Guard


def test_what_the_successor_does_not_adopt_the_old_guard_stops(
    tmp_path: Path, docker_image: str, service_names: list[str]
) -> None:
    """The new guard.yaml points at route files with no docker service: the new Guard
    adopts nothing and says so on its ready pipe, so the old one stops its container at
    the end of its drain instead of releasing it (no orphan is left running)."""
    app = f"dk{uuid.uuid4().hex[:8]}"
    service_names.append(app)
    extra = {"drivers": {"docker": {"network": "host", "socket": SOCKET, "guard_id": GUARD_ID}}}
    cfg, port, pid_file = write_config(tmp_path, "127.0.0.1:9", workers=1, extra=extra)
    route = {"name": "app", "listener": "web", "service": app, "match": {"host": "load.test"}}
    (tmp_path / "routes" / "main.yaml").write_text(
        json.dumps({"routes": [route], "services": {app: _service()}})
    )
    with guard_group(cfg) as g:
        first = wait_pid(pid_file, other_than=None, child=g)
        assert fetch(port, host="load.test", timeout=30).status == 200
        assert len(containers(app)) == 1
        # The next binary reads another route directory: a static service only.
        (tmp_path / "routes2").mkdir()
        static = {"name": "app", "listener": "web", "service": "s", "match": {"host": "x.test"}}
        (tmp_path / "routes2" / "main.yaml").write_text(
            json.dumps({"routes": [static], "services": {"s": {"servers": ["127.0.0.1:9"]}}})
        )
        doc = json.loads(cfg.read_text())
        doc["routes"] = "routes2"
        cfg.write_text(json.dumps(doc))
        os.kill(first, signal.SIGUSR2)
        wait_pid(pid_file, other_than=first, child=g)
        assert g.proc.wait(30) == 0, g.output[-3000:]
        assert containers(app) == [], g.output[-3000:]  # stopped by the old Guard
        assert "(adopted 0 instances)" in g.output
        assert _events(g.output, "released") == []
        (stopped,) = _events(g.output, "stopped")
        assert stopped["service"] == app and stopped["reason"] == "shutdown"
