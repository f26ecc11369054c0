"""``GET /v1/usage``: the usage ledger over HTTP, with the filters of ``guard usage``.

Query parameters: ``since`` / ``until`` (ISO dates or datetimes, UTC without a zone, or
``24h`` / ``7d`` ago), ``by`` (tenant | service | instance, default service), ``tenant``,
``price`` (a built-in rate card: rivet | cloudflare | fly; rate card *files* are a CLI
option only, since a path from a request would let a client make Guard read any file),
``format`` (json, default, or csv). The answer is read from the ledger file on a worker
thread with its own connection, so the event loop never waits on SQLite. A tenant's token
gets its own tenant forced in place of ``tenant``: other tenants' rows, and rows without a
tenant, are never in its answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs

from guard.admin.answers import Answer, error_answer
from guard.config.model import GuardConfig
from guard.usage import BUILTIN, LedgerError, Report, UsageLedger, parse_when
from guard.usage.report import GROUPINGS

_PARAMS = frozenset({"since", "until", "by", "tenant", "price", "format"})


UsagePage = Callable[[str, str | None], Awaitable[Answer]]  # (query, forced tenant) -> answer


def usage_answer(
    ledger_path: Path, query: str, now: float | None = None, tenant: str | None = None
) -> Answer:
    """Blocking (SQLite): call it off the event loop. ``tenant``: forced, whatever the query
    says."""
    now = time.time() if now is None else now
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        return error_answer(400, "invalid_parameter", "malformed query string")
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        return error_answer(400, "invalid_parameter", f"unknown parameter {unknown[0]!r}")
    value = {k: v[-1] for k, v in params.items()}
    if tenant is not None:
        value["tenant"] = tenant
    window: dict[str, float | None] = {}
    for name in ("since", "until"):
        try:
            window[name] = parse_when(value[name], now) if name in value else None
        except ValueError as e:
            return error_answer(400, "invalid_parameter", f"{name}: {e}")
    by = value.get("by", "service")
    if by not in GROUPINGS:
        return error_answer(400, "invalid_parameter", f"by must be one of {', '.join(GROUPINGS)}")
    fmt = value.get("format", "json")
    if fmt not in ("json", "csv"):
        return error_answer(400, "invalid_parameter", "format must be json or csv")
    card = None
    if "price" in value:
        card = BUILTIN.get(value["price"])
        if card is None:
            names = ", ".join(BUILTIN)
            return error_answer(400, "invalid_parameter", f"price must be one of {names}")
    if not ledger_path.exists():
        rows = []
    else:
        ledger = UsageLedger(ledger_path)
        try:
            ledger.open()
            rows = ledger.query(window["since"], window["until"], by, tenant=value.get("tenant"))
        except LedgerError as e:
            return error_answer(500, "ledger_error", str(e))
        finally:
            ledger.close()
    report = Report(rows, by, window["since"], window["until"], card)
    if fmt == "csv":
        return Answer(200, report.csv().encode(), "text/csv; charset=utf-8")
    doc = {
        "by": by,
        "since": window["since"],
        "until": window["until"],
        "rate_card": card.name if card is not None else None,
        "rates": report.card_lines(),
        "rows": report.records(),
        "notes": report.notes(),
    }
    return Answer(200, json.dumps(doc).encode())


def usage_page(config: GuardConfig) -> UsagePage | None:
    """The admin server's /v1/usage handler for ``config``; None without ``usage:``."""
    if config.usage is None:
        return None
    path = config.usage.ledger
    return lambda query, tenant: asyncio.to_thread(usage_answer, path, query, None, tenant)
