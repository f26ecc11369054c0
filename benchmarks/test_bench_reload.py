"""Micro-benchmarks for a route reload of 10,000 routes (issue 7): parse, validate, build.

A reload is what a worker does on a file change or SIGHUP: ``load_routes`` (read the
files, parse the YAML, validate every key), then ``build_http_tables`` for the http
listeners. The route set: 500 hosts x 20 path prefixes = 10,000 routes over 100 services,
written like the examples (flow ``match:``, one route in five in block style, some with
methods, headers, strip_prefix or priority).

- one file of 10,000 routes, that file changed since the last reload;
- 100 files of 100 routes, one of them changed (the others come from the parse cache);
- nothing changed (a SIGHUP with nothing new);
- the first load, with nothing remembered from an earlier one (start-up, ``guard check``);
- the pieces alone: the fast YAML reader, the reference YAML loader (the pre-issue-7
  parser, for comparison), validation, table building.

A reload remembers what the previous one read (see guard.config.loader: parsed files by
stat, validated routes by content, and yaml_fast's lines): the "changed" scenarios edit one
route between rounds, so that memory is exercised as in real use; the first-load scenario
empties it before each round.

Run: python -m pytest benchmarks/test_bench_reload.py -q --benchmark-only
Target: < 200 ms for a reload of 10,000 routes.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from guard.config import load_routes, loader, yaml_fast
from guard.config.model import ListenerConfig, RoutesConfig
from guard.routing import build_http_tables

HOSTS = 500
PREFIXES = 20
SERVICES = 100
LISTENERS = {"web": ListenerConfig(name="web", protocol="http", host="127.0.0.1", port=8080)}


def route_yaml(h: int, p: int, variant: int = 0) -> str:
    """One route entry; ``variant`` changes its path (an edit between two reloads)."""
    n = h * PREFIXES + p
    prefix = f"/api/v{p % 3}/p{p}" + (f"-{variant}" if variant else "")
    lines = [f"  - name: r{h}-{p}", "    listener: web"]
    if n % 5 == 0:
        lines += ["    match:", f"      host: h{h}.example.com", f"      path_prefix: {prefix}"]
        if n % 10 == 0:
            lines.append("      methods: [GET, POST]")
    elif n % 9 == 0:
        headers = "headers: {x-canary: 1}"
        lines.append(f"    match: {{host: h{h}.example.com, path_prefix: {prefix}, {headers}}}")
    else:
        lines.append(f"    match: {{host: h{h}.example.com, path_prefix: {prefix}}}")
    lines.append(f"    service: svc{n % SERVICES}")
    if n % 7 == 0:
        lines.append("    strip_prefix: true")
    if n % 13 == 0:
        lines.append("    priority: 5  # wins over the catch-all")
    return "\n".join(lines) + "\n"


def services_yaml(first: int, count: int) -> str:
    out = ["services:"]
    for i in range(first, first + count):
        out.append(f"  svc{i}:")
        out.append(f'    servers: ["127.0.0.1:{9000 + i}", "127.0.0.1:{19000 + i}"]')
        if i % 4 == 0:
            out.append("    balance: least_request")
    return "\n".join(out) + "\n"


def file_yaml(hosts: range, services: range, variant: int = 0) -> str:
    routes = "".join(
        route_yaml(h, p, variant if (h, p) == (hosts[0], 0) else 0)
        for h in hosts
        for p in range(PREFIXES)
    )
    return "routes:\n" + routes + (services_yaml(services[0], len(services)) if services else "")


def write_aged(path: Path, text: str) -> None:
    path.write_text(text)
    then = time.time() - 3600
    os.utime(path, (then, then))


def reload(path: Path) -> tuple[RoutesConfig, dict[str, Any]]:
    """What a worker does on reload: load the route files, then build the http tables."""
    routes = load_routes(path, LISTENERS)
    targets = {name: name for name in routes.services}
    return routes, build_http_tables(routes.routes, targets)


@pytest.fixture(scope="module")
def one_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("one") / "routes.yaml"
    write_aged(path, file_yaml(range(HOSTS), range(SERVICES)))
    return path


@pytest.fixture(scope="module")
def hundred_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 files of 100 routes (5 hosts each); services are spread over the files too."""
    folder = tmp_path_factory.mktemp("hundred")
    per = HOSTS // 100
    for i in range(100):
        write_aged(
            folder / f"r{i:03}.yaml", file_yaml(range(i * per, (i + 1) * per), range(i, i + 1))
        )
    # utime cannot age ctime, and the parse cache leaves files changed in the last 2 s
    # (the file system's timestamp granularity) uncached: wait that out once.
    time.sleep(loader._RACY_NS / 1e9 + 0.1)
    reload(folder)  # warm the parse cache, as the reload before this one did
    return folder


def editor(path: Path, text: Callable[[int], str]) -> Callable[[], None]:
    """A benchmark setup that changes the file before each round, as an edit would."""
    variants: Iterator[int] = itertools.count(1)

    def setup() -> None:
        path.write_text(text(next(variants)))

    return setup


def check(result: tuple[RoutesConfig, dict[str, Any]]) -> None:
    routes, tables = result
    assert len(routes.routes) == HOSTS * PREFIXES
    assert len(tables["web"].routes) == HOSTS * PREFIXES


def test_bench_reload_10k_one_file_changed(benchmark: Any, one_file: Path) -> None:
    setup = editor(one_file, lambda v: file_yaml(range(HOSTS), range(SERVICES), v))
    check(benchmark.pedantic(reload, args=(one_file,), setup=setup, rounds=15, warmup_rounds=1))


def test_bench_reload_10k_one_of_100_files_changed(benchmark: Any, hundred_files: Path) -> None:
    setup = editor(
        hundred_files / "r042.yaml", lambda v: file_yaml(range(210, 215), range(42, 43), v)
    )
    result = benchmark.pedantic(
        reload, args=(hundred_files,), setup=setup, rounds=30, warmup_rounds=1
    )
    check(result)


def test_bench_reload_10k_nothing_changed(benchmark: Any, hundred_files: Path) -> None:
    check(benchmark(reload, hundred_files))


def forget_everything() -> None:
    """Empty every cache a reload keeps, as in a process that never loaded routes."""
    loader._PARSED.clear()
    loader._ROUTES_OF.clear()
    loader._HOSTS_SEEN.clear()
    yaml_fast._LINES.clear()


def test_bench_first_load_10k_one_file(benchmark: Any, one_file: Path) -> None:
    # Start-up (or `guard check`): nothing remembered from a previous load.
    check(benchmark.pedantic(reload, args=(one_file,), setup=forget_everything, rounds=10))


# ------------------------------------------------------------------------ the pieces


@pytest.fixture(scope="module")
def text_10k() -> str:
    return file_yaml(range(HOSTS), range(SERVICES))


def test_bench_parse_10k_fast_reader(benchmark: Any, text_10k: str) -> None:
    doc = benchmark(yaml_fast.fast_load, text_10k)
    assert len(doc["routes"]) == HOSTS * PREFIXES


def test_bench_parse_10k_reference_loader(benchmark: Any, text_10k: str) -> None:
    # The parser every reload used before issue 7's work; still the fallback.
    doc = benchmark.pedantic(
        yaml.load, args=(text_10k,), kwargs={"Loader": yaml_fast.StrictLoader}, rounds=3
    )
    assert len(doc["routes"]) == HOSTS * PREFIXES


def test_bench_validate_10k(
    benchmark: Any, one_file: Path, text_10k: str, monkeypatch: Any
) -> None:
    doc = yaml_fast.fast_load(text_10k)
    monkeypatch.setattr(loader, "_read_route_yaml", lambda file, shown, errors: doc)
    routes = benchmark(load_routes, one_file, LISTENERS)
    assert len(routes.routes) == HOSTS * PREFIXES


def test_bench_build_tables_10k(benchmark: Any, one_file: Path) -> None:
    routes = load_routes(one_file, LISTENERS)
    targets = {name: name for name in routes.services}
    tables = benchmark(build_http_tables, routes.routes, targets)
    assert len(tables["web"].routes) == HOSTS * PREFIXES
