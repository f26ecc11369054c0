"""Tenant quotas (``tenants:`` in guard.yaml): what a tenant reserves, and whether a change
fits (pure: no IO, no clock).

A tenant reserves, whether running or asleep (a request may wake any of it at any time):

- each API container (``POST /v1/containers``): one container and its ``resources``;
- each container service of its admin file (``PUT /v1/services``): ``scale.max``
  containers, each with ``container.resources`` (per-key services too: at most
  ``scale.max`` keys run at once).

Kubernetes' ResourceQuota counts the same way (the limits of everything that may run),
so a tenant can never get past its quota by scaling up later. Like it, only changes that
*grow* a reservation are checked: lowering a quota in guard.yaml never breaks a tenant's
deletes, or edits that do not add capacity.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from guard.config.model import Resources, ScaleConfig, ServiceConfig, TenantQuota


@dataclass(frozen=True, slots=True)
class Reservation:
    containers: int = 0
    cpu: float = 0.0  # cores
    memory: int = 0  # bytes

    def __add__(self, other: Reservation) -> Reservation:
        return Reservation(
            self.containers + other.containers, self.cpu + other.cpu, self.memory + other.memory
        )


def of_resources(resources: Resources, count: int = 1) -> Reservation:
    return Reservation(count, (resources.cpu or 0.0) * count, (resources.memory or 0) * count)


def of_services(services: Iterable[ServiceConfig]) -> Reservation:
    """What the container services among ``services`` may run at most."""
    total = Reservation()
    for svc in services:
        if svc.container is not None:
            total += of_resources(svc.container.resources, (svc.scale or ScaleConfig()).max)
    return total


def missing_limit(quota: TenantQuota, resources: Resources, where: str) -> str | None:
    """A tenant with a cpu (memory) quota must say what each container may use."""
    if quota.max_cpu is not None and resources.cpu is None:
        return f"{where}.cpu: required: tenant {quota.name} has a cpu quota ({quota.max_cpu:g})"
    if quota.max_memory is not None and resources.memory is None:
        return (
            f"{where}.memory: required: tenant {quota.name} has a memory quota"
            f" ({quota.max_memory} bytes)"
        )
    return None


def exceeded(quota: TenantQuota, before: Reservation, after: Reservation) -> str | None:
    """Why going from ``before`` to ``after`` breaks ``quota`` (None: it fits, or it grows
    nothing the quota limits)."""
    checks: tuple[tuple[str, float | None, float, float, str], ...] = (
        ("max_containers", quota.max_containers, before.containers, after.containers, ""),
        ("max_cpu", quota.max_cpu, before.cpu, after.cpu, ""),
        ("max_memory", quota.max_memory, before.memory, after.memory, " bytes"),
    )
    for name, limit, now, then, unit in checks:
        if limit is not None and then > limit + 1e-9 and then > now:
            return (
                f"{name} is {_number(limit)}{unit} and this would reserve {_number(then)}"
                f" (now {_number(now)})"
            )
    return None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
