"""``guard`` command line: run, check, reload, usage."""

from __future__ import annotations

import argparse
import logging
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
    _defer_signals()
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
    from guard.buildinfo import describe

    logging.getLogger("guard").info("guard %s (%s)", __version__, describe())
    if config.workers > 1:
        from guard.runtime.supervisor import supervise

        return run(supervise(config))
    from guard.runtime.handover import take_sockets
    from guard.runtime.worker import serve

    try:
        sockets = take_sockets(config, slots=1, reuse_port=False)
        return run(serve(config, sockets))
    except OSError as e:
        print(f"guard: cannot listen: {e}", file=sys.stderr)
        return 1


def _defer_signals() -> None:
    """SIGHUP and SIGUSR2 are handled once Guard serves; until then their default action
    would kill a Guard still starting. A Python handler (not SIG_IGN) so that processes
    started meanwhile (container instances) get the default back at exec."""
    import logging
    import signal

    def early(signum: int, _frame: object) -> None:
        # A route change meanwhile is caught by comparing the files once serving.
        logging.getLogger("guard").warning(
            "%s before Guard was serving: ignored", signal.Signals(signum).name
        )

    for sig in (signal.SIGHUP, signal.SIGUSR2):
        signal.signal(sig, early)


def cmd_reload(args: argparse.Namespace) -> int:
    """SIGHUP (route files) or SIGUSR2 (binary restart) to a running Guard."""
    import os
    import signal
    import time

    from guard.runtime.handover import read_pid

    pid_file: Path | None = args.pid_file
    if args.pid is None and pid_file is None:
        # From guard.yaml: checked first, as `nginx -t` before a reload, so a restart into
        # a config that cannot start is refused here rather than logged there.
        try:
            config = _load(args.config)
        except ConfigErrors as e:
            for err in e.errors:
                print(err, file=sys.stderr)
            print("guard: not reloading: the config has errors", file=sys.stderr)
            return 2
        if config.pid_file is None:
            print(
                f"guard: {config.path}: pid_file: not set; set it (guard run writes its pid"
                " there) or give --pid or --pid-file",
                file=sys.stderr,
            )
            return 2
        pid_file = config.pid_file
    pid: int = args.pid
    if pid is None:
        assert pid_file is not None
        try:
            pid = read_pid(pid_file)
        except ValueError as e:
            print(f"guard: {e}", file=sys.stderr)
            return 1
    sig = signal.SIGUSR2 if args.binary else signal.SIGHUP
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        print(f"guard: no process {pid} (is Guard running? a stale pid file?)", file=sys.stderr)
        return 1
    except PermissionError:
        print(f"guard: not allowed to signal pid {pid}", file=sys.stderr)
        return 1
    if not args.binary:
        print(f"guard: route reload requested from pid {pid} (its log says how it went)")
        return 0
    if pid_file is None:
        print(f"guard: restart requested from pid {pid} (its log says how it went)")
        return 0
    # The new Guard writes its pid there once it serves; the old one keeps its own there
    # when the new one fails to start.
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            now = read_pid(pid_file)
        except ValueError:
            now = pid
        if now != pid:
            print(f"guard: restarted: pid {pid} -> {now} (pid {pid} drains and exits)")
            return 0
        time.sleep(0.05)
    print(
        f"guard: pid {pid} still serves: no new Guard took over within {args.timeout:g}s"
        " (its log says why)",
        file=sys.stderr,
    )
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


class _VersionAction(argparse.Action):
    """``guard --version``: the version and the build (pure Python or compiled), looked up
    only when asked (it imports the hot path)."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        from guard.buildinfo import describe

        print(f"guard {__version__} ({describe()})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guard",
        description="Edge load balancer and proxy that wakes containers on demand.",
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="print the version")
    sub = parser.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser("run", help="serve traffic with a guard.yaml")
    run_p.add_argument("--config", "-c", type=Path, default=Path("configs/guard.yaml"))
    run_p.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    run_p.set_defaults(func=cmd_run)

    reload_p = sub.add_parser(
        "reload",
        help="reload a running Guard's route files, or restart its binary (--binary)",
        description="Signals a running Guard: SIGHUP reloads the route files; with --binary,"
        " SIGUSR2 starts a new Guard (new code, guard.yaml re-read) on the same sockets and"
        " the old one drains and exits. The pid comes from --pid, --pid-file, or the"
        " pid_file of --config (which is checked first).",
    )
    reload_p.add_argument("--config", "-c", type=Path, default=Path("configs/guard.yaml"))
    reload_p.add_argument("--pid-file", type=Path, default=None)
    reload_p.add_argument("--pid", type=int, default=None)
    reload_p.add_argument("--binary", action="store_true", help="restart the binary (SIGUSR2)")
    reload_p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="with --binary: seconds to wait for the new Guard to take over (default 60)",
    )
    reload_p.set_defaults(func=cmd_reload)

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
