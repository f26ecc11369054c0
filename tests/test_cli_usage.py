"""``guard usage`` as a user runs it: a real guard.yaml, a real ledger, a child process."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import REPO
from test_usage_report import example_slices

from guard.usage import TrafficSlice, UsageLedger

# The shape of configs/guard.yaml, plus the usage section.
GUARD_YAML = """\
workers: 1
routes: routes
listeners:
  web: {protocol: http, address: "127.0.0.1:8080"}
http:
  parser: httptools
  timeouts: {connect: 5s, request_header: 10s, response_header: 60s, idle: 60s}
"""
ROUTES_YAML = """\
routes:
  - name: demo
    listener: web
    service: demo
services:
  demo:
    servers: ["127.0.0.1:9001"]
"""


def write_config(tmp_path: Path, usage: str | None = "usage: {ledger: data/usage.sqlite}") -> Path:
    (tmp_path / "routes").mkdir(exist_ok=True)
    (tmp_path / "routes" / "demo.yaml").write_text(ROUTES_YAML)
    config = tmp_path / "guard.yaml"
    config.write_text(GUARD_YAML + (f"{usage}\n" if usage else ""))
    return config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    ledger = UsageLedger(tmp_path / "data" / "usage.sqlite")
    ledger.open()
    for item in example_slices():
        ledger.record(item)
    ledger.close()
    return path


def guard(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guard.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=60,
    )


def test_help_lists_usage() -> None:
    out = guard("--help")
    assert out.returncode == 0 and "usage" in out.stdout


def test_json_priced_with_rivet(config: Path) -> None:
    out = guard(
        "usage",
        "--config",
        config,
        "--since",
        "2026-11-01",
        "--until",
        "2026-11-02",
        "--format",
        "json",
        "--price",
        "rivet",
    )
    assert out.returncode == 0, out.stderr
    api, batch = json.loads(out.stdout)
    assert api["service"] == "api" and api["measured_core_ms"] == 990000
    # 990,000 core-ms x $0.00000001119 + 2 GB x $0.05 = $0.1110781
    assert api["cost_total"] == pytest.approx(0.1110781)
    assert batch["service"] == "batch" and batch["requests"] == 10
    # Rates and notes go to stderr, so stdout stays parseable.
    assert "core_ms      $0.00000001119 per measured core-ms" in out.stderr


def test_table_by_instance_with_a_window(config: Path) -> None:
    out = guard(
        "usage",
        "-c",
        config,
        "--since",
        "2026-11-01T00:15",
        "--until",
        "2026-11-01T00:45",
        "--by",
        "instance",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "usage by instance, 2026-11-01T00:15:00Z .. 2026-11-01T00:45:00Z"
    assert "started (UTC)" in lines[1] and "exit reason" in lines[1]
    a = lines[2].split()
    # inst-a: 1800 s of its 3600 s in the window: 450 CPU-s -> 450,000 core-ms
    assert a[:3] == ["inst-a", "1", "1,800.0"] and "450,000" in a
    assert "stopped: idle" in lines[2]
    assert lines[3].split()[:3] == ["inst-b", "1", "900.0"]
    assert "inst-c" not in out.stdout  # it ended at 00:10


def test_csv_by_tenant_priced_with_a_file(config: Path) -> None:
    card = REPO / "configs" / "ratecard-example.yaml"
    out = guard("usage", "-c", config, "--by", "tenant", "--format", "csv", "--price", card)
    assert out.returncode == 0, out.stderr
    records = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["tenant"] for r in records] == ["acme", ""]  # untenanted last
    assert records[0]["rate_card"] == "example-cloud"
    assert float(records[0]["cost_total"]) == pytest.approx(0.1876663676416)
    assert "note: disk GB-s is not measured yet" in out.stderr


def test_relative_since_and_tenant_filter(config: Path) -> None:
    # One slice an hour ago, beside the example ledger from 2026-11-01 (always > 24 h old).
    ledger = UsageLedger(config.parent / "data" / "usage.sqlite")
    ledger.open()
    now = time.time()
    ledger.record(TrafficSlice("recent", "web", "recent", "acme", now - 3600, now - 3599, 7, 1, 2))
    ledger.close()
    out = guard("usage", "-c", config, "--since", "24h", "--format", "json")
    assert out.returncode == 0, out.stderr
    [recent] = json.loads(out.stdout)
    assert recent["service"] == "recent" and recent["requests"] == 7
    out = guard(
        "usage", "-c", config, "--tenant", "acme", "--until", "2026-11-02", "--format", "json"
    )
    assert [r["service"] for r in json.loads(out.stdout)] == ["api"]


def test_missing_usage_section_names_file_and_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, usage=None)
    out = guard("usage", "--config", config)
    assert out.returncode == 2
    assert out.stderr.startswith(f"{config}: usage: not configured")


def test_bad_input_is_refused_with_exit_2(config: Path, tmp_path: Path) -> None:
    out = guard("usage", "-c", config, "--since", "yesterday-ish")
    assert out.returncode == 2 and "--since" in out.stderr and "not a time" in out.stderr
    bad = tmp_path / "card.yaml"
    bad.write_text("name: x\negress_gb: cheap\n")
    out = guard("usage", "-c", config, "--price", bad)
    assert out.returncode == 2
    assert f"{bad}: egress_gb: must be a number >= 0" in out.stderr


def test_no_ledger_yet(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    out = guard("usage", "-c", config)
    assert out.returncode == 1 and "no usage ledger yet" in out.stderr
    assert not (tmp_path / "data").exists()  # reading does not create it
