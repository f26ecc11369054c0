"""The admin REST API's security and write half (issue 6, slice 1), against real Guards.

Bearer tokens (401 without, tenants see only their own, 404 for others'), PUT/DELETE of
routes and services (validated by the real loader, persisted under routes/, applied before
the answer, kept across a restart), tenant-scoped /v1/usage and /v1/tenants, and the
OpenAPI document.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guard.admin.auth import TokenError, TokenTable, load_tokens
from guard.admin.tenancy import admin_file, owner_of_name
from guard.config.model import AdminConfig, AdminToken
from guard.usage.ledger import InstanceSlice, TrafficSlice, UsageLedger
from tests.conftest import GuardProc, run_guard
from tests.helpers import (
    REPO,
    Conn,
    RawBackend,
    Resp,
    assert_guard_error,
    fetch,
    free_port,
    serve_keepalive,
    wait_for,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process driver")

STAR = "star-token-0123456789abcdef"
TOKEN_A = "tenant-a-token-0123456789"
TOKEN_B = "tenant-b-token-0123456789"
PARSER = "httptools"  # the admin server is the same whatever the proxy's parser


def call(
    admin: int,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Resp:
    hs = list(headers)
    if token is not None:
        hs.append(("authorization", f"Bearer {token}"))
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hs.append(("content-type", "application/json"))
    return fetch(admin, method, path, host="admin", headers=hs, body=data, timeout=15)


def tokens(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"token_env": env, "tenant": tenant} for env, tenant in pairs]


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # run_guard passes os.environ on to Guard.
    monkeypatch.setenv("GUARD_T_STAR", STAR)
    monkeypatch.setenv("GUARD_T_A", TOKEN_A)
    monkeypatch.setenv("GUARD_T_B", TOKEN_B)


@pytest.fixture
def backend(raw_backend: Callable[..., RawBackend]) -> RawBackend:
    return raw_backend(serve_keepalive(b"from-backend"), record=False)


@contextlib.contextmanager
def admin_guard(
    directory: Path,
    admin: int,
    *,
    extra: dict[str, Any] | None = None,
    routes: list[dict[str, Any]] | None = None,
    services: dict[str, dict[str, Any]] | None = None,
) -> Iterator[GuardProc]:
    cfg = dict(extra or {})
    cfg["admin"] = {"address": f"127.0.0.1:{admin}", **cfg.get("admin", {})}
    if routes is None:
        routes = [{"name": "base", "match": {"host": "base.test"}, "service": "base"}]
        services = {"base": {"servers": [f"127.0.0.1:{free_port()}"]}}
    with run_guard(directory, PARSER, routes, services or {}, extra=cfg) as g:
        yield g


# ------------------------------------------------------------------------------ unit


def test_every_token_is_compared_in_constant_time() -> None:
    calls: list[tuple[bytes, bytes]] = []

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        import hmac

        return hmac.compare_digest(a, b)

    table = TokenTable([("*", STAR.encode()), ("a", TOKEN_A.encode())], compare=counting)
    assert table.caller(f"Bearer {STAR}").tenant == "*"  # type: ignore[union-attr]
    assert len(calls) == 2  # the first entry matched; the second was compared anyway
    assert all(len(a) == len(b) == 32 for a, b in calls)  # digests: no length leak
    calls.clear()
    assert table.caller(f"bearer {TOKEN_A}").tenant == "a"  # type: ignore[union-attr]
    assert table.caller("Bearer wrong") is None
    assert table.caller(None) is None  # compared too: no fast path for a missing header
    assert table.caller(f"Basic {STAR}") is None
    assert len(calls) == 8


def test_hmac_compare_digest_is_what_checks_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    seen: list[int] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    table = TokenTable([("*", STAR.encode()), ("a", TOKEN_A.encode()), ("b", b"x" * 16)])
    assert table.caller(f"Bearer {TOKEN_A}").tenant == "a"  # type: ignore[union-attr]
    assert len(seen) == 3


def test_token_loading_names_the_key(tmp_path: Path) -> None:
    admin = AdminConfig(
        "0.0.0.0",
        9901,
        (AdminToken("*", token_env="T1"), AdminToken("a", token_file=tmp_path / "a.token")),
    )
    with pytest.raises(TokenError, match=r"admin\.tokens\[0\]\.token_env: .*T1 is not set"):
        load_tokens(admin, {})
    with pytest.raises(TokenError, match=r"admin\.tokens\[1\]\.token_file: cannot read"):
        load_tokens(admin, {"T1": STAR})
    (tmp_path / "a.token").write_text("short\n")
    with pytest.raises(TokenError, match=r"tokens\[1\]\.token_file: .*at least 16"):
        load_tokens(admin, {"T1": STAR})
    (tmp_path / "a.token").write_text(TOKEN_A + "\n")
    table = load_tokens(admin, {"T1": STAR})
    assert table.tenants == {"a"}
    bad = AdminConfig("127.0.0.1", 1, (AdminToken("../x", token_env="T1"),))
    with pytest.raises(TokenError, match=r"tokens\[0\]\.tenant"):
        load_tokens(bad, {"T1": STAR})


def test_admin_files_name_their_owner() -> None:
    assert admin_file("*") == "_admin.yaml" and owner_of_name("_admin.yaml") == "*"
    assert admin_file("acme") == "_admin-acme.yaml" and owner_of_name("_admin-acme.yaml") == "acme"
    assert owner_of_name("routes.yaml") is None and owner_of_name("_admin-.yaml") is None


def test_guard_run_refuses_a_missing_token_and_serves_remote_with_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from guard.cli import _admin_refusal
    from guard.config import load_config

    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "r.yaml").write_text("{}\n")
    cfg = {
        "routes": "routes",
        "listeners": {"web": {"protocol": "http", "address": f"127.0.0.1:{free_port()}"}},
        "admin": {
            "address": f"0.0.0.0:{free_port()}",
            "tokens": [{"token_env": "GUARD_T_MISSING", "tenant": "*"}],
        },
    }
    (tmp_path / "guard.yaml").write_text(json.dumps(cfg))
    monkeypatch.delenv("GUARD_T_MISSING", raising=False)
    out = subprocess.run(
        [sys.executable, "-m", "guard", "run", "--config", str(tmp_path / "guard.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2, out.stderr
    assert "admin.tokens[0].token_env" in out.stderr and "GUARD_T_MISSING" in out.stderr
    # With the token there, a non-loopback admin address is fine: tokens guard it.
    monkeypatch.setenv("GUARD_T_MISSING", STAR)
    assert _admin_refusal(load_config(tmp_path / "guard.yaml")) is None


# ------------------------------------------------------------------- real Guards


def test_tokens_guard_v1_but_not_health_metrics_or_openapi(tmp_path: Path, token_env: None) -> None:
    admin = free_port()
    with admin_guard(
        tmp_path / "g", admin, extra={"admin": {"tokens": tokens(("GUARD_T_STAR", "*"))}}
    ):
        for path in ("/v1/routes", "/v1/services", "/v1/routes/base", "/v1/tenants", "/v1/x"):
            for token in (None, "wrong-token-0123456789"):
                r = call(admin, "GET", path, token)
                assert_guard_error(r, 401, "unauthorized")
                assert r.header("www-authenticate") == 'Bearer realm="guard"'
        r = call(admin, "GET", "/v1/routes", headers=(("authorization", f"Basic {STAR}"),))
        assert_guard_error(r, 401, "unauthorized")
        assert_guard_error(
            call(admin, "PUT", "/v1/routes/x", None, {"listener": "web"}), 401, "unauthorized"
        )
        assert call(admin, "GET", "/healthz").status == 200
        assert call(admin, "GET", "/metrics").status == 200
        assert [r["name"] for r in call(admin, "GET", "/v1/routes", STAR).json()["routes"]] == [
            "base"
        ]
        doc = call(admin, "GET", "/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert {
        "/v1/openapi.json",
        "/v1/usage",
        "/v1/routes",
        "/v1/routes/{name}",
        "/v1/services",
        "/v1/services/{name}",
        "/v1/tenants",
        "/v1/tenants/{name}",
    } <= set(doc["paths"])
    assert set(doc["paths"]["/v1/routes/{name}"]) >= {"get", "put", "delete"}
    for schema in ("Route", "Service", "Usage", "Error", "RouteView", "ServiceView"):
        assert schema in doc["components"]["schemas"]
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(doc)


def test_star_token_crud_serves_at_once_and_survives_restart(
    tmp_path: Path, token_env: None, backend: RawBackend
) -> None:
    admin = free_port()
    directory = tmp_path / "g"
    extra = {
        "admin": {"tokens": tokens(("GUARD_T_STAR", "*"))},
        "drivers": {"process": {}},
    }
    service = {"servers": [backend.address]}
    route = {"listener": "web", "match": {"host": "api.test"}, "service": "api"}
    admin_yaml = directory / "routes" / "_admin.yaml"
    with admin_guard(directory, admin, extra=extra) as g:
        assert_guard_error(fetch(g.port, host="api.test"), 404, "route_not_found")
        r = call(admin, "PUT", "/v1/services/api", STAR, service)
        assert r.status == 200, r.body
        assert r.json()["kind"] == "servers" and r.json()["owner"] == "*"
        r = call(admin, "PUT", "/v1/routes/api", STAR, route)
        assert r.status == 200, r.body
        view = r.json()
        assert view["name"] == "api" and view["source"].endswith("routes/_admin.yaml")
        # Applied before the answer: the very next request is served by it.
        resp = fetch(g.port, host="api.test")
        assert resp.status == 200 and resp.body == b"from-backend"
        assert admin_yaml.is_file()
        assert not list(admin_yaml.parent.glob(".*.tmp"))

        # A bad body: the loader's own lines, and nothing changes.
        before = admin_yaml.read_bytes()
        bad = {"listener": "nope", "match": {"host": "bad.test", "colour": 1}, "service": "api"}
        r = call(admin, "PUT", "/v1/routes/bad", STAR, bad)
        assert_guard_error(r, 400, "invalid_config")
        errors = r.json()["errors"]
        assert any(
            line.startswith("routes/_admin.yaml: routes[1].listener: no listener 'nope'")
            for line in errors
        ), errors
        assert "routes/_admin.yaml: routes[1].match: unknown key 'colour'" in errors
        assert admin_yaml.read_bytes() == before
        assert_guard_error(call(admin, "GET", "/v1/routes/bad", STAR), 404, "route_not_found")
        r = call(admin, "PUT", "/v1/routes/api", STAR, {**route, "name": "other"})
        assert_guard_error(r, 400, "invalid_config")
        assert_guard_error(
            call(admin, "PUT", "/v1/routes/api", STAR, b"{not json"), 400, "invalid_json"
        )
        r = call(admin, "PUT", "/v1/routes/api", STAR, b"[]")
        assert_guard_error(r, 400, "invalid_json")
        # Hand-written files are the operator's: the API does not rewrite them.
        r = call(admin, "PUT", "/v1/routes/base", STAR, route | {"match": {"host": "b.test"}})
        assert_guard_error(r, 405, "method_not_allowed")
        assert r.header("allow") == "GET, HEAD" and "routes/routes.yaml" in r.json()["message"]
        r = call(admin, "DELETE", "/v1/services/base", STAR)
        assert_guard_error(r, 405, "method_not_allowed")
        # Validated, but the reload refuses it (no control plane in this Guard): 409 and
        # the file as it was.
        container = {
            "container": {
                "driver": "process",
                "command": [sys.executable, "-m", "guard.demo", "http"],
            }
        }
        r = call(admin, "PUT", "/v1/services/boxed", STAR, container)
        assert_guard_error(r, 409, "reload_rejected")
        assert "control plane" in " ".join(r.json()["errors"])
        assert admin_yaml.read_bytes() == before
        # GET, edit, PUT: the read-only fields of the GET form are accepted back.
        got = call(admin, "GET", "/v1/routes/api", STAR).json()
        got["priority"] = 5
        r = call(admin, "PUT", "/v1/routes/api", STAR, got)
        assert r.status == 200 and r.json()["priority"] == 5, r.body

    # Restart: the file under routes/ brings the route back.
    with admin_guard(directory, admin, extra=extra) as g:
        assert fetch(g.port, host="api.test").body == b"from-backend"
        assert call(admin, "GET", "/v1/routes/api", STAR).json()["priority"] == 5
        # A service a route uses cannot go first.
        r = call(admin, "DELETE", "/v1/services/api", STAR)
        assert_guard_error(r, 400, "invalid_config")
        assert any("no service 'api'" in line for line in r.json()["errors"])
        r = call(admin, "DELETE", "/v1/routes/api", STAR)
        assert r.status == 200 and r.json() == {"deleted": "route", "name": "api"}
        assert_guard_error(fetch(g.port, host="api.test"), 404, "route_not_found")
        assert call(admin, "DELETE", "/v1/services/api", STAR).status == 200
        assert not admin_yaml.exists()  # nothing left in it
        assert_guard_error(call(admin, "DELETE", "/v1/routes/api", STAR), 404, "route_not_found")
        assert "base" in [
            s["name"] for s in call(admin, "GET", "/v1/services", STAR).json()["services"]
        ]


def _ledger(path: Path) -> None:
    """Usage of two tenants (and one row without a tenant), as the metering records it."""
    ledger = UsageLedger(path)
    ledger.open()
    now = time.time()
    for tenant, service in (("a", "svc-a"), ("b", "svc-b"), (None, "base")):
        ledger.record(
            InstanceSlice(
                id=f"{service}-i@1",
                instance=f"{service}-i",
                service=service,
                tenant=tenant,
                driver="process",
                start=now - 60,
                end=now - 30,
                cpu_limit=0.5,
                memory_limit=64 << 20,
                cpu_seconds=1.0,
                memory_bytes_avg=32 << 20,
            )
        )
        ledger.record(
            TrafficSlice(
                id=f"{service}#0@1",
                route=service,
                service=service,
                tenant=tenant,
                start=now - 60,
                end=now - 30,
                requests=7,
                bytes_in=100,
                bytes_out=200,
            )
        )
    ledger.flush()
    ledger.close()


def test_tenants_see_and_change_only_their_own(tmp_path: Path, token_env: None) -> None:
    admin = free_port()
    directory = tmp_path / "g"
    ledger = tmp_path / "usage.sqlite"
    _ledger(ledger)
    extra = {
        "admin": {"tokens": tokens(("GUARD_T_STAR", "*"), ("GUARD_T_A", "a"), ("GUARD_T_B", "b"))},
        "drivers": {"process": {}},
        "usage": {"ledger": str(ledger), "flush": "1s"},
        "tenants": {"a": {"max_containers": 4, "max_cpu": 2, "max_memory": "1GiB"}},
    }
    demo = {
        "container": {
            "driver": "process",
            "command": [sys.executable, "-m", "guard.demo", "http"],
            "env": {"PYTHONPATH": str(REPO)},
            "ready": {"http": "/healthz"},
            "resources": {"cpu": 0.25, "memory": "64MiB"},
        },
        "scale": {"max": 2},
    }
    with admin_guard(directory, admin, extra=extra) as g:
        assert call(admin, "PUT", "/v1/services/svc-a", TOKEN_A, demo).status == 200
        route_a = {"listener": "web", "match": {"host": "a.test"}, "service": "svc-a"}
        r = call(admin, "PUT", "/v1/routes/route-a", TOKEN_A, route_a)
        assert r.status == 200, r.body
        assert r.json()["owner"] == "a" and r.json()["source"].endswith("_admin-a.yaml")
        assert (directory / "routes" / "_admin-a.yaml").is_file()
        assert fetch(g.port, host="a.test", timeout=15).status == 200  # woke a's container

        # B cannot see, change or delete A's objects: 404 as if they did not exist.
        assert call(admin, "GET", "/v1/routes", TOKEN_B).json() == {"routes": []}
        assert call(admin, "GET", "/v1/services", TOKEN_B).json() == {"services": []}
        assert_guard_error(
            call(admin, "GET", "/v1/routes/route-a", TOKEN_B), 404, "route_not_found"
        )
        assert_guard_error(
            call(admin, "GET", "/v1/services/svc-a", TOKEN_B), 404, "service_not_found"
        )
        assert_guard_error(call(admin, "GET", "/v1/routes/base", TOKEN_B), 404, "route_not_found")
        r = call(admin, "PUT", "/v1/routes/route-a", TOKEN_B, route_a | {"service": "svc-b"})
        assert_guard_error(r, 404, "route_not_found")
        assert_guard_error(
            call(admin, "DELETE", "/v1/routes/route-a", TOKEN_B), 404, "route_not_found"
        )
        assert_guard_error(
            call(admin, "DELETE", "/v1/services/svc-a", TOKEN_B), 404, "service_not_found"
        )
        # ... nor route to A's service, nor take A's host.
        r = call(admin, "PUT", "/v1/routes/route-b", TOKEN_B, route_a)
        assert_guard_error(r, 400, "invalid_config")
        assert r.json()["errors"] == [
            "routes/_admin-b.yaml: routes[0].service: tenant b has no service 'svc-a' (a"
            " tenant's routes use the tenant's own services)",
            "routes/_admin-b.yaml: routes[0].match.host: 'a.test' is already routed on"
            " listener 'web' by another owner",
        ]
        assert not (directory / "routes" / "_admin-b.yaml").exists()
        assert fetch(g.port, host="a.test", timeout=15).status == 200

        # A sees its own; * sees everything with its owner.
        assert [r["name"] for r in call(admin, "GET", "/v1/routes", TOKEN_A).json()["routes"]] == [
            "route-a"
        ]
        owners = {
            r["name"]: r["owner"] for r in call(admin, "GET", "/v1/routes", STAR).json()["routes"]
        }
        assert owners == {"base": None, "route-a": "a"}

        # Usage: a's token reads a's rows only, whatever it asks for.
        for by, query, want in (
            ("tenant", "by=tenant", {"a"}),
            ("tenant", "by=tenant&tenant=b", {"a"}),
            ("service", "by=service", {"svc-a"}),
        ):
            rows = call(admin, "GET", f"/v1/usage?{query}", TOKEN_A).json()["rows"]
            assert {row[by] for row in rows} == want, (query, rows)
        rows = call(admin, "GET", "/v1/usage?by=tenant", TOKEN_B).json()["rows"]
        assert [row["tenant"] for row in rows] == ["b"]
        rows = call(admin, "GET", "/v1/usage?by=tenant", STAR).json()["rows"]
        assert {row["tenant"] for row in rows} == {"a", "b", None}

        # Tenants: quota and use; B cannot see A.
        ta = call(admin, "GET", "/v1/tenants/a", TOKEN_A).json()
        assert ta["quota"] == {
            "max_containers": 4,
            "max_cpu": 2.0,
            "max_memory": 1 << 30,
            "enforced": True,  # on POST /v1/containers
        }
        assert ta["use"]["containers"] == 1 and ta["use"]["cpu"] == 0.25
        assert ta["use"]["memory"] == 64 << 20
        assert ta["services"] == ["svc-a"] and ta["routes"] == ["route-a"]
        assert_guard_error(call(admin, "GET", "/v1/tenants/a", TOKEN_B), 404, "tenant_not_found")
        assert [
            t["name"] for t in call(admin, "GET", "/v1/tenants", TOKEN_B).json()["tenants"]
        ] == ["b"]
        assert {t["name"] for t in call(admin, "GET", "/v1/tenants", STAR).json()["tenants"]} == {
            "a",
            "b",
        }

        # * may change a tenant's objects; they stay in the tenant's file.
        r = call(admin, "PUT", "/v1/routes/route-a", STAR, route_a | {"priority": 3})
        assert r.status == 200 and r.json()["owner"] == "a", r.body
        # A deletes its own: gone from serving.
        assert call(admin, "DELETE", "/v1/routes/route-a", TOKEN_A).status == 200
        assert_guard_error(fetch(g.port, host="a.test"), 404, "route_not_found")


def test_writes_need_a_route_directory(tmp_path: Path) -> None:
    admin = free_port()
    with admin_guard(tmp_path / "g", admin, extra={"routes": "routes/routes.yaml"}):
        r = call(admin, "PUT", "/v1/routes/x", None, {"listener": "web", "service": "base"})
        assert_guard_error(r, 409, "routes_not_a_directory")
        # Without tokens the loopback API is open: reads work as before.
        assert call(admin, "GET", "/v1/routes").json()["routes"][0]["name"] == "base"
        # Bodies over 1 MiB are refused before they are read; bodies must be JSON.
        with Conn(admin) as c:  # refused on its Content-Length, before any body is sent
            c.send(
                b"PUT /v1/routes/x HTTP/1.1\r\nhost: admin\r\ncontent-type: application/json"
                b"\r\ncontent-length: 1048577\r\n\r\n"
            )
            assert_guard_error(c.read_response(), 413, "body_too_large")
        r = fetch(admin, "PUT", "/v1/routes/x", "admin", (("content-type", "text/yaml"),), b"{}")
        assert_guard_error(r, 415, "unsupported_media_type")


def test_put_under_the_supervisor(tmp_path: Path, backend: RawBackend) -> None:
    """workers: 2: the supervisor validates and signals; workers apply within moments."""
    admin = free_port()
    with admin_guard(tmp_path / "g", admin, extra={"workers": 2}) as g:
        # A worker still starting its interpreter would die of the SIGHUP (its handler is
        # not installed yet; the supervisor restarts it): let both come up first.
        wait_for(lambda: "worker 1: listener" in g.stderr, 10, "worker 1 listening")
        assert (
            call(admin, "PUT", "/v1/services/api", None, {"servers": [backend.address]}).status
            == 200
        )
        route = {"listener": "web", "match": {"host": "api.test"}, "service": "api"}
        r = call(admin, "PUT", "/v1/routes/api", None, route)
        assert r.status == 200 and r.json()["source"].endswith("_admin.yaml"), r.body

        def served() -> bool:
            return all(fetch(g.port, host="api.test").status == 200 for _ in range(8))

        wait_for(served, 5, "both workers serve the new route")


def test_route_puts_under_load_fail_no_request(tmp_path: Path, backend: RawBackend) -> None:
    """Routes and services written through the API while clients keep requesting: every
    write is applied (the new routes answer) and no request of the load fails."""
    import threading

    admin = free_port()
    routes = [{"name": "base", "match": {"host": "base.test"}, "service": "base"}]
    services = {"base": {"servers": [backend.address]}}
    with admin_guard(tmp_path / "g", admin, routes=routes, services=services) as g:
        stop = threading.Event()
        failures: list[str] = []
        counts = [0] * 4

        def load(slot: int) -> None:
            conn = Conn(g.port)
            try:
                while not stop.is_set():
                    conn.request(host="base.test")
                    resp = conn.read_response()
                    if resp.status != 200:
                        failures.append(f"{resp.status} {resp.body[:80]!r}")
                    counts[slot] += 1
                    if resp.header("connection") == "close":  # max_requests_per_connection
                        conn.close()
                        conn = Conn(g.port)
            except Exception as e:  # a reset or a close without notice is a failure
                failures.append(repr(e))
            finally:
                conn.close()

        threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            for i in range(15):
                r = call(admin, "PUT", f"/v1/services/s{i}", None, {"servers": [backend.address]})
                assert r.status == 200, r.body
                route = {"listener": "web", "match": {"host": f"r{i}.test"}, "service": f"s{i}"}
                r = call(admin, "PUT", f"/v1/routes/r{i}", None, route)
                assert r.status == 200, r.body
                assert fetch(g.port, host=f"r{i}.test").status == 200  # applied on answer
                if i % 3 == 2:  # and some go again
                    assert call(admin, "DELETE", f"/v1/routes/r{i - 1}").status == 200
                    assert fetch(g.port, host=f"r{i - 1}.test").status == 404
        finally:
            stop.set()
            for t in threads:
                t.join(10)
    assert not failures, failures[:5]
    assert min(counts) > 0, counts  # every client kept getting answers
