"""Read one worker's live counters into a snapshot, at scrape (or send) time.

The data plane records into plain ints (``RouteStats``, ``L4Stats``, pool and backend
attributes) and never calls into this module: all the cost of metrics is paid here, once
per scrape, not per request.

Most of those objects live as long as the process (listener contexts survive reloads),
but services and their pools are rebuilt on every route reload. Counters must never go
backwards, so retired pools are kept until nothing uses them any more (a request started
before the reload may still open or reuse a connection on them), then folded into
running totals.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from guard.metrics.families import TCP_ERROR_REASONS, UDP_END_REASONS, UDP_ERROR_REASONS
from guard.metrics.snapshot import Hist, Snapshot, add
from guard.proxy.websocket import STATS as WEBSOCKET_STATS
from guard.routing.containers import ROUTE_NAME
from guard.upstream.service import Service

if TYPE_CHECKING:
    from guard.proxy.context import Histogram
    from guard.runtime.worker import Worker
    from guard.upstream.container_service import ContainerService
    from guard.upstream.pool import UpstreamPool


def _hist(h: Histogram) -> Hist:
    return Hist(list(h.counts), h.sum)


class WorkerMetrics:
    """Everything the exporter needs from one ``Worker``, plus what reloads would lose."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.reloads = {"success": 0, "failure": 0}
        self._retired: list[tuple[str, UpstreamPool]] = []  # still possibly in use
        self._retired_totals: dict[tuple[str, str], list[int]] = {}  # -> [connects, reuses]
        # (service, backend or "") -> {"retries": n, "ejections": n} of replaced services
        self._service_totals: dict[tuple[str, str], dict[str, int]] = {}

    def retire(self, services: Iterable[Service | ContainerService]) -> None:
        """Called on reload with the services being replaced."""
        services = list(services)
        self._retired.extend((svc.name, pool) for svc in services for pool in svc.pools)
        for svc in services:
            self._fold_service(svc, self._service_totals)

    @staticmethod
    def _fold_service(
        svc: Service | ContainerService, into: dict[tuple[str, str], dict[str, int]]
    ) -> None:
        """Service-level counters (retries, outlier ejections) into ``into``."""
        retries = getattr(svc, "retries_total", 0)
        if retries:
            into.setdefault((svc.name, ""), {}).setdefault("retries", 0)
            into[(svc.name, "")]["retries"] += retries
        outlier = getattr(svc, "outlier", None)
        if outlier is not None:
            for pool in svc.pools:
                n = outlier.total_ejections(pool.backend.name)
                if n:
                    entry = into.setdefault((svc.name, pool.backend.name), {})
                    entry["ejections"] = entry.get("ejections", 0) + n

    def snapshot(self) -> Snapshot:
        snap: Snapshot = {}
        self._http(snap)
        self._tcp(snap)
        self._tls(snap)
        self._udp(snap)
        self._upstreams(snap)
        api = self.worker.api_containers.services
        if self.worker.api_rejected_gone:
            add(
                snap,
                "guard_wake_queue_rejected_total",
                (ROUTE_NAME,),
                self.worker.api_rejected_gone,
            )
        for svc in list(self.worker.services.values()):
            rejected = getattr(svc, "rejected", None)
            if rejected is not None:
                # API containers (a service each): one label for all, as their route has.
                label = ROUTE_NAME if svc.name in api else svc.name
                add(snap, "guard_wake_queue_rejected_total", (label,), rejected)
        totals = {k: dict(v) for k, v in self._service_totals.items()}
        for svc in list(self.worker.services.values()):
            if isinstance(svc, Service):
                self._fold_service(svc, totals)
        for (service, backend), values in totals.items():
            if "retries" in values:
                add(snap, "guard_upstream_retries_total", (service,), values["retries"])
            if "ejections" in values:
                add(snap, "guard_outlier_ejections_total", (service, backend), values["ejections"])
        for result, n in self.reloads.items():
            add(snap, "guard_config_reloads_total", (result,), n)
        return snap

    def _http(self, snap: Snapshot) -> None:
        total = 0
        for name, ctx in self.worker.contexts.items():
            add(snap, "guard_open_connections", (name, "http"), len(ctx.connections))
            for reason, n in ctx.refused.items():
                add(snap, "guard_connections_refused_total", (name, reason), n)
            # list(): a scrape runs on the loop, but be safe against a dict growing under us
            for stats in list(ctx.stats.values()):
                route = (name, stats.route, stats.service)
                for (code, method), n in list(stats.requests.items()):
                    add(snap, "guard_requests_total", (*route, code, method), n)
                    total += n
                for code, n in list(stats.errors.items()):
                    add(snap, "guard_errors_total", (name, stats.route, code), n)
                add(snap, "guard_request_bytes_total", route, stats.bytes_in)
                add(snap, "guard_response_bytes_total", route, stats.bytes_out)
                add(snap, "guard_request_duration_seconds", route, _hist(stats.duration))
                add(snap, "guard_overhead_duration_seconds", route, _hist(stats.overhead))
            ws = WEBSOCKET_STATS.get(name)
            add(snap, "guard_websocket_tunnels_open", (name,), ws.open if ws is not None else 0)
            if ws is not None:
                for route_name, (n_in, n_out) in list(ws.messages.items()):
                    add(snap, "guard_websocket_messages_total", (name, route_name, "in"), n_in)
                    add(snap, "guard_websocket_messages_total", (name, route_name, "out"), n_out)
        add(snap, "guard_worker_requests_total", (str(self.worker.worker_id),), total)

    def _tcp(self, snap: Snapshot) -> None:
        for name, tctx in self.worker.tcp_contexts.items():
            stats = tctx.stats
            add(snap, "guard_open_connections", (name, "tcp"), len(tctx.connections))
            add(snap, "guard_tcp_accepted_total", (name,), stats.connections)
            for attr, reason in TCP_ERROR_REASONS.items():
                add(snap, "guard_tcp_errors_total", (name, reason), getattr(stats, attr))
            for route, rs in list(tctx.route_stats.items()):
                add(snap, "guard_tcp_connections_total", (name, route), rs.connections)
                add(snap, "guard_tcp_received_bytes_total", (name, route), rs.bytes_in)
                add(snap, "guard_tcp_sent_bytes_total", (name, route), rs.bytes_out)
                if rs.rate_limited:
                    add(
                        snap,
                        "guard_rate_limited_total",
                        (name, route, "connection"),
                        rs.rate_limited,
                    )

    def _tls(self, snap: Snapshot) -> None:
        for name, tls in self.worker.tls.items():
            for reason, n in tls.handshake_errors.items():
                add(snap, "guard_tls_handshake_errors_total", (name, reason), n)

    def _udp(self, snap: Snapshot) -> None:
        for name, uctx in self.worker.udp_contexts.items():
            s = uctx.stats
            key = (name,)
            add(snap, "guard_open_connections", (name, "udp"), len(uctx.sessions))
            add(snap, "guard_udp_sessions_total", key, s.connections)
            add(snap, "guard_udp_received_bytes_total", key, s.bytes_in)
            add(snap, "guard_udp_sent_bytes_total", key, s.bytes_out)
            add(snap, "guard_udp_received_packets_total", key, s.packets_in)
            add(snap, "guard_udp_sent_packets_total", key, s.packets_out)
            add(snap, "guard_udp_dropped_datagrams_total", key, s.datagrams_dropped)
            for attr, reason in UDP_ERROR_REASONS.items():
                add(snap, "guard_udp_errors_total", (name, reason), getattr(s, attr))
            if uctx.limiter is not None or s.rate_limited or s.datagrams_rate_limited:
                route = uctx.route.name if uctx.route is not None else ""
                add(snap, "guard_rate_limited_total", (name, route, "session"), s.rate_limited)
                limited = s.datagrams_rate_limited
                add(snap, "guard_rate_limited_total", (name, route, "datagram"), limited)
            for attr, reason in UDP_END_REASONS.items():
                add(snap, "guard_udp_sessions_ended_total", (name, reason), getattr(s, attr))

    def _upstreams(self, snap: Snapshot) -> None:
        busy: list[tuple[str, UpstreamPool]] = []
        for service, pool in self._retired:
            if pool.backend.in_flight > 0:
                busy.append((service, pool))
            else:  # nothing can touch it any more: its counts are final
                totals = self._retired_totals.setdefault((service, pool.backend.name), [0, 0])
                totals[0] += pool.connects
                totals[1] += pool.reuses
        self._retired = busy
        for (service, backend), (connects, reuses) in self._retired_totals.items():
            add(snap, "guard_upstream_connections_total", (service, backend), connects)
            add(snap, "guard_upstream_reused_total", (service, backend), reuses)
        live = [(svc.name, pool) for svc in self.worker.services.values() for pool in svc.pools]
        for service, pool in live + busy:
            key = (service, pool.backend.name)
            add(snap, "guard_upstream_connections_total", key, pool.connects)
            add(snap, "guard_upstream_reused_total", key, pool.reuses)
            add(snap, "guard_backend_in_flight", key, pool.backend.in_flight)
