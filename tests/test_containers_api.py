"""Containers as admin-API objects (issue 6): create, address, wake, stop, delete, tenants,
quotas, validation, on the process driver, through a real Guard and real HTTP clients.

Every container is ``guard.demo http`` (it answers with the port it serves on); requests
reach it on the containers listener by Host ``{id}-{port}.containers.test`` or by the
``x-guard-container`` header. The docker driver's turn is in
tests/test_containers_api_docker.py.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GuardProc, _merge, run_guard
from tests.helpers import REPO, Resp, assert_guard_error, fetch, free_port, wait_for
from tests.test_admin_api import STAR, TOKEN_A, TOKEN_B, call, token_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process driver")

DEMO = [sys.executable, "-m", "guard.demo", "http"]
DOMAIN = "containers.test"


def demo(**more: Any) -> dict[str, Any]:
    return {
        "command": DEMO,
        "env": {"PYTHONPATH": str(REPO)},
        "ports": {"http": {"protocol": "http", "internal_port": 8080}},
        **more,
    }


def host_of(container_id: str, port: str = "http") -> str:
    return f"{container_id}-{port}.{DOMAIN}"


class Api:
    def __init__(self, g: GuardProc, admin: int) -> None:
        self.g = g
        self.admin = admin

    def __call__(self, method: str, path: str, token: str | None = STAR, body: Any = None) -> Resp:
        return call(self.admin, method, path, token, body)

    def create(self, token: str = STAR, query: str = "", **body: Any) -> dict[str, Any]:
        r = self("POST", f"/v1/containers{query}", token, demo(**body))
        assert r.status == 201, (r.status, r.body)
        return r.json()

    def get(self, container_id: str, token: str = STAR) -> Resp:
        return self("GET", f"/v1/containers/{container_id}", token)

    def through(self, container_id: str, path: str = "/", port: str = "http") -> Resp:
        return fetch(self.g.port, "GET", path, host=host_of(container_id, port), timeout=30)


__all__ = ["token_env"]  # the fixture, shared with the admin API's tests


def start_api(directory: Path, *, workers: int = 1, extra: dict[str, Any] | None = None):
    admin = free_port()
    cfg: dict[str, Any] = {
        "workers": workers,
        "containers": {"domain": DOMAIN, "listener": "web"},
        "drivers": {"process": {}},
        "admin": {
            "address": f"127.0.0.1:{admin}",
            "tokens": [
                {"token_env": "GUARD_T_STAR", "tenant": "*"},
                {"token_env": "GUARD_T_A", "tenant": "a"},
                {"token_env": "GUARD_T_B", "tenant": "b"},
            ],
        },
    }
    cfg = _merge(cfg, extra or {})
    routes = [{"name": "base", "match": {"host": "base.test"}, "service": "base"}]
    services = {"base": {"servers": [f"127.0.0.1:{free_port()}"]}}
    return admin, run_guard(directory, "httptools", routes, services, extra=cfg)


@pytest.fixture
def api(tmp_path: Path, token_env: None) -> Iterator[Api]:
    admin, ctx = start_api(tmp_path, extra={"tenants": {"a": {"max_containers": 2}}})
    with ctx as g:
        yield Api(g, admin)


def audit_lines(g: GuardProc) -> list[str]:
    return [line for line in g.stderr.splitlines() if "audit tenant=" in line]


# ------------------------------------------------------------------------------ lifecycle


def lifecycle(api: Api) -> None:
    """create -> request (held while it starts) -> stop -> request wakes it -> delete -> 404"""
    made = api.create()
    cid = made["id"]
    assert made["state"] in ("starting", "running")
    port = api.g.port
    assert made["ports"]["http"]["address"] == f"http://{cid}-http.{DOMAIN}:{port}"
    r = api.through(cid)  # held until the instance is ready
    assert r.status == 200, (r.status, r.body)
    first_port = r.header("x-demo-port")
    assert first_port
    view = api.get(cid).json()
    assert view["state"] == "running" and view["instance"]["state"] == "ready"

    r = api("POST", f"/v1/containers/{cid}/stop")
    assert r.status == 200, r.body
    assert r.json()["state"] == "stopped"
    assert api.get(cid).json()["state"] == "stopped"

    r = api.through(cid)  # wakes it again
    assert r.status == 200
    assert api.get(cid).json()["state"] == "running"

    r = api("DELETE", f"/v1/containers/{cid}")
    assert r.status == 200 and r.json() == {"id": cid, "state": "deleted"}
    assert_guard_error(api.get(cid), 404, "container_not_found")
    assert_guard_error(api.through(cid), 404, "container_not_found")


def test_full_lifecycle(api: Api) -> None:
    lifecycle(api)
    lines = audit_lines(api.g)
    assert any("action=POST target=/v1/containers result=201" in x for x in lines), lines
    assert any("action=DELETE" in x and "result=200" in x for x in lines), lines


def test_workers_two(tmp_path: Path, token_env: None) -> None:
    first = free_port()
    extra = {"containers": {"tcp_ports": f"{first}-{first + 40}"}}
    admin, ctx = start_api(tmp_path, workers=2, extra=extra)
    with ctx as g:
        api = Api(g, admin)
        wait_for(lambda: _admin_up(admin), 10, "admin API")
        lifecycle(api)
        # Every worker routes to it: many fresh connections land on both.
        cid = api.create(query="?wait_ready=true")["id"]
        for _ in range(20):
            assert api.through(cid).status == 200
        # And every worker listens on a tcp container's port.
        made = api.create(
            command=[*DEMO[:-1], "tcp"], ports={"db": {"protocol": "tcp", "internal_port": 1}}
        )
        tcp_port = int(made["ports"]["db"]["address"].rsplit(":", 1)[1])
        wait_for(lambda: _connects(tcp_port), 10, "the container's tcp listener")
        for i in range(20):
            assert _echo_tcp(tcp_port, b"%d\n" % i) == b"%d\n" % i


def _admin_up(admin: int) -> bool:
    try:
        return call(admin, "GET", "/v1/containers", STAR).status == 200
    except OSError:
        return False


def test_header_routing_and_unknown_ids(api: Api) -> None:
    cid = api.create(query="?wait_ready=true")["id"]
    r = fetch(api.g.port, "GET", "/", host="base.test", headers=[("x-guard-container", cid)])
    assert r.status == 200 and r.header("x-demo-port")
    r = fetch(
        api.g.port,
        "GET",
        "/",
        host="anything",
        headers=[("x-guard-container", cid), ("x-guard-port", "http")],
    )
    assert r.status == 200
    bad = fetch(api.g.port, "GET", "/", host="x", headers=[("x-guard-container", "0" * 16)])
    assert_guard_error(bad, 404, "container_not_found")
    assert_guard_error(fetch(api.g.port, host=host_of("0" * 16)), 404, "container_not_found")
    assert_guard_error(fetch(api.g.port, host=host_of(cid, "admin")), 404, "container_not_found")
    # Other hosts still go to the listener's routes.
    assert_guard_error(fetch(api.g.port, host="nowhere.test"), 404, "route_not_found")


def test_wait_ready_and_failed_start(api: Api) -> None:
    made = api.create(query="?wait_ready=true&timeout=20s")
    assert made["state"] == "running"
    r = api("POST", "/v1/containers?wait_ready=true", body={"command": ["/bin/false"]})
    assert_guard_error(r, 503, "instance_start_failed")
    assert r.json()["container"]["id"]


def test_sleep_after_and_destroy_after(api: Api) -> None:
    cid = api.create(lifecycle={"sleep_after": "500ms"}, query="?wait_ready=true")["id"]
    gone = api.create(
        lifecycle={"sleep_after": "300ms", "destroy_after": "500ms"}, query="?wait_ready=true"
    )["id"]
    wait_for(lambda: api.get(cid).json()["state"] == "stopped", 10, "asleep")
    assert api.through(cid).status == 200  # woken by a request
    wait_for(lambda: api.get(gone).status == 404, 10, "destroyed")
    assert any(
        f"action=DESTROY_AFTER target=/v1/containers/{gone}" in x for x in audit_lines(api.g)
    )
    assert_guard_error(api.through(gone), 404, "container_not_found")


def test_list_filters_and_pages(api: Api) -> None:
    ids = [api.create(tags={"team": "x" if i % 2 else "y", "n": str(i)})["id"] for i in range(5)]
    r = api("GET", "/v1/containers?tag=team:x")
    assert r.status == 200
    assert [c["id"] for c in r.json()["containers"]] == [ids[1], ids[3]]
    seen: list[str] = []
    cursor = ""
    while True:
        page = api("GET", f"/v1/containers?limit=2{cursor}").json()
        seen += [c["id"] for c in page["containers"]]
        if page["next"] is None:
            break
        cursor = f"&cursor={page['next']}"
    assert seen == ids
    api("POST", f"/v1/containers/{ids[0]}/stop")
    stopped = api("GET", "/v1/containers?state=stopped").json()["containers"]
    assert [c["id"] for c in stopped] == [ids[0]]
    assert_guard_error(api("GET", "/v1/containers?state=sleepy"), 400, "invalid_request")
    assert_guard_error(api("GET", "/v1/containers?colour=red"), 400, "invalid_request")


# ------------------------------------------------------------------------------ tenants


def test_tenant_isolation_matrix(api: Api) -> None:
    a = api.create(TOKEN_A)["id"]
    b = api.create(TOKEN_B)["id"]
    assert api.get(a, TOKEN_A).json()["tenant"] == "a"
    for mine, theirs, token in ((a, b, TOKEN_A), (b, a, TOKEN_B)):
        listed = [c["id"] for c in api("GET", "/v1/containers", token).json()["containers"]]
        assert listed == [mine]
        for method, path in (
            ("GET", f"/v1/containers/{theirs}"),
            ("DELETE", f"/v1/containers/{theirs}"),
            ("POST", f"/v1/containers/{theirs}/stop"),
            ("POST", f"/v1/containers/{theirs}/start"),
        ):
            assert_guard_error(api(method, path, token), 404, "container_not_found")
        # Nor may a tenant route to another's container through a route of its own.
        r = api(
            "PUT",
            "/v1/routes/steal",
            token,
            {"listener": "web", "match": {"host": "steal.test"}, "service": f"ctr-{theirs}"},
        )
        assert r.status == 400, r.body
        # Usage: a tenant reads only its own tenant's rows and quota.
        assert [t["name"] for t in api("GET", "/v1/tenants", token).json()["tenants"]] == [
            "a" if token == TOKEN_A else "b"
        ]
    # Both still there (nothing of the above touched them); the operator sees both.
    everything = [c["id"] for c in api("GET", "/v1/containers").json()["containers"]]
    assert everything == [a, b]
    assert api.get(a, TOKEN_A).status == 200 and api.get(b, TOKEN_B).status == 200


def test_quota_429(api: Api) -> None:
    api.create(TOKEN_A)
    api.create(TOKEN_A)
    r = api("POST", "/v1/containers", TOKEN_A, demo())
    assert_guard_error(r, 429, "quota_exceeded")
    assert "max_containers is 2" in r.json()["message"]
    assert api("POST", "/v1/containers", TOKEN_B, demo()).status == 201  # b has no quota
    use = api("GET", "/v1/tenants/a", TOKEN_A).json()
    assert use["use"]["containers"] == 2 and use["quota"]["enforced"] is True


def test_cpu_and_memory_quota(tmp_path: Path, token_env: None) -> None:
    quota = {"a": {"max_cpu": 1, "max_memory": "256MiB"}}
    admin, ctx = start_api(tmp_path, extra={"tenants": quota})
    with ctx as g:
        api = Api(g, admin)
        r = api("POST", "/v1/containers", TOKEN_A, demo())
        assert_guard_error(r, 400, "invalid_request")
        assert "resources.cpu: required" in r.json()["message"]
        api.create(TOKEN_A, resources={"cpu": 0.75, "memory": "128MiB"})
        r = api("POST", "/v1/containers", TOKEN_A, demo(resources={"cpu": 0.5, "memory": "64MiB"}))
        assert_guard_error(r, 429, "quota_exceeded")
        assert "max_cpu is 1" in r.json()["message"]
        r = api(
            "POST", "/v1/containers", TOKEN_A, demo(resources={"cpu": "250m", "memory": "256MiB"})
        )
        assert_guard_error(r, 429, "quota_exceeded")
        assert "max_memory is 268435456 bytes" in r.json()["message"]
        api.create(TOKEN_A, resources={"cpu": "250m", "memory": "128MiB"})


def _service(max_: int, **resources: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"driver": "process", "command": DEMO}
    if resources:
        container["resources"] = resources
    return {"container": container, "scale": {"max": max_}}


def test_container_services_count_against_the_quota(tmp_path: Path, token_env: None) -> None:
    """PUT /v1/services cannot get a tenant past its quota: each container service
    reserves scale.max containers, with POST /v1/containers in the same account."""
    quota = {"a": {"max_containers": 3, "max_cpu": 1, "max_memory": "256MiB"}}
    admin, ctx = start_api(tmp_path, extra={"tenants": quota})
    with ctx as g:
        api = Api(g, admin)
        r = api("PUT", "/v1/services/s1", TOKEN_A, _service(2))
        assert_guard_error(r, 400, "invalid_config")
        assert "services.s1.container.resources.cpu: required" in r.json()["errors"][0]
        small = {"cpu": 0.25, "memory": "64MiB"}
        assert api("PUT", "/v1/services/s1", TOKEN_A, _service(2, **small)).status == 200
        r = api("PUT", "/v1/services/s2", TOKEN_A, _service(2, **small))
        assert_guard_error(r, 429, "quota_exceeded")
        assert "max_containers is 3 and this would reserve 4 (now 2)" in r.json()["message"]
        assert api("GET", "/v1/services/s2", TOKEN_A).status == 404  # nothing changed
        # Scaling s1 up past the quota is refused too; the operator (*) is not limited.
        r = api("PUT", "/v1/services/s1", TOKEN_A, _service(3, cpu=0.5, memory="64MiB"))
        assert_guard_error(r, 429, "quota_exceeded")
        assert "max_cpu is 1 and this would reserve 1.5" in r.json()["message"]
        assert api("PUT", "/v1/services/big", STAR, _service(50, **small)).status == 200
        # An API container takes the last container the quota has; then none is left.
        api.create(TOKEN_A, resources=small)
        r = api("POST", "/v1/containers", TOKEN_A, demo(resources=small))
        assert_guard_error(r, 429, "quota_exceeded")
        tenant = api("GET", "/v1/tenants/a", TOKEN_A).json()
        assert tenant["reserved"] == {"containers": 3, "cpu": 0.75, "memory": 3 * (64 << 20)}
        # Changes that do not grow the reservation go through, even at the limit; a
        # smaller s1 makes room for a second container.
        route = {"listener": "web", "match": {"host": "s1.a.test"}, "service": "s1"}
        assert api("PUT", "/v1/routes/r1", TOKEN_A, route).status == 200
        assert api("PUT", "/v1/services/s1", TOKEN_A, _service(1, **small)).status == 200
        api.create(TOKEN_A, resources=small)
        assert api("DELETE", "/v1/routes/r1", TOKEN_A).status == 200
        assert api("DELETE", "/v1/services/s1", TOKEN_A).status == 200


def test_metrics_count_api_containers_under_one_label(api: Api) -> None:
    """Tenants create containers without bound; /metrics does not grow with them: every
    API container's series are summed under service="_containers"."""
    ids = [api.create(query="?wait_ready=true")["id"] for _ in range(3)]
    for cid in ids:
        assert api.through(cid).status == 200
    api("POST", f"/v1/containers/{ids[0]}/stop")
    text = api("GET", "/metrics").body.decode()
    assert "ctr-" not in text, [line for line in text.splitlines() if "ctr-" in line][:5]
    assert 'guard_instances{service="_containers",state="ready"} 2' in text
    stops = [line for line in text.splitlines() if line.startswith("guard_instance_stops_total{")]
    assert stops and all('service="_containers"' in line for line in stops), stops
    requests = [
        line
        for line in text.splitlines()
        if line.startswith("guard_requests_total{") and 'route="_containers"' in line
    ]
    assert requests and all('service="_containers"' in line for line in requests), requests


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("body", "line"),
    [
        (
            demo(ports={"http": {"protocol": "smtp", "internal_port": 80}}),
            "ports.http.protocol: must be one of http, tcp, udp",
        ),
        (demo(colour="red"), "colour: unknown field"),
        (demo(lifecycle={"sleep_afer": "1s"}), "lifecycle.sleep_afer: unknown field"),
        (demo(lifecycle={"sleep_after": 5}), "lifecycle.sleep_after: duration needs a unit"),
        (demo(resources={"memory": "lots"}), "resources.memory: invalid size"),
        (demo(env={"A": 1}), "env.A: must be a string"),
        (demo(ports={"Http": {"internal_port": 80}}), "ports.Http: a port name is"),
        (demo(ports={"http": {"internal_port": 70000}}), "ports.http.internal_port:"),
        (demo(tags={"k": ["v"]}), "tags.k: must be a string"),
        ({"env": {}}, "image: one of image (a docker image) or command"),
        (demo(image="busybox"), "image: this Guard has no docker driver"),
    ],
)
def test_validation_400(api: Api, body: dict[str, Any], line: str) -> None:
    r = api("POST", "/v1/containers", body=body)
    assert_guard_error(r, 400, "invalid_request")
    assert any(e.startswith(line) for e in r.json()["errors"]), r.json()


def test_bad_bodies(api: Api) -> None:
    assert_guard_error(api("POST", "/v1/containers", body=b"{not json"), 400, "invalid_request")
    assert_guard_error(api("POST", "/v1/containers", body=b"[1]"), 400, "invalid_request")
    big = json.dumps(demo(tags={"k": "v" * (1024 * 1024)})).encode()
    assert_guard_error(api("POST", "/v1/containers", body=big), 413, "body_too_large")
    assert_guard_error(api("PATCH", "/v1/containers"), 405, "method_not_allowed")
    assert_guard_error(api("GET", "/v1/containers", token=None), 401, "unauthorized")
    assert api("GET", "/v1/containers").json() == {"containers": [], "next": None}


def test_concurrent_creates_respect_the_quota(api: Api) -> None:
    results: list[int] = []

    def one() -> None:
        results.append(api("POST", "/v1/containers", TOKEN_A, demo()).status)

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201, 201, 429, 429, 429]


def test_openapi_documents_the_container_endpoints(api: Api) -> None:
    doc = api("GET", "/v1/openapi.json", None).json()
    for path, methods in (
        ("/v1/containers", {"get", "post"}),
        ("/v1/containers/{id}", {"get", "delete"}),
        ("/v1/containers/{id}/stop", {"post"}),
        ("/v1/containers/{id}/start", {"post"}),
        ("/v1/containers/{id}/logs", {"get"}),
        ("/v1/containers/{id}/upgrade", {"post"}),
        ("/v1/containers/upgrade", {"post"}),
    ):
        assert methods <= set(doc["paths"][path]), path
    schemas = doc["components"]["schemas"]
    view = schemas["ContainerView"]
    made = api.create(tags={"k": "v"}, lifecycle={"sleep_after": "1m"})
    # What the API answers has exactly the documented fields (the schema is closed).
    assert set(made) == set(view["properties"]), set(made) ^ set(view["properties"])
    assert set(view["required"]) <= set(made)
    ports = view["properties"]["ports"]["additionalProperties"]["properties"]
    assert set(made["ports"]["http"]) == set(ports)
    # And the request schema names exactly the fields the validator takes.
    from guard.admin.container_body import FIELDS, UPGRADE_FIELDS

    assert set(schemas["Container"]["properties"]) == set(FIELDS)
    assert set(schemas["ContainerUpgrade"]["properties"]) == set(UPGRADE_FIELDS)


# ------------------------------------------------------------------------------ logs

CHATTY = [
    "/bin/sh",
    "-c",
    "echo hello-from-$GUARD_KEY; echo oops >&2;"
    " (while true; do echo tick; sleep 0.1; done) &"
    f" exec {sys.executable} -m guard.demo http",
]


def read_follow(api: Api, cid: str, tail: int, enough: Callable[[bytes], bool]) -> bytes:
    """``GET .../logs?follow=true&tail=N`` read raw (head and chunks) until ``enough``."""
    with socket.create_connection(("127.0.0.1", api.admin), timeout=10) as s:
        s.sendall(
            f"GET /v1/containers/{cid}/logs?follow=true&tail={tail} HTTP/1.1\r\nhost: a\r\n"
            f"authorization: Bearer {STAR}\r\n\r\n".encode()
        )
        got = b""
        while not enough(got):
            data = s.recv(65536)
            assert data, got[-300:]
            got += data
    return got


def test_logs_tail_follow_and_after_stop(api: Api) -> None:
    cid = api.create(command=CHATTY, query="?wait_ready=true")["id"]
    wait_for(lambda: b"tick" in api("GET", f"/v1/containers/{cid}/logs").body, 10, "output")
    r = api("GET", f"/v1/containers/{cid}/logs")
    assert r.status == 200 and r.header("content-type").startswith("text/plain")
    assert f"hello-from-{cid}\n".encode() in r.body and b"oops\n" in r.body
    for n in (1, 3):
        last = api("GET", f"/v1/containers/{cid}/logs?tail={n}").body
        assert last.count(b"\n") == n and last.endswith(b"\n"), last
    assert api("GET", f"/v1/containers/{cid}/logs?tail=0").body == b""

    # follow: a chunked stream of new output, for as long as the client reads.
    got = read_follow(api, cid, 0, lambda got: got.count(b"tick") >= 3)
    head = got.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200") and b"transfer-encoding: chunked" in head
    assert b"hello-from" not in got  # tail=0: only what came after

    assert api("POST", f"/v1/containers/{cid}/stop").json()["state"] == "stopped"
    kept = api("GET", f"/v1/containers/{cid}/logs").body
    assert f"hello-from-{cid}".encode() in kept  # what the last instance wrote
    assert_guard_error(api("GET", f"/v1/containers/{cid}/logs?tail=x"), 400, "invalid_request")
    assert_guard_error(
        api("GET", f"/v1/containers/{cid}/logs", TOKEN_B), 404, "container_not_found"
    )


# Numbered lines as fast as the pipe takes them, and a port so the container is ready.
COUNTER = [
    sys.executable,
    "-c",
    "import sys, threading, http.server, os\n"
    "srv = http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])),"
    " http.server.BaseHTTPRequestHandler)\n"
    "threading.Thread(target=srv.serve_forever, daemon=True).start()\n"
    "i = 0\n"
    "while True:\n"
    "    sys.stdout.write(f'{i}\\n'); sys.stdout.flush(); i += 1\n",
]


def dechunk(raw: bytes) -> bytes:
    """The data of a chunked body read so far (the last chunk may be cut short)."""
    out = bytearray()
    while b"\r\n" in raw:
        size_line, raw = raw.split(b"\r\n", 1)
        size = int(size_line, 16)
        out += raw[:size]
        if size == 0 or len(raw) < size + 2:
            break
        raw = raw[size + 2 :]
    return bytes(out)


def test_logs_follow_loses_and_repeats_nothing(api: Api) -> None:
    """The tail and the follow are one read: the lines a follow sends are consecutive,
    from the tail on, while the app writes thousands a second."""
    cid = api.create(command=COUNTER, query="?wait_ready=true")["id"]
    wait_for(lambda: len(api("GET", f"/v1/containers/{cid}/logs?tail=5").body) > 0, 10, "output")
    raw = read_follow(api, cid, 5, lambda got: got.count(b"\n") >= 3000)
    body = dechunk(raw.split(b"\r\n\r\n", 1)[1])
    lines = body.split(b"\n")[:-1]  # the last may be cut mid-line
    numbers = [int(x) for x in lines[:-1]]
    assert len(numbers) > 1000
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "a gap or a repeat"


# ------------------------------------------------------------------------------ tcp / udp


def _echo_tcp(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(payload)  # sent before the container exists: held with the connection
        got = b""
        while len(got) < len(payload):
            data = s.recv(65536)
            if not data:
                break
            got += data
        return got


def _echo_udp(port: int, payload: bytes) -> bytes:
    """Sent again every 0.5 s (datagrams before the listener is bound are lost)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        deadline = time.monotonic() + 20
        while True:
            s.sendto(payload, ("127.0.0.1", port))
            try:
                return s.recv(65536)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise


def test_tcp_and_udp_ports_get_listeners(tmp_path: Path, token_env: None) -> None:
    first = free_port()
    span = f"{first}-{first + 40}"
    admin, ctx = start_api(tmp_path, extra={"containers": {"tcp_ports": span}})
    with ctx as g:
        api = Api(g, admin)
        made = api.create(
            command=[*DEMO[:-1], "tcp"],
            ports={"db": {"protocol": "tcp", "internal_port": 5432}},
        )
        address = made["ports"]["db"]["address"]
        assert address.startswith("tcp://127.0.0.1:"), address
        tcp_port = int(address.rsplit(":", 1)[1])
        assert first <= tcp_port <= first + 40
        wait_for(lambda: _connects(tcp_port), 10, "the container's tcp listener")
        assert _echo_tcp(tcp_port, b"hello over tcp\n") == b"hello over tcp\n"
        api("POST", f"/v1/containers/{made['id']}/stop")
        assert _echo_tcp(tcp_port, b"wakes it\n") == b"wakes it\n"
        assert api.get(made["id"]).json()["state"] == "running"

        udp = api.create(
            command=[*DEMO[:-1], "udp"],
            ports={"dns": {"protocol": "udp", "internal_port": 53}},
            query="?wait_ready=true",
        )
        udp_port = int(udp["ports"]["dns"]["address"].rsplit(":", 1)[1])
        assert udp["ports"]["dns"]["address"].startswith("udp://") and udp_port != tcp_port
        assert _echo_udp(udp_port, b"ping") == b"pong"

        assert api("DELETE", f"/v1/containers/{made['id']}").status == 200
        wait_for(lambda: not _connects(tcp_port), 10, "the listener closed")
        # Freed: the next tcp container may get the port again.
        again = api.create(
            command=[*DEMO[:-1], "tcp"], ports={"db": {"protocol": "tcp", "internal_port": 1}}
        )
        assert int(again["ports"]["db"]["address"].rsplit(":", 1)[1]) == tcp_port


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_tcp_ports_need_a_range(api: Api) -> None:
    r = api(
        "POST", "/v1/containers", body=demo(ports={"db": {"protocol": "tcp", "internal_port": 1}})
    )
    assert_guard_error(r, 409, "containers_not_configured")
    assert "containers.tcp_ports" in r.json()["message"]


# ------------------------------------------------------------------------------ upgrades


class Traffic:
    """Requests to one container, one after another, until stopped: every answer kept."""

    def __init__(self, api: Api, cid: str) -> None:
        self.api = api
        self.cid = cid
        self.answers: list[tuple[int, str | None]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            r = self.api.through(self.cid)
            self.answers.append((r.status, r.header("x-demo-port")))

    def stop(self) -> list[tuple[int, str | None]]:
        self.stopped.set()
        self.thread.join()
        return self.answers


def _slow(api: Api, cid: str, out: list[Resp]) -> threading.Thread:
    t = threading.Thread(target=lambda: out.append(api.through(cid, "/slow?delay=1.5")))
    t.start()
    return t


@pytest.mark.parametrize("strategy", ["rolling", "immediate"])
def test_upgrade_one(api: Api, strategy: str) -> None:
    cid = api.create(env={"PYTHONPATH": str(REPO), "V": "1"}, query="?wait_ready=true")["id"]
    old_port = api.through(cid).header("x-demo-port")
    slow: list[Resp] = []
    in_flight = _slow(api, cid, slow)
    time.sleep(0.3)  # the slow request is on the old instance
    traffic = Traffic(api, cid) if strategy == "rolling" else None
    body = {"env": {"PYTHONPATH": str(REPO), "V": "2"}, "strategy": strategy}
    r = api("POST", f"/v1/containers/{cid}/upgrade", body=body)
    assert r.status == 200, r.body
    assert r.json()["env"]["V"] == "2" and r.json()["state"] == "running"
    new_port = api.through(cid).header("x-demo-port")
    assert new_port != old_port
    in_flight.join()
    # In-flight work finished on the old instance.
    assert slow[0].status == 200 and slow[0].header("x-demo-port") == old_port
    if traffic is not None:
        time.sleep(0.3)
        answers = traffic.stop()
        # Rolling: not one request failed, and the new instance took over.
        assert all(status == 200 for status, _ in answers), answers
        assert answers[-1][1] == new_port
    wait_for(lambda: api.get(cid).json()["instance"]["state"] == "ready", 10, "old one gone")


def test_failed_rolling_upgrade_keeps_the_old_instance(api: Api) -> None:
    cid = api.create(query="?wait_ready=true")["id"]
    old_port = api.through(cid).header("x-demo-port")
    r = api("POST", f"/v1/containers/{cid}/upgrade", body={"command": ["/bin/false"]})
    assert_guard_error(r, 503, "instance_start_failed")
    served = api.through(cid)
    assert served.status == 200 and served.header("x-demo-port") == old_port
    bad = api("POST", f"/v1/containers/{cid}/upgrade", body={"image": "busybox"})
    assert_guard_error(bad, 400, "invalid_request")
    assert_guard_error(
        api("POST", f"/v1/containers/{cid}/upgrade", body={"strategy": "fast"}),
        400,
        "invalid_request",
    )


def test_upgrade_by_tag_selector(api: Api) -> None:
    xs = [api.create(tags={"team": "x"}, query="?wait_ready=true")["id"] for _ in range(3)]
    y = api.create(tags={"team": "y"}, query="?wait_ready=true")["id"]
    mine = api.create(TOKEN_A, tags={"team": "x"}, query="?wait_ready=true")["id"]
    before = {c: api.through(c).header("x-demo-port") for c in [*xs, y, mine]}
    body = {
        "selector": {"team": "x"},
        "env": {"PYTHONPATH": str(REPO), "V": "2"},
        "strategy": {"rolling": {"max_unavailable": 2}},
    }
    # A tenant's selector reaches only its own containers.
    r = api("POST", "/v1/containers/upgrade", TOKEN_B, body)
    assert r.status == 200 and r.json() == {"upgraded": [], "failed": [], "skipped": []}
    r = api("POST", "/v1/containers/upgrade", STAR, body)
    assert r.status == 200, r.body
    assert r.json() == {"upgraded": [*xs, mine], "failed": [], "skipped": []}
    for c in [*xs, mine]:
        assert api.get(c).json()["env"]["V"] == "2"
        assert api.through(c).header("x-demo-port") != before[c]
    assert api.through(y).header("x-demo-port") == before[y]
    assert "V" not in api.get(y).json()["env"]


# ------------------------------------------------------------------------------ restarts


def test_a_restart_keeps_the_containers(tmp_path: Path, token_env: None) -> None:
    first = free_port()
    extra = {"containers": {"tcp_ports": f"{first}-{first + 40}"}}
    admin, ctx = start_api(tmp_path, extra=extra)
    with ctx as g:
        api = Api(g, admin)
        web = api.create(TOKEN_A, tags={"k": "v"}, lifecycle={"sleep_after": "1h"})
        tcp = api.create(
            command=[*DEMO[:-1], "tcp"], ports={"db": {"protocol": "tcp", "internal_port": 1}}
        )
        gone = api.create()
        assert api.through(web["id"]).status == 200
        assert api("DELETE", f"/v1/containers/{gone['id']}").status == 200
    kept = json.loads((tmp_path / "routes" / ".admin-containers.json").read_text())
    assert [c["id"] for c in kept["containers"]] == [web["id"], tcp["id"]]

    admin, ctx = start_api(tmp_path, extra=extra)
    with ctx as g:
        api = Api(g, admin)
        wait_for(lambda: _admin_up(admin), 10, "admin API")
        view = api.get(web["id"], TOKEN_A).json()
        assert view["state"] == "stopped" and view["tags"] == {"k": "v"}
        assert view["lifecycle"]["sleep_after"] == 3600
        assert api.through(web["id"]).status == 200  # woken by its address
        assert api.get(web["id"], TOKEN_A).json()["state"] == "running"
        assert_guard_error(api.get(gone["id"]), 404, "container_not_found")
        tcp_port = int(tcp["ports"]["db"]["address"].rsplit(":", 1)[1])
        assert api.get(tcp["id"]).json()["ports"]["db"]["address"].endswith(f":{tcp_port}")
        wait_for(lambda: _connects(tcp_port), 10, "its tcp listener again")
        assert _echo_tcp(tcp_port, b"still here\n") == b"still here\n"
        # A tenant's quota counts what was restored.
        assert api("GET", "/v1/tenants/a", TOKEN_A).json()["use"]["api_containers"] == 1


def test_the_store_round_trips_and_sets_a_broken_file_aside(tmp_path: Path) -> None:
    from guard.config.model import ContainerSpec, ReadyProbe, Resources
    from guard.control.container_store import ContainerStore
    from guard.control.containers import ContainerRecord, Lifecycle, PortSpec

    store = ContainerStore(tmp_path / ".admin-containers.json")
    assert store.load() == []
    record = ContainerRecord(
        id="0123456789abcdef",
        tenant="a",
        spec=ContainerSpec(
            driver="docker",
            image="img:1",
            command=("a", "b"),
            env=(("K", "V"),),
            port=53,
            resources=Resources(cpu=0.5, memory=64 << 20),
            ready=ReadyProbe(udp=b"\x00ping", ports=("web",)),
        ),
        ports=(PortSpec("dns", "udp", 53, 20001),),
        tags=(("k", "v"),),
        group="g",
        lifecycle=Lifecycle(sleep_after=30.0, destroy_after=None),
        created_at=1.5,
    )
    store.save([record])
    assert store.load() == [record]
    store.path.write_text("{not json")
    assert store.load() == []
    assert (tmp_path / ".admin-containers.json.broken").read_text() == "{not json"
    assert not store.path.exists()


# ------------------------------------------------------------------------------ many ports

PY = sys.executable
MANY = [
    "/bin/sh",
    "-c",
    f"{PY} -m guard.demo tcp --port $PORT_DB & {PY} -m guard.demo http --port $PORT_ADMIN &"
    f" exec {PY} -m guard.demo http",
]


def test_a_container_with_several_ports(tmp_path: Path, token_env: None) -> None:
    first = free_port()
    admin, ctx = start_api(tmp_path, extra={"containers": {"tcp_ports": f"{first}-{first + 40}"}})
    with ctx as g:
        api = Api(g, admin)
        ports = {
            "db": {"protocol": "tcp", "internal_port": 5432},
            "web": {"protocol": "http", "internal_port": 8080},
            "admin": {"protocol": "http", "internal_port": 9090},
        }
        made = api.create(command=MANY, ports=ports, query="?wait_ready=true")
        cid = made["id"]
        assert list(made["ports"]) == ["web", "admin", "db"]  # the main port first
        web = api.through(cid, port="web")
        assert web.status == 200
        # Ready means every tcp/http port accepts (the app opens them in any order).
        assert api.through(cid, port="admin").status == 200
        other = api.through(cid, port="admin").header("x-demo-port")
        assert other != web.header("x-demo-port")
        by_header = fetch(
            g.port, host="x", headers=[("x-guard-container", cid), ("x-guard-port", "admin")]
        )
        assert by_header.header("x-demo-port") == other
        default = fetch(g.port, host="x", headers=[("x-guard-container", cid)])
        assert default.header("x-demo-port") == web.header("x-demo-port")
        db = int(made["ports"]["db"]["address"].rsplit(":", 1)[1])
        wait_for(lambda: _connects(db), 10, "the db port's listener")  # Guard's listener
        assert _echo_tcp(db, b"tables\n") == b"tables\n"
        # One instance serves them all: a stop and one request to any port wakes it.
        api("POST", f"/v1/containers/{cid}/stop")
        assert _echo_tcp(db, b"woken\n") == b"woken\n"
        api("POST", f"/v1/containers/{cid}/stop")
        assert api.through(cid, port="admin").status == 200  # woken through the other port
        assert api.get(cid).json()["state"] == "running"
        assert_guard_error(api.through(cid, port="nope"), 404, "container_not_found")
