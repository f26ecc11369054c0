"""configs/grafana-dashboard.json and configs/prometheus.yml: the dashboard imports (valid
JSON, schema 39, unique panel ids, every panel on the ``$datasource`` variable) and every
query names only series Guard exports, as spelled in guard/metrics/families.py; the scrape
config points at the admin address of configs/guard.yaml."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from guard.metrics.collector import MetricsPage
from guard.metrics.families import FAMILIES, Family
from guard.metrics.snapshot import Hist, Snapshot, add
from guard.proxy.context import DURATION_BOUNDS

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "configs" / "grafana-dashboard.json"
PROMETHEUS = REPO / "configs" / "prometheus.yml"
GUARD_CONFIG = REPO / "configs" / "guard.yaml"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def exposed_series() -> dict[str, tuple[Family, str]]:
    """Every sample name Guard's /metrics can show -> (family, suffix).

    prometheus_client renders a counter family as ``<name without _total>_total``, so a
    counter named ``X_total`` in FAMILIES is scraped as ``X_total`` (never ``X_total_total``
    and never bare ``X``); a gauge as its name; a histogram only as ``_bucket``, ``_sum``
    and ``_count`` (never bare). Custom-collector counters carry no ``_created`` sample.
    """
    series: dict[str, tuple[Family, str]] = {}
    for fam in FAMILIES.values():
        if fam.kind == "counter":
            base = fam.name.removesuffix("_total")
            series[base + "_total"] = (fam, "_total")
        elif fam.kind == "gauge":
            series[fam.name] = (fam, "")
        else:
            for suffix in HISTOGRAM_SUFFIXES:
                series[fam.name + suffix] = (fam, suffix)
    return series


SERIES = exposed_series()

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_METRIC = re.compile(r"(?<![A-Za-z0-9_:$])guard_[A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"(?<![A-Za-z0-9_:$])(guard_[A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)")
_RATE = re.compile(r"\b(?:rate|irate|increase)\s*\(\s*(guard_[A-Za-z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """Every ``guard_*`` series name an expression references (string literals skipped,
    so a label value such as ``route="guard_x"`` is not mistaken for a metric)."""
    return set(_METRIC.findall(_STRING.sub('""', expr)))


def check_expr(expr: str) -> set[str]:
    """Names of the families ``expr`` uses; ValueError if it names a series Guard does not
    export, filters on a label the family lacks, or rates a gauge."""
    names = metric_names(expr)
    if not names:
        raise ValueError(f"no guard_ metric in {expr!r}")
    families = set()
    for name in names:
        if name not in SERIES:
            hint = ""
            for suffix in (*HISTOGRAM_SUFFIXES, "_total"):
                base = name.removesuffix(suffix)
                if base != name and base in FAMILIES:
                    hint = f" ({base} is a {FAMILIES[base].kind})"
            raise ValueError(f"{name!r} is not a series Guard exports{hint}")
        families.add(SERIES[name][0].name)
    bare = _STRING.sub('""', expr)
    for name, body in _SELECTOR.findall(bare):
        fam, suffix = SERIES[name]
        allowed = set(fam.labels) | ({"le"} if suffix == "_bucket" else set())
        for label, _op in _MATCHER.findall(body):
            if label not in allowed and label != "__name__":
                raise ValueError(f"{name!r} has no label {label!r}")
    for name in _RATE.findall(bare):
        if SERIES[name][0].kind == "gauge":
            raise ValueError(f"rate over the gauge {name!r}")
    if "histogram_quantile" in bare:
        if not any(SERIES[n][1] == "_bucket" for n in names):
            raise ValueError(f"histogram_quantile without a _bucket series in {expr!r}")
        if not re.search(r"\bby\s*\([^)]*\ble\b", bare):
            raise ValueError(f"histogram_quantile must keep the le label: {expr!r}")
    return families


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows nest their panels
    return out


def all_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every query template variable."""
    exprs = [
        (f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"])
        for p in all_panels(dash)
        for t in p.get("targets", [])
    ]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            query = query["query"] if isinstance(query, dict) else query
            exprs.append((f"variable {var['name']}", query))
    return exprs


# -- the dashboard ------------------------------------------------------------------------


def test_dashboard_is_importable_json() -> None:
    dash = load()
    assert dash["schemaVersion"] == 39
    assert dash["uid"] and dash["title"]
    assert dash.get("id") is None  # importable into any Grafana, no instance-local id
    assert isinstance(dash["panels"], list) and dash["panels"]


def test_panel_ids_unique() -> None:
    ids = [p["id"] for p in all_panels(load())]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), ids


def test_every_panel_uses_the_datasource_variable() -> None:
    for panel in all_panels(load()):
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        for target in panel.get("targets", []):
            assert target.get("datasource") == DATASOURCE, (panel["title"], target)
            assert target["expr"].strip()


def test_template_variables() -> None:
    variables = {v["name"]: v for v in load()["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in ("listener", "route"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"] == DATASOURCE
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        assert re.fullmatch(rf"label_values\(guard_requests_total(\{{.*\}})?, {name}\)", query)
        assert name in FAMILIES["guard_requests_total"].labels


def test_every_query_names_an_exported_metric() -> None:
    used: set[str] = set()
    for where, expr in all_exprs(load()):
        try:
            used |= check_expr(expr)
        except ValueError as e:
            pytest.fail(f"{where}: {e}")
    # the panels the dashboard promises are really there
    for name in (
        "guard_requests_total",
        "guard_request_duration_seconds",
        "guard_overhead_duration_seconds",
        "guard_errors_total",
        "guard_request_bytes_total",
        "guard_response_bytes_total",
        "guard_open_connections",
        "guard_upstream_reused_total",
        "guard_upstream_connections_total",
        "guard_backend_in_flight",
        "guard_tcp_received_bytes_total",
        "guard_tcp_sent_bytes_total",
        "guard_udp_sessions_total",
        "guard_udp_received_bytes_total",
        "guard_config_reloads_total",
        "guard_worker_requests_total",
    ):
        assert name in used, f"no panel graphs {name}"


def test_latency_quantiles() -> None:
    exprs = [e for _, e in all_exprs(load())]
    for metric, quantiles in (
        ("guard_request_duration_seconds_bucket", ("0.5", "0.9", "0.99")),
        ("guard_overhead_duration_seconds_bucket", ("0.5", "0.99")),
    ):
        for q in quantiles:
            assert any(
                e.startswith(f"histogram_quantile({q}, sum by (le, route) (rate({metric}")
                and "[5m]" in e
                for e in exprs
            ), (metric, q)


def test_containers_row_covers_cold_starts_instances_and_usage() -> None:
    exprs = " ".join(t["expr"] for p in all_panels(load()) for t in p.get("targets", []))
    for family in (
        "guard_instances",
        "guard_instance_start_duration_seconds_bucket",
        "guard_instance_start_phase_seconds_bucket",
        "guard_wake_queue_depth",
        "guard_autoscaler_desired_instances",
        "guard_instance_cpu_seconds_total",
        "guard_instance_memory_bytes",
    ):
        assert family in exprs, family


# -- the checker itself: it must reject what Guard does not export -------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(guard_cold_starts_total[5m]))",  # not exported yet
        "guard_instance_count",  # no such family
        "sum by (tenant) (rate(guard_usage_core_ms_total[5m]))",
        "rate(guard_requests_total_total[5m])",  # counter name already ends in _total
        "rate(guard_requests[5m])",  # bare counter base is never scraped
        "guard_request_duration_seconds",  # bare histogram is never scraped
        "rate(guard_errors_total_bucket[5m])",  # _bucket on a counter
        "guard_open_connections_bucket",  # _bucket on a gauge
        "guard_open_connections_total",  # gauges get no _total
        "guard_backend_in_flight_count",  # _count on a gauge
        'sum(rate(guard_tcp_accepted_total{route=~"$route"}[5m]))',  # no route label
        "rate(guard_open_connections[5m])",  # rate over a gauge
        "histogram_quantile(0.9, sum by (route) "
        "(rate(guard_request_duration_seconds_bucket[5m])))",  # le dropped
        "sum(rate(guard_requests_total[5m])) / sum(rate(guard_wake_duration_seconds_count[5m]))",
        "up",  # no guard_ metric at all
    ],
)
def test_checker_rejects(expr: str) -> None:
    with pytest.raises(ValueError):
        check_expr(expr)


@pytest.mark.parametrize(
    ("expr", "families"),
    [
        ("rate(guard_requests_total[5m])", {"guard_requests_total"}),
        ("guard_request_duration_seconds_sum", {"guard_request_duration_seconds"}),
        ("guard_overhead_duration_seconds_count", {"guard_overhead_duration_seconds"}),
        ('guard_open_connections{protocol="udp"}', {"guard_open_connections"}),
        ('sum(rate(guard_errors_total{route="guard_admin"}[5m]))', {"guard_errors_total"}),
    ],
)
def test_checker_accepts(expr: str, families: set[str]) -> None:
    assert check_expr(expr) == families


def test_a_bad_panel_in_a_copy_fails(tmp_path: Path) -> None:
    dash = load()
    panel = next(p for p in all_panels(dash) if p.get("targets"))
    panel["targets"][0]["expr"] = "sum by (service) (rate(guard_cold_starts_total[5m]))"
    copy = tmp_path / "dashboard.json"
    copy.write_text(json.dumps(dash))
    bad = [e for _, e in all_exprs(json.loads(copy.read_text()))]
    with pytest.raises(ValueError, match="guard_cold_starts_total"):
        for expr in bad:
            check_expr(expr)


def test_exposed_series_match_the_real_metrics_page() -> None:
    # one sample in every family, rendered by Guard's own collector and parsed back
    snap: Snapshot = {}
    for fam in FAMILIES.values():
        labels = tuple("x" for _ in fam.labels)
        value = Hist([1] * (len(DURATION_BOUNDS) + 1), 1.0) if fam.kind == "histogram" else 1.0
        add(snap, fam.name, labels, value)
    text = MetricsPage(lambda: snap).render().decode()
    rendered = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    assert rendered == set(SERIES)


def test_counter_families_end_in_total() -> None:
    # exposed_series relies on it: the table names counters with their scraped _total name
    for fam in FAMILIES.values():
        assert fam.name.startswith("guard_")
        assert fam.name.endswith("_total") == (fam.kind == "counter"), fam.name


# -- the scrape config ---------------------------------------------------------------------


def test_prometheus_scrapes_the_admin_address() -> None:
    prom = yaml.safe_load(PROMETHEUS.read_text())
    admin = yaml.safe_load(GUARD_CONFIG.read_text())["admin"]["address"]
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    job = jobs["guard"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert admin in targets, (admin, targets)
