"""Usage reports: the ledger's slices summed per tenant, service or instance, and printed.

Units, used the same way here, in pricing and in every output:

- wall seconds are *instance*-seconds: two instances running one hour are 7200 s;
- core-ms = CPU seconds x 1000; reserved core-ms = cpu limit x wall time (0 when the
  instance has no cpu limit), measured core-ms = CPU time the driver counted;
- GB-s = bytes / 1e9 x seconds (decimal GB); reserved from the memory limit (0 when
  unlimited), measured from the average RSS of each slice;
- requests are HTTP requests, or TCP connections / UDP sessions on l4 routes; bytes_in is
  client -> backend, bytes_out backend -> client (egress).

A slice that straddles ``since`` or ``until`` counts in proportion to its part inside the
window: a 10 s slice with 5 s inside adds 5 s of wall time and half of its CPU, memory,
requests and bytes. Slices are one flush interval long, so this is within a second of exact,
and the fractional requests and bytes it can produce are kept, not rounded, until printed.
Traffic has no instance: ``by="instance"`` reports instance usage only.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from guard.usage.pricing import Cost, RateCard, dollars, price

GROUPINGS = ("tenant", "service", "instance")
GB = 1e9  # decimal GB, everywhere

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_RELATIVE_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True)
class MachineTime:
    """Wall seconds spent at one (cpu limit, memory limit): what hourly rate cards price."""

    cpu_limit: float | None
    memory_limit: int | None
    seconds: float


@dataclass(frozen=True, slots=True)
class UsageRow:
    key: str | None  # tenant, service or instance; None = slices without a tenant
    instances: int = 0  # distinct instances with time in the window
    wall_seconds: float = 0.0
    reserved_core_ms: float = 0.0
    measured_core_ms: float = 0.0
    reserved_gb_s: float = 0.0
    measured_gb_s: float = 0.0
    requests: float = 0.0  # fractional only where a slice straddles the window
    bytes_in: float = 0.0
    bytes_out: float = 0.0
    started_at: float | None = None  # by="instance" only, from all its slices
    stopped_at: float | None = None
    exit_reason: str | None = None
    machine_time: tuple[MachineTime, ...] = ()


@dataclass(slots=True)
class _Sums:
    instances: set[str] = field(default_factory=set)
    wall: float = 0.0
    reserved_core_ms: float = 0.0
    measured_core_ms: float = 0.0
    reserved_gb_s: float = 0.0
    measured_gb_s: float = 0.0
    requests: float = 0.0
    bytes_in: float = 0.0
    bytes_out: float = 0.0
    shapes: dict[tuple[float | None, int | None], float] = field(default_factory=dict)


# Slices overlapping the window, each with the seconds of it inside (secs) and that part as a
# fraction of the slice (frac). NULL bounds become +-infinity, which MIN/MAX handle.
_WINDOW = (
    "SELECT *, MIN(t_end, :until) - MAX(t_start, :since) AS secs,"
    " (MIN(t_end, :until) - MAX(t_start, :since)) / (t_end - t_start) AS frac"
    " FROM {table} WHERE t_end > :since AND t_start < :until"
    " AND (:tenant IS NULL OR tenant = :tenant)"
)

_INSTANCE_SUMS = (
    "SELECT {key} AS k, instance, cpu_limit, memory_limit, SUM(secs),"
    " SUM(cpu_seconds * frac), SUM(memory_bytes_avg * secs)"
    " FROM (" + _WINDOW.format(table="instance_slices") + ")"
    " GROUP BY k, instance, cpu_limit, memory_limit"
)

_TRAFFIC_SUMS = (
    "SELECT {key} AS k, SUM(requests * frac), SUM(bytes_in * frac), SUM(bytes_out * frac)"
    " FROM (" + _WINDOW.format(table="traffic_slices") + ") GROUP BY k"
)

# Lifecycle of the instances in the window, from all their slices: the first and last slice
# may lie outside the window.
_LIFECYCLE = (
    "SELECT instance, MIN(started_at), MAX(stopped_at),"
    " (SELECT exit_reason FROM instance_slices e WHERE e.instance = s.instance"
    "  AND e.exit_reason IS NOT NULL ORDER BY e.t_end DESC LIMIT 1)"
    " FROM instance_slices s WHERE instance IN"
    " (SELECT instance FROM (" + _WINDOW.format(table="instance_slices") + "))"
    " GROUP BY instance"
)


def aggregate(
    conn: sqlite3.Connection,
    since: float | None,
    until: float | None,
    by: str,
    tenant: str | None = None,
) -> list[UsageRow]:
    """Sum the ledger's slices in ``[since, until)`` per ``by`` key, sorted by key."""
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    params = {
        "since": -math.inf if since is None else since,
        "until": math.inf if until is None else until,
        "tenant": tenant,
    }
    sums: dict[str | None, _Sums] = {}
    # `by` is one of GROUPINGS, a column name, so formatting it into the SQL is safe.
    for key, instance, cpu_limit, memory_limit, secs, cpu_s, mem_byte_s in conn.execute(
        _INSTANCE_SUMS.format(key=by), params
    ):
        s = sums.setdefault(key, _Sums())
        s.instances.add(instance)
        s.wall += secs
        s.reserved_core_ms += (cpu_limit or 0.0) * secs * 1000
        s.measured_core_ms += cpu_s * 1000
        s.reserved_gb_s += (memory_limit or 0) / GB * secs
        s.measured_gb_s += mem_byte_s / GB
        shape = (cpu_limit, memory_limit)
        s.shapes[shape] = s.shapes.get(shape, 0.0) + secs
    if by != "instance":
        for key, requests, bytes_in, bytes_out in conn.execute(
            _TRAFFIC_SUMS.format(key=by), params
        ):
            s = sums.setdefault(key, _Sums())
            s.requests += requests
            s.bytes_in += bytes_in
            s.bytes_out += bytes_out
    lifecycle: dict[str, tuple[float | None, float | None, str | None]] = {}
    if by == "instance":
        for instance, started, stopped, reason in conn.execute(_LIFECYCLE, params):
            lifecycle[instance] = (started, stopped, reason)
    rows = []
    for key in sorted(sums, key=lambda k: (k is None, k or "")):
        s = sums[key]
        started, stopped, reason = lifecycle.get(key or "", (None, None, None))
        rows.append(
            UsageRow(
                key=key,
                instances=len(s.instances),
                wall_seconds=s.wall,
                reserved_core_ms=s.reserved_core_ms,
                measured_core_ms=s.measured_core_ms,
                reserved_gb_s=s.reserved_gb_s,
                measured_gb_s=s.measured_gb_s,
                requests=s.requests,
                bytes_in=s.bytes_in,
                bytes_out=s.bytes_out,
                started_at=started,
                stopped_at=stopped,
                exit_reason=reason,
                machine_time=tuple(
                    MachineTime(cpu, memory, secs) for (cpu, memory), secs in s.shapes.items()
                ),
            )
        )
    return rows


# ------------------------------------------------------------------------ time window


def parse_when(text: str, now: float) -> float:
    """``2026-11-01``, ``2026-11-01T12:00``, ``...+02:00``, ``24h``/``7d`` ago, ``now``.

    Dates and datetimes without a zone are UTC. Returns unix seconds.
    """
    value = text.strip()
    if value == "now":
        return now
    relative = _RELATIVE.fullmatch(value)
    if relative:
        return now - float(relative[1]) * _RELATIVE_SECONDS[relative[2]]
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use an ISO date or datetime (UTC unless it has a zone,"
            " e.g. 2026-11-01 or 2026-11-01T12:00+02:00), a span ago like 24h or 7d, or now"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------ formats


@dataclass(frozen=True, slots=True)
class _Column:
    name: str  # json / csv field
    header: str  # table header, with its unit
    value: Callable[[UsageRow], Any]
    text: Callable[[Any], str]
    numeric: bool = True


def _fixed(places: int) -> Callable[[Any], str]:
    return lambda v: f"{v:,.{places}f}"


def _columns(by: str) -> list[_Column]:
    cols = [
        _Column(by, by, lambda r: r.key, lambda v: "-" if v is None else str(v), numeric=False),
        _Column("instances", "instances", lambda r: r.instances, _fixed(0)),
        _Column("wall_seconds", "wall (s)", lambda r: r.wall_seconds, _fixed(1)),
        _Column("reserved_core_ms", "reserved (core-ms)", lambda r: r.reserved_core_ms, _fixed(0)),
        _Column("measured_core_ms", "measured (core-ms)", lambda r: r.measured_core_ms, _fixed(0)),
        _Column("reserved_gb_s", "reserved (GB-s)", lambda r: r.reserved_gb_s, _fixed(3)),
        _Column("measured_gb_s", "measured (GB-s)", lambda r: r.measured_gb_s, _fixed(3)),
    ]
    if by == "instance":
        cols += [
            _Column("started_at", "started (UTC)", lambda r: r.started_at, iso, numeric=False),
            _Column("stopped_at", "stopped (UTC)", lambda r: r.stopped_at, iso, numeric=False),
            _Column("exit_reason", "exit reason", lambda r: r.exit_reason, _text, numeric=False),
        ]
    else:
        cols += [
            _Column("requests", "requests", lambda r: r.requests, _fixed(0)),
            _Column("bytes_in", "in (bytes)", lambda r: r.bytes_in, _fixed(0)),
            _Column("bytes_out", "out (bytes)", lambda r: r.bytes_out, _fixed(0)),
        ]
    return cols


def _text(v: Any) -> str:
    return "" if v is None else str(v)


@dataclass(frozen=True, slots=True)
class Report:
    """One window of usage, optionally priced, ready to print in any format.

    The table gets a total row and, under it, the rate card's rates and the notes; json and
    csv are one record per row only, so tools can read them without skipping anything.
    """

    rows: Sequence[UsageRow]
    by: str
    since: float | None
    until: float | None
    card: RateCard | None = None

    def costs(self) -> list[Cost]:
        """Each row priced on the card, in row order; empty when unpriced."""
        card = self.card
        return [] if card is None else [price(row, card) for row in self.rows]

    def records(self) -> list[dict[str, Any]]:
        """One object per row: the json and csv form. Costs are ``cost_<item>`` fields."""
        cols = _columns(self.by)
        costs = self.costs()
        out = []
        for i, row in enumerate(self.rows):
            record = {c.name: c.value(row) for c in cols}
            if self.card is not None:
                record["rate_card"] = self.card.name
                for item, amount in costs[i].items:
                    record[f"cost_{item}"] = amount
                record["cost_total"] = costs[i].total
            out.append(record)
        return out

    def notes(self) -> list[str]:
        """What a reader must know to trust the numbers: printed under the table (stderr for
        json and csv, so their stdout stays machine-readable)."""
        notes = []
        shapes = [m for row in self.rows for m in row.machine_time]
        no_cpu = sum(m.seconds for m in shapes if m.cpu_limit is None)
        no_memory = sum(m.seconds for m in shapes if m.memory_limit is None)
        if no_cpu:
            notes.append(f"{no_cpu:,.1f} instance-s had no cpu limit: they reserve 0 core-ms")
        if no_memory:
            notes.append(f"{no_memory:,.1f} instance-s had no memory limit: they reserve 0 GB-s")
        if self.by == "instance":
            notes.append("traffic is per route, not per instance: see --by service for it")
        if self.card is not None:
            costs = self.costs()
            if self.card.gb_s_disk is not None:
                notes.append("disk GB-s is not measured yet: gb_s_disk is priced on 0 GB-s")
            unplaced = sum(c.unplaced_seconds for c in costs)
            if self.card.hourly and unplaced:
                notes.append(
                    f"{unplaced:,.1f} instance-s have no cpu or memory limit, or one no size"
                    " fits: they are not in $ hourly"
                )
        return notes

    def card_lines(self) -> list[str]:
        """The rate card's name, source and every rate, so each cost can be checked by hand."""
        card = self.card
        if card is None:
            return []
        lines = [f"rate card {card.name}" + (f" ({card.source})" if card.source else "") + ":"]
        for item, rate, unit in card.rate_lines():
            lines.append(f"  {item:<12} ${dollars(rate)} {unit}")
        used: dict[str, float] = {}
        for cost in self.costs():
            for size_name, secs in cost.sizes:
                used[size_name] = used.get(size_name, 0.0) + secs
        for size in card.hourly:
            if size.name in used:
                lines.append(
                    f"  {size.name} used {used[size.name] / 3600:,.4f} h x ${dollars(size.price)}/h"
                )
        lines += [f"  {note}" for note in card.notes]
        return lines

    # ------------------------------------------------------------------ renderers

    def table(self) -> str:
        cols = _columns(self.by)
        headers = [c.header for c in cols]
        numeric = [c.numeric for c in cols]
        cells = [[c.text(c.value(row)) for c in cols] for row in self.rows]
        costs = self.costs()
        if self.card is not None:
            items = self.card.items()
            headers += [f"$ {item}" for item in items] + ["$ total"]
            numeric += [True] * (len(items) + 1)
            for line, cost in zip(cells, costs, strict=True):
                line += [dollars_cell(amount) for _, amount in cost.items]
                line.append(dollars_cell(cost.total))
            cells.append(self._total_line(cols, costs))
        widths = [max([len(h), *(len(line[i]) for line in cells)]) for i, h in enumerate(headers)]

        def fmt(line: list[str]) -> str:
            parts = [
                v.rjust(w) if num else v.ljust(w)
                for v, w, num in zip(line, widths, numeric, strict=True)
            ]
            return "  ".join(parts).rstrip()

        title = f"usage by {self.by}, {iso(self.since) or 'start'} .. {iso(self.until) or 'now'}"
        out = [title, fmt(headers)]
        if not self.rows:
            out.append("(no usage in this window)")
        else:
            out += [fmt(line) for line in cells]
        footer = self.card_lines() + [f"note: {n}" for n in self.notes()]
        if footer:
            out += ["", *footer]
        return "\n".join(out) + "\n"

    def _total_line(self, cols: list[_Column], costs: list[Cost]) -> list[str]:
        line = []
        for c in cols:
            if c.name == self.by:
                line.append("total")
            elif c.numeric:
                line.append(c.text(sum(c.value(row) for row in self.rows)))
            else:
                line.append("")
        assert self.card is not None
        for i, _item in enumerate(self.card.items()):
            line.append(dollars_cell(sum(cost.items[i][1] for cost in costs)))
        line.append(dollars_cell(sum(cost.total for cost in costs)))
        return line

    def json(self) -> str:
        return json.dumps(self.records(), indent=2) + "\n"

    def csv(self) -> str:
        records = self.records()
        fieldnames = [c.name for c in _columns(self.by)]
        if self.card is not None:
            items = [f"cost_{item}" for item in self.card.items()]
            fieldnames += ["rate_card", *items, "cost_total"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buf.getvalue()

    def render(self, fmt: str) -> str:
        if fmt == "table":
            return self.table()
        if fmt == "json":
            return self.json()
        if fmt == "csv":
            return self.csv()
        raise ValueError(f"format must be table, json or csv, not {fmt!r}")


def dollars_cell(amount: float) -> str:
    # Eight places: per-core-ms rates make cents too coarse for small workloads.
    return f"{amount:,.8f}"
