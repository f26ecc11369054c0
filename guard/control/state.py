"""Control-plane state: which instances exist, in what phase, and which key owns which.

Everything the lifecycle owner must remember lives behind ``ControlState``; the controllers
keep no other record of instances. Today it is a dict in the one control-plane process; a
multi-node Guard puts the same few calls on a shared store (each ``put`` a write, each
``owner`` lookup a read) without touching the controllers or the data plane.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from guard.drivers.base import InstanceHandle

if TYPE_CHECKING:
    from guard.control.containers import ContainerRecord


class Phase(enum.StrEnum):
    STARTING = "starting"  # the driver is starting it or the ready probe has not passed
    READY = "ready"  # published: takes new work
    DRAINING = "draining"  # unpublished: in-flight work finishes, then it is stopped
    STOPPING = "stopping"  # the driver is stopping it
    STOPPED = "stopped"  # gone (kept only until removed from the state)


@dataclass(slots=True)
class Instance:
    """One instance of a container service, as the control plane tracks it."""

    id: str
    service: str
    key: str | None  # per-key services: the key it serves
    phase: Phase
    created_at: float  # loop time
    handle: InstanceHandle | None = None  # None until the driver created it
    ready_at: float | None = None  # loop time the probe passed
    started_wall: float | None = None  # unix time the driver started it (usage, logs)
    # False while another Guard meters it: adopted from a Guard that is still draining.
    metered: bool = True
    last_active: float = 0.0  # loop time work was last seen on it
    stop_reason: str | None = None  # why it is going away ("idle", "scale down", ...)
    exit_reason: str | None = None  # the driver's words when it exited


class ControlState(abc.ABC):
    """The store of instances and key ownership."""

    @abc.abstractmethod
    def put(self, inst: Instance) -> None:
        """Add or update an instance (call after changing it)."""

    @abc.abstractmethod
    def get(self, instance_id: str) -> Instance | None: ...

    @abc.abstractmethod
    def remove(self, instance_id: str) -> None:
        """Forget an instance, and the key it owned."""

    @abc.abstractmethod
    def of_service(self, service: str) -> list[Instance]: ...

    @abc.abstractmethod
    def owner(self, service: str, key: str) -> Instance | None:
        """The instance that serves ``key`` of a per-key service, if any."""

    @abc.abstractmethod
    def services(self) -> list[str]: ...

    # Containers made through the admin API: what was asked for (the instances running
    # them are ordinary instances of each container's own service, above).
    @abc.abstractmethod
    def put_container(self, record: ContainerRecord) -> None: ...

    @abc.abstractmethod
    def get_container(self, container_id: str) -> ContainerRecord | None: ...

    @abc.abstractmethod
    def remove_container(self, container_id: str) -> None: ...

    @abc.abstractmethod
    def containers(self) -> list[ContainerRecord]:
        """Every container record, oldest first."""


class MemoryState(ControlState):
    """The single-process store."""

    def __init__(self) -> None:
        self._instances: dict[str, Instance] = {}
        self._by_service: dict[str, dict[str, Instance]] = {}
        self._owners: dict[tuple[str, str], str] = {}
        self._containers: dict[str, ContainerRecord] = {}  # insertion order = creation order

    def put(self, inst: Instance) -> None:
        self._instances[inst.id] = inst
        self._by_service.setdefault(inst.service, {})[inst.id] = inst
        if inst.key is not None:
            owner = (inst.service, inst.key)
            # A starting or ready instance owns its key; one going away only keeps what it
            # owned (its successor, started while it drains, owns the key from its start).
            if inst.phase in (Phase.STARTING, Phase.READY) or owner not in self._owners:
                self._owners[owner] = inst.id

    def get(self, instance_id: str) -> Instance | None:
        return self._instances.get(instance_id)

    def remove(self, instance_id: str) -> None:
        inst = self._instances.pop(instance_id, None)
        if inst is None:
            return
        members = self._by_service.get(inst.service)
        if members is not None:
            members.pop(instance_id, None)
            if not members:
                del self._by_service[inst.service]
        if inst.key is not None and self._owners.get((inst.service, inst.key)) == instance_id:
            del self._owners[(inst.service, inst.key)]

    def of_service(self, service: str) -> list[Instance]:
        return list(self._by_service.get(service, {}).values())

    def owner(self, service: str, key: str) -> Instance | None:
        instance_id = self._owners.get((service, key))
        return None if instance_id is None else self._instances.get(instance_id)

    def services(self) -> list[str]:
        return list(self._by_service)

    def put_container(self, record: ContainerRecord) -> None:
        self._containers[record.id] = record

    def get_container(self, container_id: str) -> ContainerRecord | None:
        return self._containers.get(container_id)

    def remove_container(self, container_id: str) -> None:
        self._containers.pop(container_id, None)

    def containers(self) -> list[ContainerRecord]:
        return list(self._containers.values())
