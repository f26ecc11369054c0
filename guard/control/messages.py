"""What the data plane and the control plane say to each other, and nothing else.

The two planes share no objects: the data plane asks for wakes and reports its load; the
control plane answers with where each container service may send new work, or why a wake
failed. Every message is a small frozen value, so the same exchange runs in one process
(``workers: 1``, a direct call scheduled on the loop) or between a worker and the
supervisor's control plane over a socket, and a later multi-node Guard can carry it in a
shared store without the data plane noticing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A ready instance new work may be sent to."""

    instance: str
    host: str
    port: int
    key: str | None = None  # per-key services: the key this instance belongs to
    ports: tuple[tuple[str, int], ...] = ()  # API containers: (name, port) of more ports


@dataclass(frozen=True, slots=True)
class ServiceEndpoints:
    """The complete set of instances of ``service`` that take new work.

    ``seq`` grows with every publish for the service; an instance missing from a newer set
    is draining: the data plane stops routing to it and reports its in-flight work until
    that reaches zero."""

    service: str
    seq: int
    ready: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class WakeFailure:
    """A wake of ``service`` (for ``key``) failed: held work gets ``code``'s error."""

    service: str
    key: str | None
    code: str  # a guard.errors.WAKE_ERRORS code
    message: str


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    """The servers of a static service that active health checks took out."""

    service: str
    down: tuple[str, ...]  # backend names ("host:port", as in servers:)


@dataclass(frozen=True, slots=True)
class LoadReport:
    """One worker's view of one container service, sent periodically and after every
    endpoint update it applies (so a drain can tell when nothing is left in flight)."""

    worker: int
    service: str
    seq: int  # the newest ServiceEndpoints.seq the worker had applied
    in_flight: tuple[tuple[str, int], ...]  # (instance, requests/connections/sessions open)
    served: tuple[tuple[str, int], ...]  # (instance, work started since the last report)
    held: int  # requests / connections / datagram sessions waiting for a wake
    held_keys: tuple[str, ...] = ()  # per-key services: keys with held work


@dataclass(frozen=True, slots=True)
class ContainerRoute:
    """How the data plane reaches one container made through the admin API.

    ``service`` is the container's own per-key service (keyed by ``id``); its http ports
    answer to ``{id}-{port}.{containers.domain}``, its tcp/udp ports on listeners of their
    own on the containers listener's host.
    ``accepting`` is False while the container is being deleted: new requests get
    ``container_not_found``, in-flight ones finish on its instance."""

    id: str
    service: str
    # (name, protocol, listener port or 0 for http) of each port; the first is the
    # instance's main port, the others its extra ports (Endpoint.ports).
    ports: tuple[tuple[str, str, int], ...]
    wake_timeout: float
    queue: int
    accepting: bool = True


@dataclass(frozen=True, slots=True)
class ContainerUpdate:
    """Changes to the API containers the data plane routes to. ``reset``: forget every
    container first (the first of the messages a newly attached worker gets)."""

    reset: bool
    upsert: tuple[ContainerRoute, ...] = ()
    remove: tuple[str, ...] = ()  # container ids


class ControlLink(Protocol):
    """The data plane's handle on the control plane."""

    def wake(self, service: str, key: str | None, demand: int) -> None:
        """Work for ``service`` (``key``) is held: make instances ready for ``demand``
        concurrent requests. Idempotent: repeating it never starts more than needed."""

    def report(self, report: LoadReport) -> None: ...


class DataPlaneSink(Protocol):
    """What the control plane calls on every data-plane worker."""

    def apply_endpoints(self, update: ServiceEndpoints) -> None: ...

    def wake_failed(self, failure: WakeFailure) -> None: ...

    def apply_health(self, update: ServiceHealth) -> None: ...

    def apply_containers(self, update: ContainerUpdate) -> None: ...
