"""What one http listener needs per connection, computed once at load (and on reload)."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from guard.config.model import HttpConfig
from guard.http.forwarding import TrustedProxies
from guard.proxy.deadlines import DeadlineSweeper

if TYPE_CHECKING:
    from guard.routing.table import HttpRouteTable
    from guard.upstream.service import Service


class RouteStats:
    """Per-route counters kept as plain ints: the metrics exporter reads them later."""

    __slots__ = ("bytes_in", "bytes_out", "errors", "requests", "status_classes")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0  # answers Guard made itself
        self.bytes_in = 0
        self.bytes_out = 0
        self.status_classes = [0, 0, 0, 0, 0, 0]  # index = status // 100


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
    table: HttpRouteTable
    sweeper: DeadlineSweeper
    trusted: TrustedProxies
    via: bytes | None
    access_log: AccessLog | None = None
    stats: dict[str, RouteStats] = field(default_factory=dict)
    connections: set[object] = field(default_factory=set)
    draining: bool = False
    # Routing results keep no reference to services beyond this mapping's lifetime.
    services: dict[str, Service] = field(default_factory=dict)

    # Flattened from ``http`` once, so the per-request path reads one attribute, not three.
    max_body: int = field(init=False)
    max_requests: int = field(init=False)
    request_header_timeout: float = field(init=False)
    response_header_timeout: float = field(init=False)
    idle_timeout: float = field(init=False)

    def __post_init__(self) -> None:
        limits, timeouts = self.http.limits, self.http.timeouts
        self.max_body = limits.max_body
        self.max_requests = limits.max_requests_per_connection
        self.request_header_timeout = timeouts.request_header
        self.response_header_timeout = timeouts.response_header
        self.idle_timeout = timeouts.idle

    def route_stats(self, route: str) -> RouteStats:
        stats = self.stats.get(route)
        if stats is None:
            stats = self.stats[route] = RouteStats()
        return stats
