"""GET /v1/services and /v1/routes on the admin address, against a real Guard."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import GuardFactory
from tests.helpers import REPO, assert_guard_error, fetch, free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process driver")


@pytest.mark.parametrize("workers", [1, 2])
def test_services_and_routes(guard: GuardFactory, workers: int) -> None:
    admin = free_port()
    g = guard(
        routes=[
            {"name": "app", "match": {"host": "app.test"}, "service": "app"},
            {"name": "static", "match": {"host": "static.test"}, "service": "static"},
        ],
        services={
            "app": {
                "container": {
                    "driver": "process",
                    "command": [sys.executable, "-m", "guard.demo", "http"],
                    "env": {"PYTHONPATH": str(REPO)},
                    "ready": {"http": "/healthz"},
                },
                "scale": {"max": 3, "target_concurrency": 5},
            },
            "static": {
                "servers": [f"127.0.0.1:{free_port()}"],
                "health": {"tcp": True, "interval": "1s"},
            },
        },
        extra={
            "admin": {"address": f"127.0.0.1:{admin}"},
            "drivers": {"process": {}},
            "workers": workers,
        },
    )
    assert fetch(g.port, host="app.test", timeout=15).status == 200

    def get(path: str, method: str = "GET"):  # type: ignore[no-untyped-def]
        return fetch(admin, method, path, host="admin")

    listing = get("/v1/services").json()["services"]
    kinds = {s["name"]: s["kind"] for s in listing}
    assert kinds == {"app": "container", "static": "servers"}
    app = get("/v1/services/app").json()
    (inst,) = app["instances"]
    assert inst["state"] == "ready" and inst["address"].startswith("127.0.0.1:")
    assert app["scale"]["max"] == 3 and app["held"] == 0
    static = get("/v1/services/static").json()
    assert static["servers"][0]["checked"] is True
    routes = get("/v1/routes").json()["routes"]
    assert [r["name"] for r in routes] == ["app", "static"]
    one = get("/v1/routes/app").json()
    assert one["match"] == {"host": "app.test"} and one["source"].endswith("routes.yaml")
    assert_guard_error(get("/v1/services/nope"), 404, "service_not_found")
    assert_guard_error(get("/v1/routes/nope"), 404, "route_not_found")
    assert_guard_error(get("/v1/services/app", "DELETE"), 405, "method_not_allowed")
