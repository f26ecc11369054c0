"""The prometheus-client side: render a snapshot as metric families at scrape time.

One collector serves both cases: with ``workers: 1`` its source reads the worker's live
objects (``WorkerMetrics.snapshot``); under the supervisor it is the sum of the workers'
latest snapshots. prometheus-client is only touched here, per scrape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from guard.metrics.families import FAMILIES, Family
from guard.metrics.snapshot import Hist, Snapshot, cumulative
from guard.proxy.context import DURATION_BOUNDS

_LE = [floatToGoString(b) for b in DURATION_BOUNDS] + ["+Inf"]


class SnapshotCollector(Collector):
    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.source = source

    def describe(self) -> Iterator[Metric]:
        # Registering must not take a snapshot (the default describe() collects).
        return iter(())

    def collect(self) -> Iterator[Metric]:
        snap = self.source()
        for family in FAMILIES.values():
            yield _render(family, snap.get(family.name, {}))


def _render(family: Family, samples: dict[tuple[str, ...], float | Hist]) -> Metric:
    labels = list(family.labels)
    metric: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
    if family.kind == "histogram":
        metric = HistogramMetricFamily(family.name, family.help, labels=labels)
        for key, value in sorted(samples.items()):
            assert isinstance(value, Hist)
            if len(value.counts) != len(_LE):
                raise ValueError(f"{family.name}: {len(value.counts)} buckets, expected {len(_LE)}")
            buckets = list(zip(_LE, cumulative(value.counts), strict=True))
            metric.add_metric(list(key), buckets, value.sum)  # type: ignore[arg-type]
        return metric
    cls = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    metric = cls(family.name, family.help, labels=labels)
    for key, value in sorted(samples.items()):
        metric.add_metric(list(key), value)  # type: ignore[arg-type]
    return metric


class MetricsPage:
    """``/metrics``: a registry holding only Guard's collector (no process_* defaults:
    with workers > 1 they would describe the supervisor alone)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self._source = source
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def render_async(self) -> bytes:
        """Take the snapshot here, on the loop that owns the live objects, and leave the
        text rendering (~0.4 ms per route in prometheus-client) to a thread."""
        snap = self._source()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(lambda: snap))
        return await asyncio.get_running_loop().run_in_executor(None, generate_latest, registry)
