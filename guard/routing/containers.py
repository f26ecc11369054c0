"""Routing by container: ``{id}-{port}.{containers.domain}`` and ``x-guard-container``.

The containers listener's route table is wrapped in a ``ContainerAwareTable``: a request
whose Host is a container address, or (any other Host) which carries ``x-guard-container:
ID`` (and optionally ``x-guard-port: NAME``), goes to exactly that container; everything
else falls through to the listener's ordinary routes. A name under the domain that is not
a live container is 404 ``container_not_found`` (never the routes behind it).

Per request this is one dict lookup on the raw Host (results are cached per raw value, as
in ``HttpRouteTable``) and, only while any container exists, a scan of the header names
for ``x-guard-container``. The directory changes when the control plane says so; each
change clears the host cache.

Pure code: no IO, no asyncio.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from guard.config.model import RouteConfig
from guard.errors import ContainerNotFound
from guard.routing.table import CompiledRoute, HttpRouteTable, RouteMatchResult, normalize_host

T = TypeVar("T")

ROUTE_NAME = "_containers"  # one name for all: per-route stats stay bounded
CONTAINER_HEADER = b"x-guard-container"
PORT_HEADER = b"x-guard-port"
_HOST_CACHE_MAX = 4096
_PASS = object()  # cached: this Host is not a container address


class _Container(Generic[T]):
    __slots__ = ("accepting", "default", "ports")

    def __init__(
        self, ports: dict[bytes, RouteMatchResult[T]], default: RouteMatchResult[T] | None
    ) -> None:
        self.ports = ports
        self.default = default
        self.accepting = True


class ContainerDirectory(Generic[T]):
    """The API containers one listener routes to, by id."""

    def __init__(self, listener: str, domain: str) -> None:
        self.listener = listener
        self.suffix = b"." + normalize_host(domain.encode("ascii"))
        self._containers: dict[bytes, _Container[T]] = {}
        self._hosts: dict[bytes, object] = {}

    def __len__(self) -> int:
        return len(self._containers)

    def put(
        self, container_id: str, service: str, http_ports: dict[str, T], *, accepting: bool = True
    ) -> None:
        """``http_ports``: port name -> target, the first the default of x-guard-container."""
        config = RouteConfig(name=ROUTE_NAME, listener=self.listener, service=service)
        ports: dict[bytes, RouteMatchResult[T]] = {}
        for name, target in http_ports.items():
            route = CompiledRoute(ROUTE_NAME, self.listener, config, target, None)
            # The key: the id, its per-key service's one key.
            ports[name.encode("ascii")] = RouteMatchResult(route, container_id)
        entry = _Container(ports, next(iter(ports.values()), None))
        entry.accepting = accepting
        self._containers[container_id.encode("ascii")] = entry
        self._hosts.clear()

    def remove(self, container_id: str) -> None:
        self._containers.pop(container_id.encode("ascii"), None)
        self._hosts.clear()

    def clear(self) -> None:
        self._containers.clear()
        self._hosts.clear()

    @property
    def reads_headers(self) -> bool:
        """Whether match() may look at the headers (the container header)."""
        return bool(self._containers)

    # ------------------------------------------------------------------ match
    def match(self, host: bytes, headers: list[tuple[bytes, bytes]]) -> RouteMatchResult[T] | None:
        """The container a request is for; None when it names none; ContainerNotFound when
        it names one that does not exist."""
        hit = self._hosts.get(host)
        if hit is None:
            hit = self._resolve(host)
        if hit is _PASS:
            if not self._containers:
                return None
            for name, value in headers:
                if name == CONTAINER_HEADER:
                    return self._by_header(value, headers)
            return None
        if hit.__class__ is RouteMatchResult:
            return hit  # type: ignore[return-value]
        raise ContainerNotFound(hit)  # type: ignore[arg-type]

    def _resolve(self, raw: bytes) -> object:
        host = normalize_host(raw)
        suffix = self.suffix
        hit: object = _PASS
        if host.endswith(suffix) and len(host) > len(suffix):
            label = host[: -len(suffix)]
            if b"." not in label:
                container_id, _, port = label.partition(b"-")
                hit = self._find(container_id, port or None)
        cache = self._hosts
        if len(cache) >= _HOST_CACHE_MAX:
            cache.clear()
        cache[raw] = hit
        return hit

    def _find(self, container_id: bytes, port: bytes | None) -> RouteMatchResult[T] | str:
        shown = container_id.decode("latin-1")
        entry = self._containers.get(container_id)
        if entry is None or not entry.accepting:
            return f"no container {shown}"
        found = entry.default if port is None else entry.ports.get(port)
        if found is None:
            if port is None:
                return f"container {shown} has no http port"
            return f"container {shown} has no http port {port.decode('latin-1')}"
        return found

    def _by_header(self, value: bytes, headers: list[tuple[bytes, bytes]]) -> RouteMatchResult[T]:
        port: bytes | None = None
        for name, v in headers:
            if name == PORT_HEADER:
                port = v.strip().lower()
                break
        hit = self._find(value.strip().lower(), port)
        if isinstance(hit, str):
            raise ContainerNotFound(hit)
        return hit


class ContainerAwareTable(Generic[T]):
    """A listener's route table with the containers' addresses in front of it."""

    __slots__ = ("directory", "inner", "listener", "routes")

    def __init__(self, inner: HttpRouteTable[T], directory: ContainerDirectory[T]) -> None:
        self.inner = inner
        self.directory = directory
        self.listener = inner.listener
        self.routes = inner.routes

    @property
    def reads_headers(self) -> bool:
        return self.inner.reads_headers or self.directory.reads_headers

    def match(
        self, host: bytes, path: bytes, method: bytes, headers: list[tuple[bytes, bytes]]
    ) -> RouteMatchResult[T] | None:
        found = self.directory.match(host, headers)
        if found is not None:
            return found
        return self.inner.match(host, path, method, headers)
