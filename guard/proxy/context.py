"""What one http listener needs per connection, computed once at load (and on reload)."""

from __future__ import annotations

import asyncio
import json
import sys
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Final

from guard.config.model import HttpConfig
from guard.http.forwarding import TrustedProxies
from guard.proxy.deadlines import DeadlineSweeper
from guard.routing.containers import ROUTE_NAME

if TYPE_CHECKING:
    from guard.proxy.ratelimit import RouteLimiter
    from guard.routing.table import RouteTable


# Request duration buckets (seconds): fine below a millisecond, where proxy overhead lives.
DURATION_BOUNDS: Final = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_KNOWN_METHODS: Final = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT"}
)


class Histogram:
    """Cumulative-free bucket counts; the exporter turns them into Prometheus buckets."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BOUNDS) + 1)  # last = +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(DURATION_BOUNDS, value)] += 1
        self.sum += value


class RouteStats:
    """Per-route counters as plain ints and lists: recording a request is a few adds.

    The metrics exporter reads them at scrape time, so the hot path never touches a
    metrics library. ``route`` is "" for requests that matched no route.
    """

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "duration",
        "errors",
        "overhead",
        "requests",
        "route",
        "service",
    )

    def __init__(self, route: str, service: str = "") -> None:
        self.route = route
        self.service = service
        # (status class "2xx".."5xx" or "aborted", method or "OTHER") -> count
        self.requests: dict[tuple[str, str], int] = {}
        self.errors: dict[str, int] = {}  # Guard's own answers, by x-guard-error code
        self.bytes_in = 0
        self.bytes_out = 0
        self.duration = Histogram()  # whole request, first byte of head to last byte out
        self.overhead = Histogram()  # the part Guard added: duration minus upstream time

    def observe(
        self, status: int, method: bytes, error: str, duration: float, upstream: float
    ) -> None:
        # Once per request: the label pair comes from a cache and both histograms are
        # updated inline (each a bisect and two adds).
        key = _REQUEST_KEYS.get((status, method))
        if key is None:
            key = _request_key(status, method)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        if error:
            self.errors[error] = self.errors.get(error, 0) + 1
        hist = self.duration
        hist.counts[bisect_left(DURATION_BOUNDS, duration)] += 1
        hist.sum += duration
        overhead = duration - upstream
        if overhead < 0.0:
            overhead = 0.0
        hist = self.overhead
        hist.counts[bisect_left(DURATION_BOUNDS, overhead)] += 1
        hist.sum += overhead

    @property
    def total(self) -> int:
        return sum(self.requests.values())


_STATUS_CLASSES: Final = ("", "1xx", "2xx", "3xx", "4xx", "5xx")

# (status, method) -> the (status class, method) labels of RouteStats.requests. Bounded:
# only known methods are cached, and statuses are three-digit numbers.
_REQUEST_KEYS: Final[dict[tuple[int, bytes], tuple[str, str]]] = {}


def _request_key(status: int, method: bytes) -> tuple[str, str]:
    known = method in _KNOWN_METHODS
    key = (
        _STATUS_CLASSES[status // 100] if 100 <= status < 600 else "aborted",
        method.decode() if known else "OTHER",
    )
    if known and 0 <= status < 1000:
        _REQUEST_KEYS[(status, method)] = key
    return key


class AccessLog:
    """JSON lines, buffered and written at most every ``interval`` seconds."""

    __slots__ = ("_buffer", "_handle", "_interval", "_loop", "_stream")

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: IO[str], interval: float = 1.0):
        self._loop = loop
        self._stream = stream
        self._interval = interval
        self._buffer: list[str] = []
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def open(cls, loop: asyncio.AbstractEventLoop, target: str) -> AccessLog:
        stream = sys.stderr if target == "-" else open(target, "a", buffering=1 << 16)  # noqa: SIM115
        return cls(loop, stream)

    def write(self, record: dict[str, object]) -> None:
        self._buffer.append(json.dumps(record, separators=(",", ":")))
        if len(self._buffer) >= 512:
            self.flush()
        elif self._handle is None:
            self._handle = self._loop.call_later(self._interval, self.flush)

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._buffer:
            self._stream.write("\n".join(self._buffer) + "\n")
            self._stream.flush()
            self._buffer.clear()


@dataclass(slots=True)
class ListenerContext:
    """Shared by every connection of one http listener. ``table`` is swapped on reload."""

    name: str
    proto: bytes  # b"http" | b"https" for X-Forwarded-Proto
    http: HttpConfig
    table: RouteTable
    sweeper: DeadlineSweeper
    trusted: TrustedProxies
    via: bytes | None
    access_log: AccessLog | None = None
    stats: dict[str, RouteStats] = field(default_factory=dict)
    # route name -> its rate limiter, for routes with rate_limit (swapped on reload)
    limiters: dict[str, RouteLimiter] = field(default_factory=dict)
    connections: set[object] = field(default_factory=set)
    per_ip: dict[str, int] = field(default_factory=dict)  # open connections per client IP
    refused: dict[str, int] = field(
        default_factory=lambda: {"max_connections": 0, "max_connections_per_ip": 0}
    )
    draining: bool = False

    # Flattened from ``http`` once, so the per-request path reads one attribute, not three.
    max_body: int = field(init=False)
    max_requests: int = field(init=False)
    request_header_timeout: float = field(init=False)
    response_header_timeout: float = field(init=False)
    idle_timeout: float = field(init=False)
    body_read_timeout: float = field(init=False)
    max_connections: int = field(init=False)
    max_connections_per_ip: int = field(init=False)

    def __post_init__(self) -> None:
        limits, timeouts = self.http.limits, self.http.timeouts
        self.max_body = limits.max_body
        self.max_requests = limits.max_requests_per_connection
        self.request_header_timeout = timeouts.request_header
        self.response_header_timeout = timeouts.response_header
        self.idle_timeout = timeouts.idle
        self.body_read_timeout = timeouts.body_read
        self.max_connections = limits.max_connections
        self.max_connections_per_ip = limits.max_connections_per_ip

    def route_stats(self, route: str, service: str = "") -> RouteStats:
        stats = self.stats.get(route)
        if stats is None:
            # API containers' one route serves a service per container: one label for all.
            label = ROUTE_NAME if route == ROUTE_NAME else service
            stats = self.stats[route] = RouteStats(route, label)
        return stats
