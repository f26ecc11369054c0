"""Per-route traffic deltas for the usage ledger, read from the data plane's own counters.

Every interval the tally compares each route's cumulative counters (requests, bytes each
way: ``RouteStats`` for http, the per-route ``L4Stats`` for tcp, the listener's stats for
its one udp route) with what it read last time and hands the differences on as
``TrafficReport``s. Bytes are counted by the relays as they pass, never from
Content-Length, so a cut transfer bills what actually crossed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from guard.control.metering import TrafficReport

if TYPE_CHECKING:
    from guard.runtime.worker import Worker

Totals = tuple[int, int, int]  # requests, bytes_in, bytes_out


class TrafficTally:
    def __init__(self, worker: Worker, send: Callable[[TrafficReport], None]) -> None:
        self.worker = worker
        self.send = send
        self._last: dict[tuple[str, str], Totals] = {}
        self._since = time.time()

    def totals(self) -> dict[tuple[str, str], tuple[str, Totals]]:
        """(listener, route) -> (service, cumulative totals)."""
        out: dict[tuple[str, str], tuple[str, Totals]] = {}
        w = self.worker
        for name, ctx in w.contexts.items():
            for stats in list(ctx.stats.values()):
                if stats.route:  # "" = matched no route: nothing to bill
                    requests = sum(stats.requests.values())
                    out[(name, stats.route)] = (
                        stats.service,
                        (requests, stats.bytes_in, stats.bytes_out),
                    )
        for name, tctx in w.tcp_contexts.items():
            for route, rs in list(tctx.route_stats.items()):
                service = tctx.route_services.get(route, "")
                out[(name, route)] = (service, (rs.connections, rs.bytes_in, rs.bytes_out))
        for name, uctx in w.udp_contexts.items():
            route_cfg = uctx.route
            if route_cfg is not None:
                s = uctx.stats
                out[(name, route_cfg.name)] = (
                    route_cfg.service,
                    (s.connections, s.bytes_in, s.bytes_out),
                )
        return out

    def flush(self) -> None:
        now = time.time()
        start, self._since = self._since, now
        for key, (service, totals) in self.totals().items():
            last = self._last.get(key, (0, 0, 0))
            self._last[key] = totals
            delta = (totals[0] - last[0], totals[1] - last[1], totals[2] - last[2])
            if any(delta) and now > start:
                self.send(
                    TrafficReport(
                        worker=self.worker.worker_id,
                        route=key[1],
                        service=service,
                        start=start,
                        end=now,
                        requests=delta[0],
                        bytes_in=delta[1],
                        bytes_out=delta[2],
                    )
                )
