"""Containers made through the admin API on the docker driver (issue 6): the lifecycle of
tests/test_containers_api.py with every container a real one of the daemon, and what the
daemon holds checked at each step (stopped = no container; deleted = none left).

Skipped without a daemon, failing under CI=true (the fixtures of
tests/test_docker_driver.py).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from guard.drivers.docker import LABEL_ID, LABEL_INSTANCE
from tests import test_docker_driver
from tests.helpers import assert_guard_error, wait_for
from tests.test_admin_api import STAR, TOKEN_A, token_env
from tests.test_containers_api import Api, _admin_up, start_api
from tests.test_containers_docker import SERVE
from tests.test_docker_driver import IMAGE, SOCKET

# SERVE, saying hello first: something for the daemon's log driver to keep.
CHATTY = [SERVE[0], SERVE[1], "echo hello-from-$GUARD_KEY; " + SERVE[2]]

docker_image = test_docker_driver.docker_image
guard_id = test_docker_driver.guard_id
__all__ = ["docker_image", "guard_id", "token_env"]  # fixtures, shared

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="docker on linux"),
    pytest.mark.timeout(90),
]


async def _running(gid: str, container_id: str) -> list[dict[str, Any]]:
    async with aiodocker.Docker(url=SOCKET) as docker:
        found = await docker.containers.list(all=True, filters={"label": [f"{LABEL_ID}={gid}"]})
        out = []
        for c in found:
            if (c["Labels"] or {}).get(LABEL_INSTANCE, "").startswith(f"ctr-{container_id}-"):
                out.append(await c.show())
        return out


def daemon_containers(gid: str, container_id: str) -> list[dict[str, Any]]:
    return asyncio.run(_running(gid, container_id))


def test_lifecycle_on_docker(tmp_path: Path, token_env: None, guard_id: str) -> None:
    drivers = {"docker": {"network": "host", "socket": SOCKET, "guard_id": guard_id}}
    admin, ctx = start_api(tmp_path, extra={"drivers": drivers})
    with ctx as g:
        api = Api(g, admin)
        body = {
            "image": IMAGE,
            "command": CHATTY,
            "ports": {"web": {"protocol": "http", "internal_port": 8080}},
            "resources": {"cpu": 0.5, "memory": "64MiB"},
        }
        r = api("POST", "/v1/containers", TOKEN_A, body)
        assert r.status == 201, r.body
        made = r.json()
        cid = made["id"]
        assert made["driver"] == "docker" and made["tenant"] == "a"
        assert made["ports"]["web"]["address"].startswith(f"http://{cid}-web.")

        def through() -> Any:
            return api.through(cid, port="web")

        r = through()  # held while the container starts
        assert r.status == 200, (r.status, r.body)
        [info] = daemon_containers(guard_id, cid)
        assert info["State"]["Running"]
        assert info["HostConfig"]["NanoCpus"] == 500_000_000
        assert info["HostConfig"]["Memory"] == 64 << 20
        logs = api("GET", f"/v1/containers/{cid}/logs?tail=10", TOKEN_A)
        assert logs.status == 200 and f"hello-from-{cid}".encode() in logs.body, logs.body

        # A follow ends (cleanly, with the last chunk) when the container stops.
        with socket.create_connection(("127.0.0.1", admin), timeout=20) as s:
            s.sendall(
                f"GET /v1/containers/{cid}/logs?follow=true HTTP/1.1\r\nhost: a\r\n"
                f"authorization: Bearer {TOKEN_A}\r\n\r\n".encode()
            )
            got = s.recv(65536)
            assert b"transfer-encoding: chunked" in got.lower()
            stopper = threading.Thread(
                target=api, args=("POST", f"/v1/containers/{cid}/stop", TOKEN_A)
            )
            stopper.start()
            while not got.endswith(b"0\r\n\r\n"):
                data = s.recv(65536)
                assert data, got
                got += data
            stopper.join()
        assert f"hello-from-{cid}".encode() in got
        assert api.get(cid, TOKEN_A).json()["state"] == "stopped"
        kept = api("GET", f"/v1/containers/{cid}/logs", TOKEN_A).body
        assert f"hello-from-{cid}".encode() in kept

        assert daemon_containers(guard_id, cid) == []  # stopped and removed
        assert through().status == 200  # woken
        assert len(daemon_containers(guard_id, cid)) == 1

        assert api("DELETE", f"/v1/containers/{cid}", TOKEN_A).status == 200
        assert daemon_containers(guard_id, cid) == []
        assert_guard_error(through(), 404, "container_not_found")
        assert_guard_error(api.get(cid, STAR), 404, "container_not_found")


def test_wait_ready_reports_a_missing_image(tmp_path: Path, token_env: None, guard_id: str) -> None:
    drivers = {"docker": {"network": "host", "socket": SOCKET, "guard_id": guard_id}}
    admin, ctx = start_api(tmp_path, extra={"drivers": drivers})
    with ctx as g:
        api = Api(g, admin)
        body = {"image": "guard-test-no-such-image:never", "ports": {"web": {"internal_port": 80}}}
        r = api("POST", "/v1/containers?wait_ready=true", STAR, body)
        assert_guard_error(r, 503, "instance_start_failed")
        assert "guard-test-no-such-image" in r.json()["message"]


def test_rolling_upgrade_on_docker(tmp_path: Path, token_env: None, guard_id: str) -> None:
    drivers = {"docker": {"network": "host", "socket": SOCKET, "guard_id": guard_id}}
    admin, ctx = start_api(tmp_path, extra={"drivers": drivers})
    with ctx as g:
        api = Api(g, admin)
        body = {"image": IMAGE, "command": CHATTY, "ports": {"web": {"internal_port": 8080}}}
        r = api("POST", "/v1/containers?wait_ready=true", STAR, body)
        assert r.status == 201, r.body
        cid = r.json()["id"]
        [old] = daemon_containers(guard_id, cid)
        r = api("POST", f"/v1/containers/{cid}/upgrade", STAR, {"env": {"V": "2"}})
        assert r.status == 200, r.body
        assert api.through(cid, port="web").status == 200
        wait_for(lambda: len(daemon_containers(guard_id, cid)) == 1, 20, "the old one removed")
        [new] = daemon_containers(guard_id, cid)
        assert new["Id"] != old["Id"] and "V=2" in new["Config"]["Env"]


def test_two_http_ports_on_docker(tmp_path: Path, token_env: None, guard_id: str) -> None:
    drivers = {"docker": {"network": "host", "socket": SOCKET, "guard_id": guard_id}}
    admin, ctx = start_api(tmp_path, extra={"drivers": drivers})
    with ctx as g:
        api = Api(g, admin)
        both = (
            "trap 'exit 0' TERM; httpd -f -p 127.0.0.1:$PORT_ADMIN -h /www &"
            " httpd -f -p 127.0.0.1:$PORT -h /www & wait"
        )
        body = {
            "image": IMAGE,
            "command": ["/bin/sh", "-c", both],
            "ports": {"web": {"internal_port": 80}, "admin": {"internal_port": 81}},
        }
        r = api("POST", "/v1/containers?wait_ready=true", STAR, body)
        assert r.status == 201, r.body
        cid = r.json()["id"]
        [info] = daemon_containers(guard_id, cid)
        assert any(e.startswith("PORT_ADMIN=") for e in info["Config"]["Env"])
        assert api.through(cid, port="web").status == 200
        wait_for(lambda: api.through(cid, port="admin").status == 200, 10, "the admin port")


def test_a_restart_adopts_running_api_containers(
    tmp_path: Path, token_env: None, guard_id: str
) -> None:
    """A SIGKILLed Guard leaves its API containers running; the next one (same guard_id,
    same routes/ directory) takes over the ones still running instead of cold-starting
    them, and keeps the stopped ones stopped."""
    drivers = {"docker": {"network": "host", "socket": SOCKET, "guard_id": guard_id}}
    body = {"image": IMAGE, "command": CHATTY, "ports": {"web": {"internal_port": 8080}}}
    admin, ctx = start_api(tmp_path, extra={"drivers": drivers})
    with ctx as g:
        api = Api(g, admin)
        r = api("POST", "/v1/containers?wait_ready=true", TOKEN_A, body)
        assert r.status == 201, r.body
        cid = r.json()["id"]
        r = api("POST", "/v1/containers?wait_ready=true", STAR, body)
        asleep = r.json()["id"]
        assert api("POST", f"/v1/containers/{asleep}/stop", STAR).status == 200
        assert api.through(cid, port="web").status == 200
        [before] = daemon_containers(guard_id, cid)
        g.proc.kill()
        g.proc.wait(5)
    [left] = daemon_containers(guard_id, cid)
    assert left["Id"] == before["Id"] and left["State"]["Running"]

    admin, ctx = start_api(tmp_path, extra={"drivers": drivers})
    with ctx as g:
        api = Api(g, admin)
        wait_for(lambda: _admin_up(admin), 10, "admin API")
        wait_for(lambda: api.get(cid, TOKEN_A).json()["state"] == "running", 15, "adopted")
        r = api.through(cid, port="web")
        assert r.status == 200 and r.header("x-guard-cold-start") is None
        [after] = daemon_containers(guard_id, cid)
        assert after["Id"] == before["Id"]  # the same container, not a new one
        assert "adopting 1 running containers" in g.stderr
        assert api.get(asleep, STAR).json()["state"] == "stopped"
        assert daemon_containers(guard_id, asleep) == []
    # Adopted, it is this Guard's own: a graceful stop stops and removes it.
    assert daemon_containers(guard_id, cid) == []
