"""Unit tests of the metrics plumbing without processes: snapshots (encode, decode, merge),
the supervisor's hub bookkeeping, the collector's rendering and the admin routing."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from guard.admin.server import AdminPages, answer, bind_refusal
from guard.config.model import AdminConfig, AdminToken
from guard.metrics.collector import MetricsPage
from guard.metrics.relay import SnapshotHub
from guard.metrics.snapshot import (
    Frame,
    Hist,
    Snapshot,
    add,
    cumulative,
    decode,
    encode,
    merge,
    without_gauges,
)
from guard.proxy.context import DURATION_BOUNDS, RouteStats

BUCKETS = len(DURATION_BOUNDS) + 1
ROUTE = ("web", "app", "app")


def hist(*pairs: tuple[int, int], total: float = 0.0) -> Hist:
    counts = [0] * BUCKETS
    for i, n in pairs:
        counts[i] = n
    return Hist(counts, total)


def sample_snapshot(requests: int = 3, in_flight: int = 2) -> Snapshot:
    snap: Snapshot = {}
    add(snap, "guard_requests_total", (*ROUTE, "2xx", "GET"), requests)
    add(snap, "guard_request_duration_seconds", ROUTE, hist((1, 2), (3, 1), total=0.01))
    add(snap, "guard_backend_in_flight", ("app", "127.0.0.1:1"), in_flight)
    return snap


def test_cumulative() -> None:
    assert cumulative([0, 2, 0, 1, 0]) == [0, 2, 2, 3, 3]
    assert cumulative([]) == []


def test_encode_decode_round_trip() -> None:
    snap = sample_snapshot()
    frame = decode(encode(Frame(pid=42, worker=1, snapshot=snap)))
    assert (frame.pid, frame.worker) == (42, 1)
    assert frame.snapshot == snap


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"format": 99, "pid": 1, "worker": 0, "families": {}}',
        b'{"format": 1, "pid": 1, "worker": 0, "families": {"nope_total": []}}',
        b'{"format": 1, "pid": 1, "worker": 0, "families": {"guard_requests_total": [[["a"], 1]]}}',
        b'{"format": 1, "worker": 0, "families": {}}',
    ],
)
def test_decode_rejects_what_it_would_have_to_guess(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


def test_merge_sums_counters_gauges_and_histograms_without_touching_inputs() -> None:
    a, b = sample_snapshot(3, 2), sample_snapshot(4, 1)
    add(b, "guard_requests_total", (*ROUTE, "5xx", "POST"), 1)
    m = merge([a, b])
    assert m["guard_requests_total"] == {
        (*ROUTE, "2xx", "GET"): 7,
        (*ROUTE, "5xx", "POST"): 1,
    }
    assert m["guard_backend_in_flight"] == {("app", "127.0.0.1:1"): 3}
    h = m["guard_request_duration_seconds"][ROUTE]
    assert isinstance(h, Hist)
    assert h.counts == hist((1, 4), (3, 2)).counts and h.sum == pytest.approx(0.02)
    assert a == sample_snapshot(3, 2)  # inputs unchanged (histogram lists not shared)


def test_histograms_with_different_buckets_do_not_add() -> None:
    with pytest.raises(ValueError):
        _ = Hist([1, 2], 0.0) + Hist([1], 0.0)


def test_without_gauges_keeps_counters_and_histograms() -> None:
    kept = without_gauges(sample_snapshot())
    assert set(kept) == {"guard_requests_total", "guard_request_duration_seconds"}


def test_hub_keeps_a_dead_workers_counters_but_not_its_gauges() -> None:
    hub = SnapshotHub("/nonexistent")
    hub.accept(Frame(1, 0, sample_snapshot(5, 2)))
    hub.accept(Frame(2, 1, sample_snapshot(1, 1)))
    hub.accept(Frame(1, 0, sample_snapshot(6, 2)))  # a newer frame replaces the older one
    key = (*ROUTE, "2xx", "GET")
    assert hub.snapshot()["guard_requests_total"][key] == 7
    hub.retire(1)
    snap = hub.snapshot()
    assert snap["guard_requests_total"][key] == 7  # never backwards
    assert snap["guard_backend_in_flight"] == {("app", "127.0.0.1:1"): 1}
    # Its replacement starts from zero and adds on top.
    hub.accept(Frame(3, 0, sample_snapshot(2, 0)))
    assert hub.snapshot()["guard_requests_total"][key] == 9
    hub.accept(Frame(1, 0, sample_snapshot(100, 0)))  # a late frame from the dead pid
    assert hub.snapshot()["guard_requests_total"][key] == 9


def test_collector_renders_cumulative_buckets_from_route_stats() -> None:
    stats = RouteStats("app", "app")
    for duration in (0.0001, 0.0003, 0.0003, 0.2, 100.0):
        stats.observe(200, b"GET", "", duration, 0.0)
    snap: Snapshot = {}
    add(
        snap,
        "guard_request_duration_seconds",
        ROUTE,
        Hist(list(stats.duration.counts), stats.duration.sum),
    )
    add(snap, "guard_requests_total", (*ROUTE, "2xx", "GET"), stats.total)
    text = MetricsPage(lambda: snap).render().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    buckets = {
        s.labels["le"]: s.value
        for s in fams["guard_request_duration_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert buckets["0.00025"] == 1 and buckets["0.0005"] == 3 and buckets["0.25"] == 4
    assert buckets["60.0"] == 4 and buckets["+Inf"] == 5
    values = list(buckets.values())
    assert values == sorted(values)
    (total,) = fams["guard_requests"].samples
    assert total.value == 5 and total.labels["code"] == "2xx"
    assert "process_cpu_seconds_total" not in text  # only Guard's own families


def pages(draining: bool = False) -> AdminPages:
    return AdminPages(
        metrics=lambda: b"m 1\n", metrics_type="text/plain", draining=lambda: draining
    )


def test_admin_routing() -> None:
    assert answer(pages(), "GET", "/healthz").status == 200
    assert answer(pages(draining=True), "GET", "/healthz").body == b'{"status": "draining"}'
    assert answer(pages(draining=True), "GET", "/healthz").status == 503
    assert answer(pages(), "GET", "/metrics").body == b"m 1\n"
    not_found = answer(pages(), "GET", "/v1/containers")
    assert not_found.status == 404 and ("x-guard-error", "not_found") in not_found.extra
    wrong = answer(pages(), "DELETE", "/metrics")
    assert wrong.status == 405 and ("allow", "GET, HEAD") in wrong.extra


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("::1", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("::", True),
        ("10.0.0.5", True),
        ("admin.internal", True),
    ],
)
def test_admin_without_tokens_only_binds_loopback(host: str, refused: bool) -> None:
    assert (bind_refusal(AdminConfig(host, 9901)) is not None) == refused
    with_tokens = AdminConfig(host, 9901, (AdminToken(tenant="*", token_env="T"),))
    assert bind_refusal(with_tokens) is None
