"""One worker's data-plane side of the containers made through the admin API.

Per container it keeps a ``ContainerService`` (the activator: holds requests while the
container wakes, routes to its instance once published) and an entry in the
``ContainerDirectory`` the containers listener matches first. Both follow the control
plane's ``ContainerUpdate`` messages; route reloads do not touch them (the worker carries
``services`` over into every rebuilt service map).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from guard.config.model import ContainersConfig, ScaleConfig, ServiceConfig
from guard.control.messages import ContainerRoute, ContainerUpdate, LoadReport
from guard.routing.containers import ContainerAwareTable, ContainerDirectory
from guard.upstream.container_listeners import ContainerListener
from guard.upstream.container_service import ContainerService

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
        self.directory: ContainerDirectory[ContainerService] = ContainerDirectory(
            config.listener or "", config.domain
        )
        self.services: dict[str, ContainerService] = {}  # by service name
        self._service_of: dict[str, str] = {}  # container id -> service name
        self._listeners: dict[str, list[ContainerListener]] = {}  # its tcp/udp ports
        lc = worker.config.listeners.get(config.listener or "")
        self._host = lc.host if lc is not None else "127.0.0.1"
        self._link = _WorkerLink(worker)

    def wrap(self, tables: dict[str, HttpRouteTable[ContainerService]]) -> None:
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
                svc = ContainerService(
                    cfg,
                    w.upstream_settings,
                    loop=w.loop,
                    resolver=w.resolver,
                    sweeper=w.sweeper,
                    link=self._link,
                    worker_id=w.worker_id,
                )
                self.services[route.service] = added[route.service] = svc
            else:
                svc.configure(cfg)
            svc.fixed_key = route.id
            self._service_of[route.id] = route.service
            self._listen(route, svc)
            self.directory.put(
                route.id, route.service, svc, route.http_ports, accepting=route.accepting
            )
        for container_id in update.remove:
            removed.extend(self._remove(container_id))
        return added, removed

    def _listen(self, route: ContainerRoute, svc: ContainerService) -> None:
        """Its tcp/udp ports listen while it accepts work; a delete first stops them."""
        have = self._listeners.get(route.id)
        if not route.accepting:
            for listener in have or ():
                listener.stop()
        elif have is None and route.l4_ports:
            self._listeners[route.id] = [
                ContainerListener(self.worker, self._host, protocol, port, svc)
                for protocol, port in route.l4_ports
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
