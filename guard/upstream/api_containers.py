"""One worker's data-plane side of the containers made through the admin API.

Per container it keeps a ``ContainerService`` (the activator: holds requests while the
container wakes, routes to its instance once published) and an entry in the
``ContainerDirectory`` the containers listener matches first. Both follow the control
plane's ``ContainerUpdate`` messages; route reloads do not touch them (the worker carries
``services`` over into every rebuilt service map).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guard.config.model import ContainersConfig, ScaleConfig, ServiceConfig
from guard.control.messages import ContainerRoute, ContainerUpdate, LoadReport
from guard.routing.containers import ContainerAwareTable, ContainerDirectory
from guard.upstream.container_listeners import ContainerListener
from guard.upstream.container_service import ContainerService, Headers, Hold, Waiter
from guard.upstream.pool import UpstreamPool

if TYPE_CHECKING:
    from guard.routing.table import HttpRouteTable
    from guard.runtime.worker import Worker


class _WorkerLink:
    """The worker's control link, looked up when used: a worker may hear about containers
    while it is still being attached."""

    __slots__ = ("worker",)

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def wake(self, service: str, key: str | None, demand: int) -> None:
        if self.worker.link is not None:
            self.worker.link.wake(service, key, demand)

    def report(self, report: LoadReport) -> None:
        if self.worker.link is not None:
            self.worker.link.report(report)


class PortService:
    """An API container's extra port (not its instance's main one): the container's
    service, with that port's pool. Holds and wakes are the service's own."""

    wakeable = True
    policed = False
    per_key = True

    def __init__(self, main: ContainerService, port: str) -> None:
        self.main = main
        self.port = port

    @property
    def name(self) -> str:
        return self.main.name

    @property
    def config(self) -> ServiceConfig:
        return self.main.config

    def __getattr__(self, attr: str) -> object:
        # Anything else a proxy reads of a service (none on the hot path): the service's.
        return getattr(self.main, attr)

    @property
    def wake_timeout(self) -> float:
        return self.main.wake_timeout

    def key_of(self, captured: str | None, headers: Headers) -> str | None:
        return self.main.key_of(captured, headers)

    def pick(
        self, headers: Headers, client_ip: str, path: bytes, key: str | None = None
    ) -> UpstreamPool | None:
        return self.main.pick(headers, client_ip, path, key, self.port)

    def hold(
        self, waiter: Waiter, key: str | None, headers: Headers, client_ip: str, path: bytes
    ) -> Hold:
        return self.main.hold(waiter, key, headers, client_ip, path, self.port)

    def cancel(self, hold: Hold) -> None:
        self.main.cancel(hold)

    def done(self) -> None:
        self.main.done()


def data_plane_config(route: ContainerRoute) -> ServiceConfig:
    """What the activator needs of a container's service (the spec stays in the plane)."""
    return ServiceConfig(
        name=route.service,
        scale=ScaleConfig(min=0, max=2, wake_timeout=route.wake_timeout, queue=route.queue),
        per_key=True,
    )


class ApiContainers:
    def __init__(self, worker: Worker, config: ContainersConfig) -> None:
        self.worker = worker
        self.listener = config.listener
        self.directory: ContainerDirectory[ContainerService | PortService] = ContainerDirectory(
            config.listener or "", config.domain
        )
        self.services: dict[str, ContainerService] = {}  # by service name
        self._service_of: dict[str, str] = {}  # container id -> service name
        self._listeners: dict[str, list[ContainerListener]] = {}  # its tcp/udp ports
        lc = worker.config.listeners.get(config.listener or "")
        self._host = lc.host if lc is not None else "127.0.0.1"
        self._link = _WorkerLink(worker)

    def wrap(self, tables: dict[str, HttpRouteTable[Any]]) -> None:
        """Put the containers in front of the containers listener's routes."""
        if self.listener is not None and self.listener in tables:
            tables[self.listener] = ContainerAwareTable(  # type: ignore[assignment]
                tables[self.listener], self.directory
            )

    def apply(
        self, update: ContainerUpdate
    ) -> tuple[dict[str, ContainerService], list[ContainerService]]:
        """Apply one update; returns the services added and the ones to close."""
        removed: list[ContainerService] = []
        if update.reset:
            keep = {r.id for r in update.upsert}
            for container_id in [c for c in self._service_of if c not in keep]:
                removed.extend(self._remove(container_id))
        added: dict[str, ContainerService] = {}
        w = self.worker
        for route in update.upsert:
            cfg = data_plane_config(route)
            svc = self.services.get(route.service)
            if svc is None:
                svc = w.container_service(cfg, self._link)
                self.services[route.service] = added[route.service] = svc
            else:
                svc.configure(cfg)
            svc.fixed_key = route.id
            self._service_of[route.id] = route.service
            # The first port is the instance's main one; the others its extra ports.
            targets: dict[str, ContainerService | PortService] = {
                name: svc if i == 0 else PortService(svc, name)
                for i, (name, _, _) in enumerate(route.ports)
            }
            self._listen(route, targets)
            http = {name: targets[name] for name, proto, _ in route.ports if proto == "http"}
            self.directory.put(route.id, route.service, http, accepting=route.accepting)
        for container_id in update.remove:
            removed.extend(self._remove(container_id))
        return added, removed

    def _listen(
        self, route: ContainerRoute, targets: dict[str, ContainerService | PortService]
    ) -> None:
        """Its tcp/udp ports listen while it accepts work; a delete first stops them."""
        have = self._listeners.get(route.id)
        if not route.accepting:
            for listener in have or ():
                listener.stop()
        elif have is None and any(proto != "http" for _, proto, _ in route.ports):
            self._listeners[route.id] = [
                ContainerListener(self.worker, self._host, proto, port, targets[name])
                for name, proto, port in route.ports
                if proto != "http"
            ]

    def stop(self) -> None:
        """Draining: the tcp/udp ports take nothing new."""
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.stop()

    def close(self) -> None:
        for container_id in list(self._listeners):
            for listener in self._listeners.pop(container_id):
                listener.close()

    def _remove(self, container_id: str) -> list[ContainerService]:
        for listener in self._listeners.pop(container_id, ()):
            listener.close()
        self.directory.remove(container_id)
        name = self._service_of.pop(container_id, None)
        svc = self.services.pop(name, None) if name is not None else None
        return [svc] if svc is not None else []
