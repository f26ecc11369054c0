"""Every metric family Guard exports: name, type, help and label names, in one table.

The reader fills snapshots against this table, the snapshot code merges by its types and
the collector renders from it, so a name or a label is spelled in exactly one place. Label
values only ever come from config names (listener, route, service, backend) or fixed sets
(code class, method, reason, result): never paths, client IPs or error strings, so series
stay bounded whatever the traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]


_ROUTE = ("listener", "route", "service")

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        # -- http listeners (RouteStats; route "" = matched no route)
        Family(
            "guard_requests_total",
            "counter",
            "HTTP requests by status class (or aborted) and method.",
            (*_ROUTE, "code", "method"),
        ),
        Family(
            "guard_request_duration_seconds",
            "histogram",
            "Whole request, first byte of the head to the last byte of the response.",
            _ROUTE,
        ),
        Family(
            "guard_overhead_duration_seconds",
            "histogram",
            "Time Guard itself added to a request: duration minus upstream time.",
            _ROUTE,
        ),
        Family(
            "guard_errors_total",
            "counter",
            "Answers Guard made itself, by x-guard-error code.",
            ("listener", "route", "code"),
        ),
        Family(
            "guard_request_bytes_total",
            "counter",
            "Request body bytes relayed to backends.",
            _ROUTE,
        ),
        Family(
            "guard_response_bytes_total",
            "counter",
            "Response body bytes relayed to clients.",
            _ROUTE,
        ),
        Family(
            "guard_open_connections",
            "gauge",
            "Client connections open now (udp: sessions).",
            ("listener", "protocol"),
        ),
        Family(
            "guard_websocket_tunnels_open",
            "gauge",
            "WebSocket connections open now (after the 101), either relay mode.",
            ("listener",),
        ),
        Family(
            "guard_websocket_messages_total",
            "counter",
            "WebSocket messages relayed on frame-mode routes; direction in = client to"
            " backend, out = backend to client.",
            ("listener", "route", "direction"),
        ),
        # -- tcp listeners (L4Stats)
        Family(
            "guard_tcp_accepted_total",
            "counter",
            "TCP client connections accepted, routed or not.",
            ("listener",),
        ),
        Family(
            "guard_tcp_connections_total",
            "counter",
            "TCP connections routed, by route.",
            ("listener", "route"),
        ),
        Family(
            "guard_tcp_received_bytes_total",
            "counter",
            "TCP bytes from clients relayed to backends.",
            ("listener", "route"),
        ),
        Family(
            "guard_tcp_sent_bytes_total",
            "counter",
            "TCP bytes from backends relayed to clients.",
            ("listener", "route"),
        ),
        Family(
            "guard_tcp_errors_total",
            "counter",
            "TCP connections closed by Guard, by reason.",
            ("listener", "reason"),
        ),
        # -- https listeners (TlsTermination)
        Family(
            "guard_tls_handshake_errors_total",
            "counter",
            "TLS handshakes that did not complete: timeout (tls_handshake), error (version,"
            " cipher, alert, not TLS), closed (the client left first).",
            ("listener", "reason"),
        ),
        # -- udp listeners (L4Stats)
        Family("guard_udp_sessions_total", "counter", "UDP sessions opened.", ("listener",)),
        Family(
            "guard_udp_received_bytes_total",
            "counter",
            "UDP payload bytes from clients relayed to backends.",
            ("listener",),
        ),
        Family(
            "guard_udp_sent_bytes_total",
            "counter",
            "UDP payload bytes from backends relayed to clients.",
            ("listener",),
        ),
        Family(
            "guard_udp_received_packets_total",
            "counter",
            "UDP datagrams from clients relayed to backends.",
            ("listener",),
        ),
        Family(
            "guard_udp_sent_packets_total",
            "counter",
            "UDP datagrams from backends relayed to clients.",
            ("listener",),
        ),
        Family(
            "guard_udp_dropped_datagrams_total",
            "counter",
            "UDP datagrams Guard could not relay (no route or backend, queue full).",
            ("listener",),
        ),
        Family(
            "guard_udp_errors_total",
            "counter",
            "UDP sessions Guard could not open or serve, by reason.",
            ("listener", "reason"),
        ),
        Family(
            "guard_rate_limited_total",
            "counter",
            "Refused by a tcp or udp route's rate_limit: tcp connections closed at accept,"
            " udp sessions not opened, udp datagrams dropped (http requests refused with"
            ' 429 are guard_errors_total{code="rate_limited"}).',
            ("listener", "route", "unit"),
        ),
        Family(
            "guard_udp_sessions_ended_total",
            "counter",
            "UDP sessions Guard ended, by reason (idle expiry, eviction when full).",
            ("listener", "reason"),
        ),
        # -- upstreams
        Family(
            "guard_upstream_connections_total",
            "counter",
            "Keep-alive connections opened to backends.",
            ("service", "backend"),
        ),
        Family(
            "guard_upstream_reused_total",
            "counter",
            "Requests sent on an already open (pooled) backend connection.",
            ("service", "backend"),
        ),
        Family(
            "guard_backend_in_flight",
            "gauge",
            "Requests or tcp/udp relays using the backend now.",
            ("service", "backend"),
        ),
        Family(
            "guard_connections_refused_total",
            "counter",
            "Client connections closed at accept by a cap (max_connections,"
            " max_connections_per_ip), with a 503 connection_limit.",
            ("listener", "reason"),
        ),
        Family(
            "guard_upstream_retries_total",
            "counter",
            "Requests sent again to another server under the service's retries: policy.",
            ("service",),
        ),
        Family(
            "guard_outlier_ejections_total",
            "counter",
            "Times a server was ejected by passive outlier detection (counted per worker).",
            ("service", "backend"),
        ),
        Family(
            "guard_backend_up",
            "gauge",
            "1 while active health checks find the server up, 0 while it is taken out.",
            ("service", "backend"),
        ),
        Family(
            "guard_health_checks_total",
            "counter",
            "Active health checks by result (ok, fail).",
            ("service", "result"),
        ),
        # -- usage ledger
        Family(
            "guard_usage_slices_written_total",
            "counter",
            "Usage slices committed to the ledger.",
            (),
        ),
        Family(
            "guard_usage_write_errors_total",
            "counter",
            "Ledger flushes that failed (disk full, locked); their slices were kept and retried.",
            (),
        ),
        Family(
            "guard_usage_pending_slices",
            "gauge",
            "Usage slices recorded and not yet written.",
            (),
        ),
        Family(
            "guard_usage_dropped_slices_total",
            "counter",
            "Usage slices dropped because the unwritten buffer was full (data lost).",
            (),
        ),
        # -- container services (the control plane; queue rejections from the workers)
        Family(
            "guard_instances",
            "gauge",
            "Instances of a container service by state.",
            ("service", "state"),
        ),
        Family(
            "guard_instance_start_duration_seconds",
            "histogram",
            "Instance starts, from the decision to ready (or to failure), by outcome.",
            ("service", "outcome"),
        ),
        Family(
            "guard_instance_start_phase_seconds",
            "histogram",
            "Successful starts decomposed: create and start (driver calls), probe"
            " (process up to ready).",
            ("service", "phase"),
        ),
        Family(
            "guard_instance_stops_total",
            "counter",
            "Instances stopped, by reason (idle, scale down, shutdown, config changed, exited).",
            ("service", "reason"),
        ),
        Family(
            "guard_driver_up",
            "gauge",
            "1 while the driver's daemon answers (docker), 0 during an outage.",
            ("driver",),
        ),
        Family(
            "guard_driver_outages_total",
            "counter",
            "Times the driver's daemon stopped answering (reconnected with backoff, resynced).",
            ("driver",),
        ),
        Family(
            "guard_instance_cpu_seconds_total",
            "counter",
            "CPU time used by a container service's instances, read from the driver"
            " (exported when usage: or target_cpu is set).",
            ("service",),
        ),
        Family(
            "guard_instance_memory_bytes",
            "gauge",
            "Memory of a container service's running instances at the last reading.",
            ("service",),
        ),
        Family(
            "guard_wake_queue_depth",
            "gauge",
            "Requests, connections and datagram sessions held waiting for an instance.",
            ("service",),
        ),
        Family(
            "guard_wake_queue_rejected_total",
            "counter",
            "Work refused because the service's wake queue was full (503 queue_full).",
            ("service",),
        ),
        Family(
            "guard_service_in_flight",
            "gauge",
            "Requests and tcp/udp relays open on a container service's instances.",
            ("service",),
        ),
        Family(
            "guard_autoscaler_desired_instances",
            "gauge",
            "The autoscaler's last decision.",
            ("service",),
        ),
        Family(
            "guard_autoscaler_panic",
            "gauge",
            "1 while the autoscaler is in panic mode (no scale-down).",
            ("service",),
        ),
        Family(
            "guard_autoscaler_stable_concurrency",
            "gauge",
            "Average concurrency over the stable window, as the autoscaler saw it.",
            ("service",),
        ),
        # -- process
        Family(
            "guard_config_reloads_total",
            "counter",
            "Route reloads by result, counted in every worker process.",
            ("result",),
        ),
        Family(
            "guard_worker_requests_total",
            "counter",
            "HTTP requests handled, by worker process.",
            ("worker",),
        ),
    )
}

# L4Stats attribute -> reason label, for the *_errors_total families.
TCP_ERROR_REASONS = {
    "connect_failed": "connect_failed",
    "idle_timeouts": "idle_timeout",
    "no_route": "no_route",
    "no_backend": "no_backend",
    "not_tls": "not_tls",
    "unknown_sni": "unknown_sni",
    "proxy_rejected": "proxy_rejected",
    "wake_failed": "wake_failed",
    "rate_limited": "rate_limited",
}
UDP_ERROR_REASONS = {
    "connect_failed": "connect_failed",
    "no_route": "no_route",
    "no_backend": "no_backend",
    "wake_failed": "wake_failed",
    "rate_limited": "rate_limited",
}
UDP_END_REASONS = {"sessions_expired": "idle", "sessions_evicted": "evicted"}
