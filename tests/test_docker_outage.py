"""dockerd restarted while Guard serves a docker service under load (issue 7's fault list).

The daemon is stopped (SIGTERM to dockerd, as a host's `systemctl restart docker` does)
while a client loop keeps sending requests, and started again exactly as .ci/run starts it.
Without the daemon's ``live-restore`` (the default, and this CI's) stopping dockerd stops
every container; with it they keep running. Either way what must hold:

- Guard does not crash and notices the outage (log, ``guard_driver_up`` 0 ->1,
  ``guard_driver_outages_total``), reconnects and resyncs;
- every request gets an answer: 200, or a clean 5xx with ``x-guard-error`` (the instance's
  address refused while its container was gone, or a wake failed while the daemon was
  away), never a hang or a reset;
- after the restart requests are served again, by the surviving container or a replacement,
  and exactly one container of the service is left running.

This restarts the daemon other tests (and other developers' test runs) use: it runs only
under CI=true (where it is alone) or with GUARD_TEST_DOCKERD_RESTART=1, and always leaves
dockerd running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from tests import test_containers_docker
from tests.helpers import fetch, free_port, wait_for
from tests.test_containers_docker import GUARD_ID, DockerApp, containers
from tests.test_docker_driver import SOCKET
from tests.test_metrics import Scrape

# The fixtures that check the daemon, build the image and clean up, shared, not copied.
docker_image = test_containers_docker.docker_image
service_names = test_containers_docker.service_names
docker_app = test_containers_docker.docker_app

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("CI") != "true" and os.environ.get("GUARD_TEST_DOCKERD_RESTART") != "1",
        reason="restarts the shared dockerd: CI=true or GUARD_TEST_DOCKERD_RESTART=1",
    ),
    pytest.mark.timeout(240),
]

DOCKERD = (
    "nohup dockerd --storage-driver=vfs --iptables=false --bridge=none >/tmp/dockerd.log 2>&1 &"
)
REQUEST_TIMEOUT = 20.0  # a hang shows up as a client timeout; wake_timeout is 8 s


@pytest.fixture
def parser() -> str:
    return "httptools"


def dockerd_pid() -> int | None:
    found = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True)
    pids = found.stdout.split()
    return int(pids[0]) if pids else None


def docker_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0


def start_dockerd() -> None:
    subprocess.run(["bash", "-c", DOCKERD], check=True, start_new_session=True)
    wait_for(docker_answers, 60, "dockerd to answer again")


def live_restore() -> bool:
    out = subprocess.run(
        ["docker", "info", "--format", "{{.LiveRestoreEnabled}}"], capture_output=True, text=True
    )
    return out.stdout.strip() == "true"


class Load:
    """Requests one after another, 20 per second, from a thread until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.results: list[tuple[float, int | str, str | None]] = []  # (at, status, error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            try:
                r = fetch(self.port, host="app.test", timeout=REQUEST_TIMEOUT)
                self.results.append((at, r.status, r.header("x-guard-error")))
            except Exception as e:  # a reset, a timeout: what must not happen
                self.results.append((at, type(e).__name__, str(e)))
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT + 5)


def test_dockerd_restart_under_load(docker_app: DockerApp) -> None:
    pid = dockerd_pid()
    assert pid is not None, "no dockerd process to restart"
    survives = live_restore()
    admin = free_port()
    g = docker_app._guard(
        routes=[{"name": "app", "match": {"host": "app.test"}, "service": docker_app.app}],
        services={docker_app.app: docker_app.service(wake_timeout="8s")},
        extra={
            "drivers": {"docker": {"network": "host", "socket": SOCKET, "guard_id": GUARD_ID}},
            "admin": {"address": f"127.0.0.1:{admin}"},
        },
    )
    assert fetch(g.port, host="app.test", timeout=30).status == 200
    (before,) = containers(docker_app.app)
    load = Load(g.port)
    try:
        time.sleep(1.0)
        kill_at = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: dockerd_pid() is None, 60, "dockerd to stop")
        down_at = time.monotonic()
        wait_for(
            lambda: Scrape(admin).value("guard_driver_up", driver="docker") == 0,
            20,
            "Guard to notice the outage",
        )
        time.sleep(1.0)  # requests while the daemon is away
        start_dockerd()
        back_at = time.monotonic()
        # Served again: by the survivor, or by a replacement once the resync saw it die.
        wait_for(
            lambda: any(at > back_at and s == 200 for at, s, _ in load.results),
            60,
            "a request served after the restart",
        )
        time.sleep(1.0)
    finally:
        load.stop()
        if dockerd_pid() is None:
            start_dockerd()  # whatever failed above, leave the daemon running

    assert g.proc.poll() is None, g.stderr[-3000:]
    codes: dict[object, int] = {}
    for _, status, err in load.results:
        codes[(status, err)] = codes.get((status, err), 0) + 1
    print(  # shown with -s: what the outage cost
        f"live-restore={survives} requests={len(load.results)} answers={codes}"
        f" daemon down {back_at - down_at:.1f}s"
    )
    bad = [r for r in load.results if not isinstance(r[1], int)]
    assert bad == [], bad  # no hang, no reset: every request got an HTTP answer
    failed = [r for r in load.results if r[1] != 200]
    assert all(500 <= s < 600 and err for _, s, err in failed), failed  # type: ignore[operator]
    assert all(s == 200 for _, s, _ in load.results[-5:]), load.results[-10:]
    # Failures only around the outage: none well before the daemon was stopped.
    assert all(at > kill_at - 1.0 for at, _, _ in failed), (kill_at, failed)
    assert down_at >= kill_at
    scrape = Scrape(admin)
    assert scrape.value("guard_driver_up", driver="docker") == 1
    assert scrape.value("guard_driver_outages_total", driver="docker") >= 1
    assert "docker daemon unreachable" in g.stderr
    assert "docker daemon reachable again" in g.stderr
    running = [c for c in containers(docker_app.app) if c["state"] == "running"]
    assert len(running) == 1, running
    if survives:
        assert running[0]["id"] == before["id"]
    else:
        assert running[0]["id"] != before["id"]  # the dead one was replaced ...
        wait_for(lambda: len(containers(docker_app.app)) == 1, 15, "the dead one removed")
