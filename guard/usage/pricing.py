"""Rate cards: what the usage in a report would cost on another platform.

A rate card prices some of a ``UsageRow``'s quantities, each item on its own:

==============  ======================================================================
``core_ms``     $ per core-ms of CPU (measured or reserved, see ``cpu``)
``vcpu_s``      $ per vCPU-second, i.e. per 1000 core-ms (same basis)
``gb_s_memory`` $ per GB-second of memory (measured or reserved, see ``memory``)
``gb_s_disk``   $ per GB-second of disk: Guard does not measure disk yet, so this is $0
``egress_gb``   $ per GB sent backend -> client (``bytes_out``)
``hourly``      machine sizes billed per hour: each instance's time is priced at the
                cheapest size whose cpu and memory hold the instance's limits
==============  ======================================================================

GB is decimal (1e9 bytes) throughout, as in the reports; a rate published per GiB is
converted when the card is built, and the card says so. Free tiers and included allowances
are ignored: the cost shown is what the usage costs past them.

Rate card files (``--price FILE.yaml``) have the same items; configs/ratecard-example.yaml
documents the format.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from guard.config import units
from guard.errors import ConfigError, ConfigErrors

if TYPE_CHECKING:
    from guard.usage.report import UsageRow

Basis = Literal["measured", "reserved"]
BASES = ("measured", "reserved")

GIB_IN_GB = 2**30 / 1e9  # 1 GiB = 1.073741824 GB
MIB = 2**20
GIB = 2**30

# Disk use is not measured yet; gb_s_disk prices this, and every output says so.
DISK_GB_S = 0.0


@dataclass(frozen=True, slots=True)
class MachineSize:
    name: str
    cpu: float  # vCPUs
    memory: int  # bytes
    price: float  # $ per hour


@dataclass(frozen=True, slots=True)
class RateCard:
    name: str
    source: str = ""  # where the rates come from, shown with them
    core_ms: float | None = None  # None: the card does not price this item
    vcpu_s: float | None = None
    gb_s_memory: float | None = None
    gb_s_disk: float | None = None
    egress_gb: float | None = None
    hourly: tuple[MachineSize, ...] = ()
    cpu: Basis = "measured"  # which core-ms core_ms and vcpu_s apply to
    memory: Basis = "reserved"  # which GB-s gb_s_memory applies to
    notes: tuple[str, ...] = ()  # caveats printed under the rates

    def items(self) -> list[str]:
        """The items this card prices, in report column order."""
        names = [
            name
            for name in ("core_ms", "vcpu_s", "gb_s_memory", "gb_s_disk", "egress_gb")
            if getattr(self, name) is not None
        ]
        return [*names, "hourly"] if self.hourly else names

    def rate_lines(self) -> list[tuple[str, float, str]]:
        """(item, $ rate, what it is per) for every priced item, hourly sizes one per line."""
        units_of = {
            "core_ms": f"per {self.cpu} core-ms",
            "vcpu_s": f"per {self.cpu} vCPU-s (1000 core-ms)",
            "gb_s_memory": f"per GB-s of {self.memory} memory",
            "gb_s_disk": "per GB-s of disk (not measured: 0 GB-s)",
            "egress_gb": "per GB of egress (bytes out)",
        }
        lines = [
            (item, getattr(self, item), units_of[item]) for item in self.items() if item != "hourly"
        ]
        for size in self.hourly:
            lines.append(
                (
                    "hourly",
                    size.price,
                    f"per hour of {size.name} ({size.cpu:g} vCPU, {_size_text(size.memory)})",
                )
            )
        return lines


def _size_text(n: int) -> str:
    if n % GIB == 0:
        return f"{n // GIB} GiB"
    if n % MIB == 0:
        return f"{n // MIB} MiB"
    return f"{n / 1e9:g} GB"


@dataclass(frozen=True, slots=True)
class Cost:
    items: tuple[tuple[str, float], ...]  # (item, $) in RateCard.items() order
    total: float
    unplaced_seconds: float = 0.0  # instance-seconds no hourly size could price
    sizes: tuple[tuple[str, float], ...] = ()  # (size name, seconds) the hourly item used


def pick_size(
    sizes: tuple[MachineSize, ...], cpu_limit: float | None, memory_limit: int | None
) -> MachineSize | None:
    """The cheapest size holding both limits; None when a limit is unset or nothing fits.

    An unlimited instance may use the whole host, which no fixed size promises, so it is left
    unpriced (and reported) rather than guessed at.
    """
    if cpu_limit is None or memory_limit is None:
        return None
    fits = [s for s in sizes if s.cpu >= cpu_limit and s.memory >= memory_limit]
    return min(fits, key=lambda s: s.price, default=None)


def price(row: UsageRow, card: RateCard) -> Cost:
    """What ``row`` costs on ``card``, item by item."""
    core_ms = row.measured_core_ms if card.cpu == "measured" else row.reserved_core_ms
    gb_s = row.measured_gb_s if card.memory == "measured" else row.reserved_gb_s
    amounts = {
        "core_ms": core_ms,
        "vcpu_s": core_ms / 1000,
        "gb_s_memory": gb_s,
        "gb_s_disk": DISK_GB_S,
        "egress_gb": row.bytes_out / 1e9,
    }
    items: list[tuple[str, float]] = []
    for item in card.items():
        if item != "hourly":
            items.append((item, amounts[item] * getattr(card, item)))
    unplaced = 0.0
    used: dict[str, float] = {}
    if card.hourly:
        machine = 0.0
        for m in row.machine_time:
            size = pick_size(card.hourly, m.cpu_limit, m.memory_limit)
            if size is None:
                unplaced += m.seconds
                continue
            machine += m.seconds / 3600 * size.price
            used[size.name] = used.get(size.name, 0.0) + m.seconds
        items.append(("hourly", machine))
    return Cost(
        items=tuple(items),
        total=sum(amount for _, amount in items),
        unplaced_seconds=unplaced,
        sizes=tuple(used.items()),
    )


def dollars(rate: float) -> str:
    """A rate in plain decimals (0.00000001119, not 1.119e-08), so it can be copied by hand."""
    text = f"{rate:.14f}".rstrip("0").rstrip(".")
    return text or "0"


# ------------------------------------------------------------------------ built-in cards

# Fly.io Machines, per hour, from the monthly prices on https://fly.io/docs/about/pricing/
# (the cheapest regions, e.g. iad; monthly = 720 h, so $31.00/mo is $0.0431/h). Sizes have
# more memory for extra money; only the base memory of each size is modelled, so a
# memory-heavy instance is priced on a bigger size than Fly would sell it. shared-cpu vCPUs
# are guaranteed 1/16 of a core and burst above it; they count as a full vCPU when fitting
# a cpu limit, as a cpu limit is also a ceiling, not a guarantee.
FLY_SIZES = (
    MachineSize("shared-cpu-1x", 1, 256 * MIB, 0.0027),  # $1.94/mo
    MachineSize("shared-cpu-2x", 2, 512 * MIB, 0.0054),  # $3.89/mo
    MachineSize("shared-cpu-4x", 4, 1 * GIB, 0.0108),  # $7.78/mo
    MachineSize("performance-1x", 1, 2 * GIB, 0.0431),  # $31.00/mo
    MachineSize("performance-2x", 2, 4 * GIB, 0.0861),  # $62.00/mo
    MachineSize("performance-4x", 4, 8 * GIB, 0.1722),  # $124.00/mo
)

BUILTIN: Mapping[str, RateCard] = {
    # Rates as listed in issue 5 from Rivet's public pricing; Rivet's published prices have
    # changed over time (an older docs page lists egress at $0.15/GB), so check them before
    # relying on this card. CPU priced on measured use.
    "rivet": RateCard(
        name="rivet",
        source="rivet.dev pricing, as listed in issue 5",
        core_ms=0.00000001119,
        egress_gb=0.05,
        cpu="measured",
    ),
    # https://developers.cloudflare.com/containers/pricing/: $0.000020 per vCPU-s of active
    # CPU, $0.0000025 per GiB-s of provisioned memory, $0.00000007 per GB-s of provisioned
    # disk. Memory is per GiB there and per GB here, hence the conversion. Egress is not in
    # this card (Cloudflare: $0.025/GB in NA/EU past 1 TB).
    "cloudflare": RateCard(
        name="cloudflare",
        source="developers.cloudflare.com/containers/pricing",
        vcpu_s=0.000020,
        gb_s_memory=0.0000025 / GIB_IN_GB,
        gb_s_disk=0.00000007,
        cpu="measured",
        memory="reserved",
        notes=("gb_s_memory is Cloudflare's $0.0000025 per GiB-s converted to per GB-s",),
    ),
    "fly": RateCard(
        name="fly",
        source="fly.io/docs/about/pricing, monthly / 720 h",
        hourly=FLY_SIZES,
        notes=("each instance is priced on the cheapest size holding its cpu and memory limit",),
    ),
}


# ------------------------------------------------------------------------ rate card files

_RATES = ("core_ms", "vcpu_s", "gb_s_memory", "gb_s_disk", "egress_gb")
_KEYS = ("name", "source", *_RATES, "hourly", "cpu", "memory", "notes")


def load_rate_card(spec: str) -> RateCard:
    """A built-in card by name (rivet, cloudflare, fly) or a rate card YAML file.

    Raises ConfigErrors with every problem in the file as ``file: key: message``.
    """
    if spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec)
    if not path.is_file():
        raise ConfigErrors(
            [
                ConfigError(
                    spec,
                    "",
                    f"no such rate card: use {', '.join(BUILTIN)} or a rate card YAML file",
                )
            ]
        )
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigErrors([ConfigError(spec, "", f"cannot read rate card: {e}")]) from None
    return parse_rate_card(doc, spec)


def parse_rate_card(doc: Any, file: str) -> RateCard:
    errors: list[ConfigError] = []

    def error(key: str, message: str) -> None:
        errors.append(ConfigError(file, key, message))

    if not isinstance(doc, dict):
        raise ConfigErrors([ConfigError(file, "", "a rate card is a mapping of items")])
    for key in doc:
        if key not in _KEYS:
            error(str(key), f"unknown key (known: {', '.join(_KEYS)})")
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        error("name", "required: a non-empty string naming the card")
    source = doc.get("source", "")
    if not isinstance(source, str):
        error("source", "must be a string")
    rates: dict[str, Any] = {}  # (Any: unpacked into RateCard beside the bases)
    for key in _RATES:
        if key in doc:
            rate = _rate(doc[key])
            if rate is None:
                error(key, "must be a number >= 0 (dollars per unit)")
            else:
                rates[key] = rate
    bases: dict[str, Any] = {}  # key -> Basis
    for key in ("cpu", "memory"):
        if key in doc:
            if doc[key] in BASES:
                bases[key] = doc[key]
            else:
                error(key, f"must be measured or reserved, not {doc[key]!r}")
    hourly = _hourly(doc.get("hourly"), error) if "hourly" in doc else ()
    notes = doc.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        error("notes", "must be a list of strings")
        notes = []
    if not rates and not hourly and not errors:
        error("", f"prices nothing: give at least one of {', '.join(_RATES)}, hourly")
    if errors:
        raise ConfigErrors(errors)
    return RateCard(
        name=str(name),
        source=str(source),
        hourly=hourly,
        notes=tuple(notes),
        **rates,
        **bases,
    )


def _rate(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _hourly(node: Any, error: Callable[[str, str], None]) -> tuple[MachineSize, ...]:
    if not isinstance(node, dict) or not node:
        error("hourly", "must map size names to {cpu, memory, price} or to a Fly size's price")
        return ()
    fly = {s.name: s for s in FLY_SIZES}
    sizes = []
    for size, spec in node.items():
        key = f"hourly.{size}"
        if not isinstance(spec, dict):
            # A bare price reuses the cpu and memory of the Fly size of that name.
            rate = _rate(spec)
            if size in fly and rate is not None:
                sizes.append(MachineSize(str(size), fly[size].cpu, fly[size].memory, rate))
            elif size in fly:
                error(key, "must be a number >= 0 (dollars per hour)")
            else:
                error(key, "needs {cpu, memory, price}: only Fly sizes may be given a bare price")
            continue
        for unknown in set(spec) - {"cpu", "memory", "price"}:
            error(f"{key}.{unknown}", "unknown key (known: cpu, memory, price)")
        parsed: dict[str, Any] = {}
        for name, parse in (("cpu", units.parse_cpu), ("memory", units.parse_size)):
            if name not in spec:
                error(key, f"missing required key {name!r}")
                continue
            try:
                parsed[name] = parse(spec[name])
            except ValueError as e:
                error(f"{key}.{name}", str(e))
        rate = _rate(spec.get("price"))
        if rate is None:
            error(f"{key}.price", "required: a number >= 0 (dollars per hour)")
        elif len(parsed) == 2:
            if parsed["cpu"] <= 0 or parsed["memory"] <= 0:
                error(key, "cpu and memory must be > 0")
            else:
                sizes.append(MachineSize(str(size), parsed["cpu"], parsed["memory"], rate))
    return tuple(sizes)
