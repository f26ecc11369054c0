"""``guard`` command line: run, check, usage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from guard import __version__
from guard.errors import ConfigErrors

if TYPE_CHECKING:
    from guard.config.model import GuardConfig


def _load(path: Path):  # type: ignore[no-untyped-def]
    from guard.config import load_config

    return load_config(path)


def cmd_check(args: argparse.Namespace) -> int:
    from guard.runtime.support import unsupported

    try:
        config = _load(args.config)
    except ConfigErrors as e:
        for err in e.errors:
            print(err, file=sys.stderr)
        print(f"{len(e.errors)} error(s)", file=sys.stderr)
        return 1
    routes = config.routes
    print(
        f"{config.path}: ok: {len(config.listeners)} listeners, {len(routes.routes)} routes, "
        f"{len(routes.services)} services, {config.workers} worker(s)"
    )
    for item in unsupported(config):
        print(f"note: {item} (guard run will refuse it)")
    refusal = _admin_refusal(config)
    if refusal:
        print(f"note: {refusal} (guard run will refuse it)")
    return 0


def _admin_refusal(config: GuardConfig) -> str | None:
    """Why the admin address cannot be served: a non-loopback address without tokens, or a
    token that cannot be read (a missing env var, an unreadable file). Checked before
    anything binds, so the refusal is the only thing the user sees."""
    from guard.admin.auth import TokenError, load_tokens
    from guard.admin.server import bind_refusal

    if config.admin is None:
        return None
    try:
        load_tokens(config.admin)
    except TokenError as e:
        return str(e)
    return bind_refusal(config.admin)


def cmd_run(args: argparse.Namespace) -> int:
    from guard.runtime.logs import setup_logging
    from guard.runtime.loop import run
    from guard.runtime.support import unsupported

    setup_logging(args.log_level)
    try:
        config = _load(args.config)
    except ConfigErrors as e:
        for err in e.errors:
            print(err, file=sys.stderr)
        return 2
    missing = unsupported(config)
    if missing:
        for item in missing:
            print(f"guard: {item}", file=sys.stderr)
        return 2
    refusal = _admin_refusal(config)
    if refusal:
        print(f"guard: {config.path}: {refusal}", file=sys.stderr)
        return 2
    if config.workers > 1:
        from guard.runtime.supervisor import supervise

        return run(supervise(config))
    from guard.runtime.worker import serve

    try:
        return run(serve(config))
    except OSError as e:
        print(f"guard: cannot listen: {e}", file=sys.stderr)
        return 1


def cmd_usage(args: argparse.Namespace) -> int:
    import time

    from guard.usage import LedgerError, Report, UsageLedger, load_rate_card, parse_when

    now = time.time()
    window: dict[str, float | None] = {}
    for flag in ("since", "until"):
        text = getattr(args, flag)
        try:
            window[flag] = None if text is None else parse_when(text, now)
        except ValueError as e:
            print(f"guard: --{flag}: {e}", file=sys.stderr)
            return 2
    try:
        config = _load(args.config)
        card = load_rate_card(args.price) if args.price else None
    except ConfigErrors as e:
        for err in e.errors:
            print(err, file=sys.stderr)
        return 2
    if config.usage is None:
        print(
            f"{config.path}: usage: not configured; add `usage: {{ledger: PATH}}` so guard run"
            " records usage there",
            file=sys.stderr,
        )
        return 2
    path = config.usage.ledger
    if not path.exists():
        print(f"guard: {path}: no usage ledger yet (guard run creates it)", file=sys.stderr)
        return 1
    ledger = UsageLedger(path)
    try:
        ledger.open()
        rows = ledger.query(window["since"], window["until"], args.by, tenant=args.tenant)
    except LedgerError as e:
        print(f"guard: {e}", file=sys.stderr)
        return 1
    finally:
        ledger.close()
    report = Report(rows, args.by, window["since"], window["until"], card)
    sys.stdout.write(report.render(args.format))
    if args.format != "table":
        # The table prints these under itself; json and csv keep stdout machine-readable.
        for line in report.card_lines() + [f"note: {n}" for n in report.notes()]:
            print(line, file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guard",
        description="Edge load balancer and proxy that wakes containers on demand.",
    )
    parser.add_argument("--version", action="version", version=f"guard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser("run", help="serve traffic with a guard.yaml")
    run_p.add_argument("--config", "-c", type=Path, default=Path("configs/guard.yaml"))
    run_p.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    run_p.set_defaults(func=cmd_run)

    check_p = sub.add_parser("check", help="validate guard.yaml and every route file")
    check_p.add_argument("--config", "-c", type=Path, default=Path("configs/guard.yaml"))
    check_p.set_defaults(func=cmd_check)

    usage_p = sub.add_parser(
        "usage",
        help="print recorded usage, optionally priced with a rate card",
        description="Usage from the ledger at usage.ledger in guard.yaml. Slices straddling"
        " --since or --until count in proportion to their part inside the window.",
    )
    usage_p.add_argument("--config", "-c", type=Path, default=Path("configs/guard.yaml"))
    usage_p.add_argument(
        "--since", help="ISO date or datetime (UTC unless zoned), or a span ago: 24h, 7d"
    )
    usage_p.add_argument("--until", help="same forms as --since; default: now")
    usage_p.add_argument("--by", choices=("tenant", "service", "instance"), default="service")
    usage_p.add_argument("--tenant", help="only this tenant's usage")
    usage_p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    usage_p.add_argument(
        "--price",
        metavar="rivet|cloudflare|fly|FILE.yaml",
        help="add cost columns from a built-in rate card or a rate card file",
    )
    usage_p.set_defaults(func=cmd_usage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
