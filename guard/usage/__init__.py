"""Usage metering: the crash-safe ledger of instance and traffic slices, reports, rate cards."""

from guard.usage.ledger import (
    SCHEMA_VERSION,
    InstanceSlice,
    LedgerError,
    TrafficSlice,
    UsageLedger,
)
from guard.usage.pricing import BUILTIN, FLY_SIZES, MachineSize, RateCard, load_rate_card, price
from guard.usage.report import MachineTime, Report, UsageRow, parse_when

__all__ = [
    "BUILTIN",
    "FLY_SIZES",
    "SCHEMA_VERSION",
    "InstanceSlice",
    "LedgerError",
    "MachineSize",
    "MachineTime",
    "RateCard",
    "Report",
    "TrafficSlice",
    "UsageLedger",
    "UsageRow",
    "load_rate_card",
    "parse_when",
    "price",
]
