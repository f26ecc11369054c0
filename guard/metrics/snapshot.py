"""Snapshots: one process's metric values as plain data, and how to ship and sum them.

A snapshot maps a family name (see ``families.FAMILIES``) to its samples, each keyed by
the tuple of label values in the family's label order. Counters and gauges are numbers; a
histogram is ``Hist(counts, sum)`` with *per-bucket* counts (last = +Inf), so summing two
histograms is summing their lists and the cumulative form is made once, when rendered.

Everything here is pure (no IO, no prometheus-client), which is what lets a worker send its
snapshot to the supervisor as JSON and lets the supervisor add snapshots up.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from guard.metrics.families import FAMILIES

FORMAT = 1  # bumped if the encoding changes; a mismatched frame is rejected, not misread


@dataclass(slots=True)
class Hist:
    counts: list[int]  # per bucket, last = +Inf; not cumulative
    sum: float

    def __add__(self, other: Hist) -> Hist:
        if len(self.counts) != len(other.counts):
            raise ValueError("histograms with different buckets cannot be added")
        return Hist(
            [a + b for a, b in zip(self.counts, other.counts, strict=True)], self.sum + other.sum
        )


Value = float | Hist
Labels = tuple[str, ...]
Snapshot = dict[str, dict[Labels, Value]]


@dataclass(frozen=True, slots=True)
class Frame:
    """What a worker sends: who it is, and its snapshot."""

    pid: int
    worker: int
    snapshot: Snapshot


def add(snap: Snapshot, family: str, labels: Labels, value: Value) -> None:
    """Sum ``value`` into ``snap`` (so two sources of one label set add up)."""
    samples = snap.setdefault(family, {})
    old = samples.get(labels)
    if old is None:
        samples[labels] = Hist(list(value.counts), value.sum) if isinstance(value, Hist) else value
    else:
        samples[labels] = old + value  # type: ignore[operator]


def merge(snaps: Iterable[Snapshot]) -> Snapshot:
    """The sum of ``snaps``, label set by label set; the inputs are not modified."""
    out: Snapshot = {}
    for snap in snaps:
        for family, samples in snap.items():
            for labels, value in samples.items():
                add(out, family, labels, value)
    return out


def without_gauges(snap: Snapshot) -> Snapshot:
    """What stays true of a process after it is gone: its counters and histograms.

    Its gauges (open connections, in-flight requests) ended with it."""
    return {family: samples for family, samples in snap.items() if FAMILIES[family].kind != "gauge"}


def cumulative(counts: Iterable[int]) -> list[int]:
    """Per-bucket counts -> Prometheus' cumulative ``le`` counts."""
    out: list[int] = []
    total = 0
    for c in counts:
        total += c
        out.append(total)
    return out


def encode(frame: Frame) -> bytes:
    families: dict[str, list[list[Any]]] = {}
    for family, samples in frame.snapshot.items():
        families[family] = [
            [list(labels), {"b": v.counts, "s": v.sum} if isinstance(v, Hist) else v]
            for labels, v in samples.items()
        ]
    doc = {"format": FORMAT, "pid": frame.pid, "worker": frame.worker, "families": families}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(data: bytes) -> Frame:
    """Inverse of ``encode``; raises ValueError on anything it would have to guess about."""
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise ValueError(f"snapshot format {doc.get('format')!r}, expected {FORMAT}")
        snap: Snapshot = {}
        for family, rows in doc["families"].items():
            if family not in FAMILIES:
                raise ValueError(f"unknown metric family {family!r}")
            width = len(FAMILIES[family].labels)
            samples = snap[family] = {}
            for labels, v in rows:
                if len(labels) != width:
                    raise ValueError(f"{family}: {len(labels)} label values, expected {width}")
                key = tuple(str(x) for x in labels)
                samples[key] = (
                    Hist([int(c) for c in v["b"]], float(v["s"]))
                    if isinstance(v, dict)
                    else float(v)
                )
        return Frame(int(doc["pid"]), int(doc["worker"]), snap)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"malformed snapshot: {e}") from e
