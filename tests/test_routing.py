"""Unit tests for guard.routing: host/path/method/header matching and precedence."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from guard.config.model import RouteConfig, RouteMatch
from guard.routing import (
    CompiledRoute,
    HttpRouteTable,
    RouteMatchResult,
    build_http_tables,
    normalize_host,
)
from guard.routing import table as table_module


@pytest.fixture(autouse=True, params=["lengths", "walk"])
def probe_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every test against both prefix probing strategies of a host bucket."""
    if request.param == "walk":
        monkeypatch.setattr(table_module, "_MAX_LENGTH_PROBES", -1)
    return request.param


def route(
    name: str,
    host: str | None = None,
    *,
    prefix: str | None = None,
    path: str | None = None,
    methods: Sequence[str] = (),
    headers: Sequence[tuple[str, str]] = (),
    priority: int = 0,
    strip: bool = False,
    listener: str = "web",
    service: str | None = None,
) -> RouteConfig:
    return RouteConfig(
        name=name,
        listener=listener,
        service=service or name,
        match=RouteMatch(
            host=host,
            path_prefix=prefix,
            path=path,
            methods=tuple(methods),
            headers=tuple(headers),
        ),
        strip_prefix=strip,
        priority=priority,
    )


def table(*routes: RouteConfig) -> HttpRouteTable[str]:
    targets = {r.service: f"svc:{r.service}" for r in routes}
    tables = build_http_tables(routes, targets)
    assert set(tables) == {"web"}
    return tables["web"]


def hit(
    t: HttpRouteTable[str],
    host: bytes,
    path: bytes = b"/",
    method: bytes = b"GET",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> str | None:
    result = t.match(host, path, method, headers or [])
    return None if result is None else result.route.name


# ------------------------------------------------------------------------------ hosts


def test_exact_host() -> None:
    t = table(route("app", "app.localhost"))
    assert hit(t, b"app.localhost") == "app"
    assert hit(t, b"other.localhost") is None
    assert hit(t, b"x.app.localhost") is None
    assert hit(t, b"") is None


def test_host_case_insensitive_both_sides() -> None:
    t = table(route("app", "App.LocalHost"))
    assert hit(t, b"APP.localhost") == "app"
    assert hit(t, b"app.LOCALHOST:8080") == "app"


def test_host_port_ignored() -> None:
    t = table(route("app", "app.localhost"))
    assert hit(t, b"app.localhost:8080") == "app"
    assert hit(t, b"app.localhost:80") == "app"
    assert hit(t, b"app.localhost.") == "app"  # FQDN trailing dot


def test_ipv6_host() -> None:
    t = table(route("v6", "[::1]"), route("v6b", "2001:db8::1"), route("v4", "127.0.0.1"))
    assert hit(t, b"[::1]:8080") == "v6"
    assert hit(t, b"[::1]") == "v6"
    assert hit(t, b"[2001:DB8::1]:443") == "v6b"
    assert hit(t, b"127.0.0.1:8080") == "v4"
    assert hit(t, b"[::2]:8080") is None


def test_normalize_host() -> None:
    assert normalize_host(b"App.Localhost:8080") == b"app.localhost"
    assert normalize_host(b"[::1]:8080") == b"::1"
    assert normalize_host(b"[::1]") == b"::1"
    assert normalize_host(b"example.com.") == b"example.com"
    assert normalize_host(b"") == b""


def test_wildcard_host() -> None:
    t = table(route("wild", "*.example.com"))
    assert hit(t, b"a.example.com") == "wild"
    assert hit(t, b"a.b.example.com") == "wild"  # like Traefik: any depth
    assert hit(t, b"A.Example.COM:443") == "wild"
    assert hit(t, b"example.com") is None  # needs at least one more label
    assert hit(t, b"badexample.com") is None
    assert hit(t, b"a.example.org") is None


def test_longer_wildcard_wins() -> None:
    t = table(route("short", "*.example.com"), route("long", "*.b.example.com"))
    assert hit(t, b"a.b.example.com") == "long"
    assert hit(t, b"x.a.b.example.com") == "long"
    assert hit(t, b"b.example.com") == "short"
    assert hit(t, b"a.c.example.com") == "short"
    # order of definition does not matter
    t = table(route("long", "*.b.example.com"), route("short", "*.example.com"))
    assert hit(t, b"a.b.example.com") == "long"


def test_capture_host() -> None:
    t = table(route("sbx", "{key}.sandbox.localhost"))
    result = t.match(b"Alice.Sandbox.localhost:8080", b"/", b"GET", [])
    assert isinstance(result, RouteMatchResult)
    assert result.route.name == "sbx"
    assert result.key == "alice"
    assert hit(t, b"sandbox.localhost") is None  # no label to capture
    assert hit(t, b".sandbox.localhost") is None  # empty key
    assert hit(t, b"a.b.sandbox.localhost") is None  # exactly one label
    assert hit(t, b"a.sandbox.localhost.evil") is None


def test_key_is_none_without_capture() -> None:
    t = table(route("app", "app.localhost"), route("any"))
    for host in (b"app.localhost", b"other"):
        result = t.match(host, b"/", b"GET", [])
        assert result is not None
        assert result.key is None


def test_any_host() -> None:
    t = table(route("any"))
    assert hit(t, b"whatever.example") == "any"
    assert hit(t, b"") == "any"
    assert hit(t, b"[::1]:1") == "any"
    assert hit(t, b"10.0.0.1") == "any"
    t = table(route("star", "*"))
    assert hit(t, b"whatever") == "star"


def test_host_precedence_exact_capture_wildcard_any() -> None:
    routes = [
        route("any"),
        route("wild", "*.sbx.localhost"),
        route("wild2", "*.localhost"),
        route("cap", "{key}.sbx.localhost"),
        route("exact", "a.sbx.localhost"),
    ]
    t = table(*routes)
    assert hit(t, b"a.sbx.localhost") == "exact"
    assert hit(t, b"b.sbx.localhost") == "cap"
    assert hit(t, b"x.b.sbx.localhost") == "wild"
    assert hit(t, b"x.localhost") == "wild2"
    assert hit(t, b"elsewhere") == "any"
    # definition order must not matter for host specificity
    t = table(*reversed(routes))
    assert hit(t, b"a.sbx.localhost") == "exact"
    assert hit(t, b"b.sbx.localhost") == "cap"


def test_host_specificity_beats_path_specificity() -> None:
    t = table(route("any-deep", prefix="/api/v1/users"), route("host-root", "app.localhost"))
    assert hit(t, b"app.localhost", b"/api/v1/users/1") == "host-root"
    assert hit(t, b"other", b"/api/v1/users/1") == "any-deep"


def test_fallback_to_less_specific_host_bucket() -> None:
    t = table(
        route("exact-api", "app.localhost", prefix="/api"),
        route("cap-admin", "{key}.localhost", prefix="/admin"),
        route("wild-static", "*.localhost", prefix="/static"),
        route("any-root"),
    )
    assert hit(t, b"app.localhost", b"/api/x") == "exact-api"
    assert hit(t, b"app.localhost", b"/admin") == "cap-admin"
    assert hit(t, b"app.localhost", b"/static/a.css") == "wild-static"
    assert hit(t, b"app.localhost", b"/other") == "any-root"


def test_fallback_on_method_and_header_mismatch() -> None:
    t = table(
        route("exact-post", "app.localhost", methods=["POST"]),
        route("exact-canary", "app.localhost", prefix="/x", headers=[("x-canary", "1")]),
        route("wild", "*.localhost"),
    )
    assert hit(t, b"app.localhost", b"/", b"POST") == "exact-post"
    assert hit(t, b"app.localhost", b"/", b"GET") == "wild"
    assert hit(t, b"app.localhost", b"/x", b"GET", [(b"x-canary", b"1")]) == "exact-canary"
    assert hit(t, b"app.localhost", b"/x", b"GET") == "wild"


def test_no_fallback_without_catch_all() -> None:
    t = table(route("api", "app.localhost", prefix="/api"))
    assert hit(t, b"app.localhost", b"/web") is None
    assert hit(t, b"other", b"/api") is None


# ------------------------------------------------------------------------------ paths


def test_default_prefix_matches_everything() -> None:
    t = table(route("root", "h"))
    for path in (b"/", b"/a", b"/a/b/c", b"//x", b""):
        assert hit(t, b"h", path) == "root"


def test_prefix_segment_boundary() -> None:
    t = table(route("api", prefix="/api"))
    assert hit(t, b"h", b"/api") == "api"
    assert hit(t, b"h", b"/api/") == "api"
    assert hit(t, b"h", b"/api/x/y") == "api"
    assert hit(t, b"h", b"/apix") is None
    assert hit(t, b"h", b"/ap") is None
    assert hit(t, b"h", b"/") is None
    assert hit(t, b"h", b"/v1/api") is None


def test_prefix_with_trailing_slash_is_plain_string_prefix() -> None:
    t = table(route("api", prefix="/api/"))
    assert hit(t, b"h", b"/api/") == "api"
    assert hit(t, b"h", b"/api/x") == "api"
    assert hit(t, b"h", b"/api//x") == "api"
    assert hit(t, b"h", b"/api") is None
    assert hit(t, b"h", b"/apix") is None


def test_longest_prefix_wins() -> None:
    t = table(
        route("root", prefix="/"),
        route("api", prefix="/api"),
        route("v1", prefix="/api/v1"),
        route("v1-users", prefix="/api/v1/users"),
        route("v1-slash", prefix="/api/v1/"),
    )
    assert hit(t, b"h", b"/api/v1/users/42") == "v1-users"
    assert hit(t, b"h", b"/api/v1/users") == "v1-users"
    assert hit(t, b"h", b"/api/v1/usersx") == "v1-slash"  # "/api/v1/" is longer than "/api/v1"
    assert hit(t, b"h", b"/api/v1/") == "v1-slash"
    assert hit(t, b"h", b"/api/v1") == "v1"
    assert hit(t, b"h", b"/api/v2") == "api"
    assert hit(t, b"h", b"/apiv1") == "root"
    assert hit(t, b"h", b"/") == "root"


def test_longest_prefix_is_order_independent() -> None:
    t = table(route("v1", prefix="/api/v1"), route("api", prefix="/api"), route("root"))
    assert hit(t, b"h", b"/api/v1/x") == "v1"
    assert hit(t, b"h", b"/api/x") == "api"


def test_prefix_with_double_slashes() -> None:
    t = table(route("a", prefix="/a//b"), route("root"))
    assert hit(t, b"h", b"/a//b/c") == "a"
    assert hit(t, b"h", b"/a//bc") == "root"
    assert hit(t, b"h", b"/a/b") == "root"


def test_exact_path_beats_any_prefix() -> None:
    t = table(
        route("long-prefix", prefix="/api/v1/users"),
        route("exact", path="/api/v1/users"),
        route("root"),
    )
    assert hit(t, b"h", b"/api/v1/users") == "exact"
    assert hit(t, b"h", b"/api/v1/users/1") == "long-prefix"
    assert hit(t, b"h", b"/api/v1/users/") == "long-prefix"


def test_exact_path_is_exact() -> None:
    t = table(route("exact", path="/healthz"))
    assert hit(t, b"h", b"/healthz") == "exact"
    assert hit(t, b"h", b"/healthz/") is None
    assert hit(t, b"h", b"/healthzz") is None
    assert hit(t, b"h", b"/HEALTHZ") is None  # paths are case-sensitive


def test_exact_path_falls_back_to_prefix_on_method() -> None:
    t = table(route("exact", path="/x", methods=["POST"]), route("pre", prefix="/x"))
    assert hit(t, b"h", b"/x", b"POST") == "exact"
    assert hit(t, b"h", b"/x", b"GET") == "pre"


def test_shorter_prefix_when_longer_fails_conditions() -> None:
    t = table(
        route("deep-post", prefix="/api/v1", methods=["POST"]),
        route("api", prefix="/api"),
    )
    assert hit(t, b"h", b"/api/v1/x", b"POST") == "deep-post"
    assert hit(t, b"h", b"/api/v1/x", b"GET") == "api"


def test_path_longer_than_any_prefix() -> None:
    t = table(route("a", prefix="/a"), route("ab", prefix="/a/b"))
    deep = b"/a/b" + b"/seg" * 500
    assert hit(t, b"h", deep) == "ab"
    assert hit(t, b"h", b"/" * 2000) is None


# ------------------------------------------------------------------ methods and headers


def test_methods() -> None:
    t = table(route("rw", methods=["GET", "POST"]))
    assert hit(t, b"h", b"/", b"GET") == "rw"
    assert hit(t, b"h", b"/", b"POST") == "rw"
    assert hit(t, b"h", b"/", b"DELETE") is None


def test_empty_methods_is_any() -> None:
    t = table(route("any"))
    for m in (b"GET", b"PURGE", b"OPTIONS"):
        assert hit(t, b"h", b"/", m) == "any"


def test_headers_all_must_match() -> None:
    t = table(route("canary", headers=[("x-canary", "1"), ("x-team", "blue")]), route("base"))
    both = [(b"x-canary", b"1"), (b"x-team", b"blue")]
    assert hit(t, b"h", b"/", b"GET", both) == "canary"
    assert hit(t, b"h", b"/", b"GET", [(b"x-canary", b"1")]) == "base"
    assert hit(t, b"h", b"/", b"GET", [(b"x-canary", b"2"), (b"x-team", b"blue")]) == "base"
    assert hit(t, b"h", b"/", b"GET", [(b"x-canary", b"1"), (b"x-team", b"Blue")]) == "base"
    assert hit(t, b"h", b"/", b"GET", [(b"x-team", b"blue"), (b"x", b""), (b"x-canary", b"1")]) == (
        "canary"
    )


def test_header_names_lowercased_from_config() -> None:
    t = table(route("canary", headers=[("X-Canary", "1")]))
    assert hit(t, b"h", b"/", b"GET", [(b"x-canary", b"1")]) == "canary"


def test_repeated_header_any_value_matches() -> None:
    t = table(route("canary", headers=[("x-canary", "1")]))
    assert hit(t, b"h", b"/", b"GET", [(b"x-canary", b"0"), (b"x-canary", b"1")]) == "canary"


def test_more_conditions_before_fewer() -> None:
    t = table(
        route("plain", prefix="/api", priority=100),
        route("method", prefix="/api", methods=["GET"]),
        route("method-header", prefix="/api", methods=["GET"], headers=[("x-a", "1")]),
        route("two-headers", prefix="/api", headers=[("x-a", "1"), ("x-b", "1")]),
    )
    a, b = (b"x-a", b"1"), (b"x-b", b"1")
    # two-headers and method-header both have 2 conditions: definition order decides
    assert hit(t, b"h", b"/api", b"GET", [a, b]) == "method-header"
    assert hit(t, b"h", b"/api", b"POST", [a, b]) == "two-headers"
    assert hit(t, b"h", b"/api", b"GET", [a]) == "method-header"
    assert hit(t, b"h", b"/api", b"GET") == "method"
    assert hit(t, b"h", b"/api", b"POST") == "plain"


def test_path_specificity_beats_conditions() -> None:
    t = table(
        route("short-cond", prefix="/api", methods=["GET"], headers=[("x", "1")]),
        route("long-plain", prefix="/api/v1"),
    )
    assert hit(t, b"h", b"/api/v1", b"GET", [(b"x", b"1")]) == "long-plain"


def test_priority_then_definition_order() -> None:
    t = table(route("first", prefix="/p"), route("second", prefix="/p"))
    assert hit(t, b"h", b"/p") == "first"
    t = table(route("low", prefix="/p"), route("high", prefix="/p", priority=5))
    assert hit(t, b"h", b"/p") == "high"
    t = table(route("neg", prefix="/p", priority=-1), route("zero", prefix="/p"))
    assert hit(t, b"h", b"/p") == "zero"


def test_priority_does_not_beat_path_or_host() -> None:
    t = table(route("root", priority=1000), route("api", prefix="/api"))
    assert hit(t, b"h", b"/api/x") == "api"
    t = table(route("any", priority=1000), route("exact", "h"))
    assert hit(t, b"h") == "exact"


# ------------------------------------------------------------------------- rewriting


def compiled(prefix: str | None, *, path: str | None = None, strip: bool = True) -> CompiledRoute:
    r = route("r", prefix=prefix, path=path, strip=strip)
    return build_http_tables([r], {"r": object()})["web"].routes[0]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/api/v1/users?x=1", b"/users?x=1"),
        (b"/api/v1/users", b"/users"),
        (b"/api/v1", b"/"),
        (b"/api/v1/", b"/"),
        (b"/api/v1?x=1", b"/?x=1"),
        (b"/api/v1/?x=1", b"/?x=1"),
        (b"/api/v1/a/b?q=/api/v1", b"/a/b?q=/api/v1"),
        (b"/api/v1x", b"/api/v1x"),  # not a boundary: untouched
        (b"/other", b"/other"),
    ],
)
def test_rewrite_target(target: bytes, expected: bytes) -> None:
    r = compiled("/api/v1")
    assert r.strip_prefix == b"/api/v1"
    assert r.rewrite_target(target) == expected


def test_rewrite_target_prefix_with_trailing_slash() -> None:
    r = compiled("/api/")
    assert r.rewrite_target(b"/api/users?x=1") == b"/users?x=1"
    assert r.rewrite_target(b"/api/") == b"/"
    assert r.rewrite_target(b"/api/?a") == b"/?a"


def test_rewrite_target_exact_path() -> None:
    r = compiled(None, path="/hook")
    assert r.rewrite_target(b"/hook?sig=1") == b"/?sig=1"
    assert r.rewrite_target(b"/hook") == b"/"


def test_no_strip() -> None:
    r = compiled("/api", strip=False)
    assert r.strip_prefix is None
    assert r.rewrite_target(b"/api/x?y") == b"/api/x?y"
    root = compiled("/")
    assert root.strip_prefix is None  # stripping "/" is a no-op
    assert root.rewrite_target(b"/x?y") == b"/x?y"


def test_rewrite_through_match() -> None:
    t = table(route("api", "hello.localhost", prefix="/api/v1", strip=True))
    result = t.match(b"hello.localhost", b"/api/v1/users", b"GET", [])
    assert result is not None
    assert result.route.rewrite_target(b"/api/v1/users?x=1") == b"/users?x=1"


# ------------------------------------------------------------------------ build_http_tables


def test_build_binds_targets_and_splits_listeners() -> None:
    routes = [
        route("a", "a.localhost", service="svc-a"),
        route("b", "b.localhost", service="svc-b", listener="webs"),
        route("c", "c.localhost", service="svc-a", listener="webs"),
    ]
    targets = {"svc-a": 1, "svc-b": 2}
    tables = build_http_tables(routes, targets)
    assert set(tables) == {"web", "webs"}
    assert tables["web"].listener == "web"
    ra = tables["web"].match(b"a.localhost", b"/", b"GET", [])
    assert ra is not None
    assert ra.route.target == 1
    assert ra.route.listener == "web"
    assert ra.route.config is routes[0]
    assert tables["web"].match(b"b.localhost", b"/", b"GET", []) is None
    rb = tables["webs"].match(b"b.localhost", b"/", b"GET", [])
    assert rb is not None
    assert rb.route.target == 2
    rc = tables["webs"].match(b"c.localhost", b"/", b"GET", [])
    assert rc is not None
    assert rc.route.target == 1


def test_build_unknown_service() -> None:
    with pytest.raises(ValueError, match=r"'r1'.*'nope'"):
        build_http_tables([route("r1", service="nope")], {"other": 1})


def test_build_empty() -> None:
    assert build_http_tables([], {}) == {}


@pytest.mark.parametrize(
    "host", ["*.", "a.*.com", "*.{key}.x", "{key}", "{key}.", "{}.x", "x.{key}.y", "a*b.com"]
)
def test_build_rejects_bad_host_patterns(host: str) -> None:
    with pytest.raises(ValueError):
        build_http_tables([route("bad", host)], {"bad": 1})


def test_build_rejects_bad_paths() -> None:
    with pytest.raises(ValueError):
        build_http_tables([route("bad", prefix="api")], {"bad": 1})
    with pytest.raises(ValueError):
        build_http_tables([route("bad", path="x")], {"bad": 1})
    with pytest.raises(ValueError):
        build_http_tables([route("bad", prefix="/a", path="/a")], {"bad": 1})


# --------------------------------------------------------------------------- host cache


def test_host_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_module, "_HOST_CACHE_MAX", 8)
    t = table(route("cap", "{key}.sbx"), route("any"))
    for i in range(100):
        result = t.match(f"k{i}.sbx".encode(), b"/", b"GET", [])
        assert result is not None
        assert result.key == f"k{i}"
        assert len(t._cache) <= 8
    # a cached entry still answers correctly
    for _ in range(2):
        result = t.match(b"k99.sbx", b"/", b"GET", [])
        assert result is not None
        assert result.key == "k99"


# ------------------------------------------------------------------ reference comparison


def _host_rank(pattern: str | None, host: str) -> tuple[int, int] | None:
    """Reference host matching: (rank, tiebreak) or None; lower is more specific."""
    if pattern is None:
        return (3, 0)
    if pattern.startswith("*."):
        suffix = pattern[1:]
        if host.endswith(suffix) and len(host) > len(suffix):
            return (2, -len(suffix))
        return None
    if pattern.startswith("{"):
        parent = pattern.split(".", 1)[1]
        label, _, rest = host.partition(".")
        return (1, 0) if label and rest == parent else None
    return (0, 0) if pattern == host else None


def _path_rank(m: RouteMatch, path: str) -> int | None:
    if m.path is not None:
        return -(10**9) if path == m.path else None
    prefix = m.path_prefix or "/"
    if prefix.endswith("/"):
        return -len(prefix) if path.startswith(prefix) else None
    if path == prefix or path.startswith(prefix + "/"):
        return -len(prefix)
    return None


def reference(
    routes: Sequence[tuple[int, RouteConfig]],
    host: str,
    path: str,
    method: str,
    headers: list[tuple[str, str]],
) -> str | None:
    """Linear scan: the lexicographically best matching route, by the documented rules."""
    best: tuple | None = None
    best_name = None
    for index, r in routes:
        m = r.match
        hr = _host_rank(m.host, host)
        pr = _path_rank(m, path)
        if hr is None or pr is None:
            continue
        if m.methods and method not in m.methods:
            continue
        if any(h not in headers for h in m.headers):
            continue
        conditions = len(m.headers) + (1 if m.methods else 0)
        key = (hr, pr, -conditions, -r.priority, index)
        if best is None or key < best:
            best, best_name = key, r.name
    return best_name


def generate_routes(n: int, seed: int) -> list[RouteConfig]:
    rng = random.Random(seed)
    segs = ["api", "v1", "v2", "users", "a", "static", "x"]
    routes: list[RouteConfig] = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.5:
            host: str | None = f"h{rng.randrange(n // 4)}.example.com"
        elif kind < 0.6:
            host = f"{{key}}.s{rng.randrange(20)}.example.com"
        elif kind < 0.7:
            host = f"*.w{rng.randrange(20)}.example.com"
        elif kind < 0.75:
            host = "*.example.com"
        elif kind < 0.8:
            host = None
        else:
            host = "busy.example.com"
        depth = rng.randrange(4)
        prefix = "/" + "/".join(rng.choice(segs) for _ in range(depth))
        if depth and rng.random() < 0.2:
            prefix += "/"
        exact = rng.random() < 0.1
        routes.append(
            route(
                f"r{i}",
                host,
                prefix=None if exact else prefix,
                path=prefix if exact else None,
                methods=rng.choice([(), (), ("GET",), ("POST", "PUT")]),
                headers=rng.choice([(), (), (), (("x-a", "1"),), (("x-a", "1"), ("x-b", "2"))]),
                priority=rng.choice([0, 0, 1, -1]),
            )
        )
    return routes


def test_generated_10k_routes_match_reference() -> None:
    routes = generate_routes(10_000, seed=7)
    t = table(*routes)
    rng = random.Random(11)
    segs = ["api", "v1", "v2", "users", "a", "static", "x", "apix", ""]
    hosts = [
        *(f"h{rng.randrange(2500)}.example.com" for _ in range(40)),
        *(f"k{i}.s{rng.randrange(20)}.example.com" for i in range(20)),
        *(f"q.z{i}.w{rng.randrange(20)}.example.com" for i in range(20)),
        "busy.example.com",
        "nothing.example.com",
        "example.com",
        "unrelated.org",
        "",
    ]
    checked = 0
    for host in hosts:
        # pre-filter by host so the linear reference stays affordable
        same_host = [(i, r) for i, r in enumerate(routes) if _host_rank(r.match.host, host)]
        for _ in range(15):
            path = "/" + "/".join(rng.choice(segs) for _ in range(rng.randrange(5)))
            method = rng.choice(["GET", "POST", "DELETE"])
            headers = rng.choice([[], [("x-a", "1")], [("x-a", "1"), ("x-b", "2")]])
            expected = reference(same_host, host, path, method, headers)
            raw_host = host.upper().encode() + (b":8080" if checked % 2 else b"")
            got = t.match(
                raw_host,
                path.encode(),
                method.encode(),
                [(k.encode(), v.encode()) for k, v in headers],
            )
            assert (got.route.name if got else None) == expected, (host, path, method, headers)
            pattern = got.route.config.match.host if got is not None else None
            if got is not None and pattern is not None and pattern.startswith("{"):
                assert got.key == host.split(".", 1)[0]
            checked += 1
    assert checked == len(hosts) * 15


def test_generated_routes_every_route_reachable_by_its_own_request() -> None:
    # Each exact-host, condition-free route on a unique host must be matched by a request
    # for exactly its host and prefix, whatever the other 10,000 routes are.
    routes = [route(f"u{i}", f"u{i}.unique.test", prefix=f"/p{i % 7}/q{i}") for i in range(10_000)]
    routes.append(route("fallback"))
    t = table(*routes)
    for i in range(0, 10_000, 37):
        assert hit(t, f"u{i}.unique.test".encode(), f"/p{i % 7}/q{i}/deep/er".encode()) == f"u{i}"
        assert hit(t, f"u{i}.unique.test".encode(), f"/p{i % 7}/q{i}x".encode()) == "fallback"
