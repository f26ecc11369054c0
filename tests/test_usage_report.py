"""Usage reports and rate cards against a small hand-computed ledger.

The ledger (T0 = 2026-11-01T00:00:00Z):

- inst-a: service api, tenant acme, cpu limit 1, memory limit 2 GB (2e9 bytes), two 1800 s
  slices over [T0, T0+3600), 450 CPU-s and 1e9 bytes average RSS each; stopped: idle.
- inst-b: service api, tenant acme, cpu limit 0.5, memory limit 256 MiB, one slice
  [T0, T0+1800), 90 CPU-s, 1e8 bytes average RSS.
- inst-c: service batch, no tenant, no limits, one slice [T0, T0+600), 300 CPU-s, 5e8 bytes.
- route api-route (api, acme) over [T0, T0+3600): 1000 requests, 1e6 bytes in, 2e9 out;
  route db (batch, tcp, no tenant) over [T0, T0+600): 10 connections, 5e8 in, 1e9 out.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from guard.errors import ConfigErrors
from guard.usage import (
    BUILTIN,
    FLY_SIZES,
    InstanceSlice,
    Report,
    TrafficSlice,
    UsageLedger,
    UsageRow,
    load_rate_card,
    parse_when,
    price,
)
from guard.usage.pricing import pick_size

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
MIB = 2**20


def example_slices() -> list[InstanceSlice | TrafficSlice]:
    a = dict(instance="inst-a", service="api", tenant="acme", driver="process")
    return [
        InstanceSlice(
            "a-1",
            **a,
            start=T0,
            end=T0 + 1800,
            cpu_limit=1.0,
            memory_limit=2_000_000_000,
            cpu_seconds=450.0,
            memory_bytes_avg=1e9,
            started_at=T0,
        ),
        InstanceSlice(
            "a-2",
            **a,
            start=T0 + 1800,
            end=T0 + 3600,
            cpu_limit=1.0,
            memory_limit=2_000_000_000,
            cpu_seconds=450.0,
            memory_bytes_avg=1e9,
            stopped_at=T0 + 3600,
            exit_reason="stopped: idle",
        ),
        InstanceSlice(
            "b-1",
            "inst-b",
            "api",
            "acme",
            "process",
            T0,
            T0 + 1800,
            0.5,
            256 * MIB,
            90.0,
            1e8,
            started_at=T0,
        ),
        InstanceSlice(
            "c-1",
            "inst-c",
            "batch",
            None,
            "process",
            T0,
            T0 + 600,
            None,
            None,
            300.0,
            5e8,
            started_at=T0,
        ),
        TrafficSlice("r-1", "api-route", "api", "acme", T0, T0 + 3600, 1000, 10**6, 2 * 10**9),
        TrafficSlice("r-2", "db", "batch", None, T0, T0 + 600, 10, 5 * 10**8, 10**9),
    ]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[UsageLedger]:
    led = UsageLedger(tmp_path / "usage.sqlite")
    led.open()
    for item in example_slices():
        led.record(item)
    assert led.flush() == 6
    yield led
    led.close()


def by_key(rows: list[UsageRow]) -> dict[str | None, UsageRow]:
    return {row.key: row for row in rows}


# ------------------------------------------------------------------------ aggregation


def test_by_service_sums_instances_and_traffic(ledger: UsageLedger) -> None:
    rows = ledger.query(None, None, "service")
    assert [r.key for r in rows] == ["api", "batch"]
    api, batch = rows
    assert api.instances == 2
    assert api.wall_seconds == 5400  # 3600 (a) + 1800 (b) instance-seconds
    assert api.reserved_core_ms == 4_500_000  # 1.0 x 3600 s + 0.5 x 1800 s, x 1000
    assert api.measured_core_ms == 990_000  # (450 + 450 + 90) CPU-s x 1000
    assert api.reserved_gb_s == pytest.approx(7683.1838208)  # 2 x 3600 + 0.268435456 x 1800
    assert api.measured_gb_s == pytest.approx(3780)  # 1 x 3600 + 0.1 x 1800
    assert (api.requests, api.bytes_in, api.bytes_out) == (1000, 10**6, 2 * 10**9)
    # No limits: nothing reserved, everything measured still counted.
    assert (batch.reserved_core_ms, batch.reserved_gb_s) == (0, 0)
    assert batch.measured_core_ms == 300_000 and batch.measured_gb_s == pytest.approx(300)
    assert batch.requests == 10  # tcp connections count as requests


def test_window_clips_straddling_slices_in_proportion(ledger: UsageLedger) -> None:
    # [T0+900, T0+2700): half of a-1, half of a-2, half of b-1, none of c-1, half of r-1.
    [api] = ledger.query(T0 + 900, T0 + 2700, "service")
    assert api.wall_seconds == pytest.approx(2700)  # 900 + 900 (a) + 900 (b)
    assert api.measured_core_ms == pytest.approx(495_000)  # (225 + 225 + 45) x 1000
    assert api.reserved_core_ms == pytest.approx(2_250_000)  # 1.0 x 1800 + 0.5 x 900
    assert api.requests == pytest.approx(500) and api.bytes_out == pytest.approx(10**9)


def test_by_instance_has_lifecycle_from_slices_outside_the_window(ledger: UsageLedger) -> None:
    [a] = ledger.query(T0 + 2000, None, "instance")  # only a-2 reaches past T0+2000
    assert a.key == "inst-a" and a.wall_seconds == pytest.approx(1600)
    assert a.started_at == T0  # from a-1, before the window
    assert a.stopped_at == T0 + 3600 and a.exit_reason == "stopped: idle"
    assert a.requests == 0  # traffic has no instance
    rows = by_key(ledger.query(None, None, "instance"))
    assert set(rows) == {"inst-a", "inst-b", "inst-c"}
    assert rows["inst-b"].stopped_at is None and rows["inst-b"].exit_reason is None


def test_by_tenant_and_tenant_filter(ledger: UsageLedger) -> None:
    rows = ledger.query(None, None, "tenant")
    assert [r.key for r in rows] == ["acme", None]  # untenanted last
    assert rows[1].measured_core_ms == 300_000 and rows[1].bytes_out == 10**9
    [only] = ledger.query(None, None, "service", tenant="acme")
    assert only.key == "api"
    with pytest.raises(ValueError, match="by must be"):
        ledger.query(None, None, "route")


# ------------------------------------------------------------------------ pricing


def test_rivet_card_by_hand(ledger: UsageLedger) -> None:
    api, batch = ledger.query(None, None, "service")
    cost = price(api, BUILTIN["rivet"])
    # core_ms: 990,000 measured core-ms x $0.00000001119 = $0.0110781
    # egress:  2e9 bytes = 2 GB x $0.05 = $0.10
    assert dict(cost.items) == pytest.approx({"core_ms": 0.0110781, "egress_gb": 0.10})
    assert cost.total == pytest.approx(0.1110781)
    # batch: 300,000 x 0.00000001119 = 0.003357, + 1 GB x 0.05 = 0.053357
    assert price(batch, BUILTIN["rivet"]).total == pytest.approx(0.053357)


def test_cloudflare_card_by_hand(ledger: UsageLedger) -> None:
    api, batch = ledger.query(None, None, "service")
    cost = dict(price(api, BUILTIN["cloudflare"]).items)
    # vCPU: 990 measured CPU-s x $0.000020 = $0.0198
    assert cost["vcpu_s"] == pytest.approx(0.0198)
    # memory, reserved, priced per GiB-s as Cloudflare publishes it:
    #   inst-a 2e9 B = 1.862645149 GiB x 3600 s = 6705.522537 GiB-s
    #   inst-b 256 MiB = 0.25 GiB x 1800 s = 450 GiB-s
    #   7155.522537 GiB-s x $0.0000025 = $0.01788880634
    assert cost["gb_s_memory"] == pytest.approx(0.01788880634)
    assert cost["gb_s_disk"] == 0  # disk is not measured yet
    # batch has no memory limit: 0 reserved GB-s; 300 CPU-s x 0.00002 = 0.006
    assert price(batch, BUILTIN["cloudflare"]).total == pytest.approx(0.006)


def test_fly_card_picks_the_cheapest_size_that_holds_the_limits(ledger: UsageLedger) -> None:
    api, batch = ledger.query(None, None, "service")
    cost = price(api, BUILTIN["fly"])
    # inst-a (1 cpu, 2e9 B): shared-cpu-4x has only 1 GiB, performance-1x has 2 GiB:
    #   1 h x $0.0431 = $0.0431
    # inst-b (0.5 cpu, 256 MiB): shared-cpu-1x, 0.5 h x $0.0027 = $0.00135
    assert cost.total == pytest.approx(0.04445)
    assert dict(cost.sizes) == {"performance-1x": 3600, "shared-cpu-1x": 1800}
    # inst-c has no limits: no size promises a whole host, so it is not priced but counted.
    unpriced = price(batch, BUILTIN["fly"])
    assert unpriced.total == 0 and unpriced.unplaced_seconds == 600


def test_pick_size() -> None:
    assert pick_size(FLY_SIZES, 2, 512 * MIB).name == "shared-cpu-2x"  # type: ignore[union-attr]
    assert pick_size(FLY_SIZES, 3, 4 * 2**30).name == "performance-4x"  # type: ignore[union-attr]
    assert pick_size(FLY_SIZES, 8, 1) is None
    assert pick_size(FLY_SIZES, None, 1) is None


def test_example_rate_card_file_by_hand(ledger: UsageLedger) -> None:
    card = load_rate_card(str(REPO / "configs" / "ratecard-example.yaml"))
    assert card.name == "example-cloud"
    [api] = ledger.query(None, None, "service", tenant="acme")
    cost = dict(price(api, card).items)
    assert cost == pytest.approx(
        {
            "core_ms": 0.0099,  # 990,000 measured core-ms x 0.00000001
            "vcpu_s": 0.0099,  # 990 measured CPU-s x 0.00001
            "gb_s_memory": 0.0153663676416,  # 7683.1838208 reserved GB-s x 0.000002
            "gb_s_disk": 0.0,  # not measured
            "egress_gb": 0.1,  # 2 GB x 0.05
            # inst-a (1 cpu, 2e9 B): large (0.12/h) and performance-1x (0.05/h) hold it:
            #   cheaper one, 1 h x 0.05 = 0.05; inst-b: small, 0.5 h x 0.005 = 0.0025
            "hourly": 0.0525,
        }
    )
    assert price(api, card).total == pytest.approx(0.1876663676416)


def test_rate_card_file_errors_name_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: 3\ncore_ms: -1\ncpu: guessed\ncolour: red\n"
        "hourly: {tiny: {cpu: 0, memory: 1XB}, huge: 5}\n"
    )
    with pytest.raises(ConfigErrors) as info:
        load_rate_card(str(bad))
    messages = [str(e) for e in info.value.errors]
    f = str(bad)
    for expected in (
        f"{f}: colour: unknown key",
        f"{f}: name: required",
        f"{f}: core_ms: must be a number >= 0",
        f"{f}: cpu: must be measured or reserved",
        f"{f}: hourly.tiny.cpu: CPU must be greater than 0",
        f"{f}: hourly.tiny.memory: invalid size",
        f"{f}: hourly.tiny.price: required",
        f"{f}: hourly.huge: needs {{cpu, memory, price}}",
    ):
        assert any(m.startswith(expected) for m in messages), (expected, messages)
    with pytest.raises(ConfigErrors, match="no such rate card"):
        load_rate_card("aws")


# ------------------------------------------------------------------------ formats


def test_table_has_units_costs_total_rates_and_the_disk_note(ledger: UsageLedger) -> None:
    rows = ledger.query(T0, T0 + 86400, "service")
    text = Report(rows, "service", T0, T0 + 86400, BUILTIN["cloudflare"]).render("table")
    lines = text.splitlines()
    assert lines[0] == "usage by service, 2026-11-01T00:00:00Z .. 2026-11-02T00:00:00Z"
    for header in ("wall (s)", "measured (core-ms)", "reserved (GB-s)", "out (bytes)", "$ total"):
        assert header in lines[1]
    assert lines[2].split()[0] == "api" and lines[3].split()[0] == "batch"
    total = lines[4].split()
    assert total[0] == "total" and total[-1] == "0.04368881"  # 0.03768881 + 0.006
    assert "rate card cloudflare (developers.cloudflare.com/containers/pricing):" in text
    assert "vcpu_s       $0.00002 per measured vCPU-s" in text
    assert "note: disk GB-s is not measured yet" in text
    assert "note: 600.0 instance-s had no cpu limit: they reserve 0 core-ms" in text


def test_json_is_a_list_of_numeric_objects(ledger: UsageLedger) -> None:
    rows = ledger.query(None, None, "service")
    records = json.loads(Report(rows, "service", None, None, BUILTIN["rivet"]).render("json"))
    api = records[0]
    assert api["service"] == "api" and api["measured_core_ms"] == 990000
    assert api["bytes_out"] == 2e9 and api["rate_card"] == "rivet"
    assert api["cost_total"] == pytest.approx(0.1110781)
    unpriced = json.loads(Report(rows, "instance", None, None).render("json"))
    assert "cost_total" not in unpriced[0]


def test_csv_has_a_header_row(ledger: UsageLedger) -> None:
    rows = ledger.query(None, None, "instance")
    text = Report(rows, "instance", None, None, BUILTIN["fly"]).render("csv")
    records = list(csv.DictReader(io.StringIO(text)))
    assert [r["instance"] for r in records] == ["inst-a", "inst-b", "inst-c"]
    assert float(records[0]["cost_hourly"]) == pytest.approx(0.0431)
    assert records[0]["exit_reason"] == "stopped: idle"
    assert float(records[0]["started_at"]) == T0


def test_empty_window_says_so(ledger: UsageLedger) -> None:
    text = Report(ledger.query(T0 + 10**6, None, "service"), "service", None, None).table()
    assert "(no usage in this window)" in text


# ------------------------------------------------------------------------ time window


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01", T0),
        ("2026-11-01T06:00", T0 + 6 * 3600),  # no zone: UTC
        ("2026-11-01T06:00+02:00", T0 + 4 * 3600),
        ("2026-11-01T06:00:00Z", T0 + 6 * 3600),
        ("24h", 1000_000.0 - 86400),
        ("7d", 1000_000.0 - 7 * 86400),
        ("now", 1000_000.0),
    ],
)
def test_parse_when(text: str, expected: float) -> None:
    assert parse_when(text, now=1000_000.0) == expected


def test_parse_when_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="not a time"):
        parse_when("last tuesday", now=0)
