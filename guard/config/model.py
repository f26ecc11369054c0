"""Typed, frozen configuration objects.

Everything here is built once by ``guard.config.loader`` from YAML, with units already
parsed: durations are float seconds, sizes are int bytes, CPU is float cores, percentages
are floats in [0, 1]. Nothing in the data plane parses a string from config at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# ---------------------------------------------------------------------------- guard.yaml


@dataclass(frozen=True, slots=True)
class CertificateConfig:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class TlsConfig:
    certificates: tuple[CertificateConfig, ...]


@dataclass(frozen=True, slots=True)
class ProxyProtocolAccept:
    accept: bool = False
    trusted: tuple[str, ...] = ()  # CIDRs


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    protocol: str  # http | https | tcp | udp
    host: str
    port: int
    tls: TlsConfig | None = None
    proxy_protocol: ProxyProtocolAccept | None = None
    idle: float | None = None  # tcp: per-connection idle timeout, seconds
    udp_idle: float = 30.0  # udp: session expiry, seconds
    max_sessions: int = 100_000  # udp: session table bound

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_body: int = 100 * 1024 * 1024
    max_requests_per_connection: int = 1000
    max_connections: int = 10_000
    max_connections_per_ip: int = 256


@dataclass(frozen=True, slots=True)
class HttpTimeouts:
    connect: float = 5.0
    request_header: float = 10.0
    response_header: float = 60.0
    idle: float = 60.0
    websocket_idle: float = 0.0  # 0 = none
    tls_handshake: float = 10.0
    body_read: float = 30.0
    drain: float = 30.0  # SIGTERM grace period for in-flight requests


@dataclass(frozen=True, slots=True)
class HttpConfig:
    parser: str = "httptools"  # httptools | h11
    trusted_proxies: tuple[str, ...] = ()  # CIDRs
    via: bool = False  # add a Via header to requests and responses
    access_log: str | None = None  # None = off; "-" = stderr; else a file path
    limits: HttpLimits = field(default_factory=HttpLimits)
    timeouts: HttpTimeouts = field(default_factory=HttpTimeouts)


@dataclass(frozen=True, slots=True)
class ContainersConfig:
    domain: str = "containers.localhost"
    listener: str | None = None
    tcp_ports: tuple[int, int] | None = None  # inclusive range


@dataclass(frozen=True, slots=True)
class AdminToken:
    tenant: str
    token_env: str | None = None
    token_file: Path | None = None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str
    port: int
    tokens: tuple[AdminToken, ...] = ()


@dataclass(frozen=True, slots=True)
class ProcessDriverConfig:
    pass


@dataclass(frozen=True, slots=True)
class DockerDriverConfig:
    socket: str = "unix:///var/run/docker.sock"
    network: str = "host"
    # Labels every container this Guard owns (and reaps at start). None: derived from the
    # guard.yaml path, so two Guards sharing a daemon never reap each other's containers.
    guard_id: str | None = None


@dataclass(frozen=True, slots=True)
class DriversConfig:
    process: ProcessDriverConfig | None = None
    docker: DockerDriverConfig | None = None


@dataclass(frozen=True, slots=True)
class UsageConfig:
    ledger: Path
    flush: float = 1.0


@dataclass(frozen=True, slots=True)
class TenantQuota:
    name: str
    max_containers: int | None = None
    max_cpu: float | None = None
    max_memory: int | None = None


# ------------------------------------------------------------------------ routes/*.yaml


@dataclass(frozen=True, slots=True)
class RouteMatch:
    host: str | None = None  # exact, "*.example.com", or "{key}.sbx.localhost"; lowercased
    path_prefix: str | None = None
    path: str | None = None  # exact path; at most one of path / path_prefix
    methods: tuple[str, ...] = ()  # uppercased; empty = any
    headers: tuple[tuple[str, str], ...] = ()  # (lowercased name, exact value)
    sni: str | None = None  # tcp listeners only


@dataclass(frozen=True, slots=True)
class WebSocketRouteConfig:
    max_message: int


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    average: float
    burst: int
    by: str  # client_ip | header:NAME | tenant


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    listener: str
    service: str
    match: RouteMatch = field(default_factory=RouteMatch)
    strip_prefix: bool = False
    priority: int = 0
    websocket: WebSocketRouteConfig | None = None
    rate_limit: RateLimitConfig | None = None
    source: Path | None = None  # the route file it came from


@dataclass(frozen=True, slots=True)
class HealthConfig:
    http: str | None = None
    tcp: bool = False
    interval: float = 2.0
    timeout: float = 1.0
    unhealthy_after: int = 3
    healthy_after: int = 2


@dataclass(frozen=True, slots=True)
class RetriesConfig:
    attempts: int = 0
    on: tuple[str, ...] = ()  # connect_error | timeout | "503" ...
    budget: float = 0.2  # fraction of active requests


@dataclass(frozen=True, slots=True)
class ServiceProxyProtocol:
    send: str  # v1 | v2


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    max_connections: int | None = None
    max_pending: int | None = None
    max_in_flight: int | None = None


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    consecutive_errors: int = 5
    base_ejection: float = 30.0


@dataclass(frozen=True, slots=True)
class ReadyProbe:
    http: str | None = None
    tcp: bool = False
    udp: bytes | None = None
    delay: float | None = None
    # API containers with several ports: the names (in ``InstanceHandle.ports``) of the
    # other tcp/http ports, which must accept a connection too before the instance is
    # ready, so a request woken through any port finds its listener there.
    ports: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Resources:
    cpu: float | None = None  # cores
    memory: int | None = None  # bytes


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    driver: str  # docker | process
    image: str | None = None
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    port: int | None = None
    resources: Resources = field(default_factory=Resources)
    ready: ReadyProbe = field(default_factory=lambda: ReadyProbe(tcp=True))
    stop_timeout: float = 10.0
    # API containers: (name, internal port) of ports beyond ``port``; the app finds each
    # in $PORT_<NAME> (not in route files: a container service has one port).
    extra_ports: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class ScaleConfig:
    min: int = 0
    max: int = 10
    target_concurrency: int = 10
    target_cpu: float | None = None
    max_concurrency: int = 0
    sleep_after: float = 300.0
    wake_timeout: float = 30.0
    queue: int = 1000
    stable_window: float = 60.0
    panic_window: float = 6.0
    scale_down_delay: float = 30.0


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """A static backend: host is an IP literal or a name resolved at run time."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    name: str
    servers: tuple[ServerAddress, ...] = ()
    container: ContainerSpec | None = None
    scale: ScaleConfig | None = None
    per_key: bool = False
    key: str | None = None  # per-key selector other than the route capture, e.g. header:NAME
    balance: str = "round_robin"  # round_robin | least_request | p2c | hash
    hash_on: str | None = None  # header:NAME | cookie:NAME | client_ip | path
    health: HealthConfig | None = None
    retries: RetriesConfig | None = None
    proxy_protocol: ServiceProxyProtocol | None = None
    limits: ServiceLimits | None = None
    outlier: OutlierConfig | None = None
    source: Path | None = None


@dataclass(frozen=True, slots=True)
class RoutesConfig:
    """Everything the route files hold: the live, hot-reloadable part."""

    routes: tuple[RouteConfig, ...] = ()
    services: dict[str, ServiceConfig] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GuardConfig:
    path: Path  # the guard.yaml this came from
    workers: int  # resolved: "auto" becomes the core count
    routes_path: Path
    listeners: dict[str, ListenerConfig]
    http: HttpConfig = field(default_factory=HttpConfig)
    containers: ContainersConfig = field(default_factory=ContainersConfig)
    admin: AdminConfig | None = None
    drivers: DriversConfig = field(default_factory=DriversConfig)
    usage: UsageConfig | None = None
    tenants: dict[str, TenantQuota] = field(default_factory=dict)
    pid_file: Path | None = None  # written by guard run once serving; read by guard reload
    routes: RoutesConfig = field(default_factory=RoutesConfig)
