"""``GET /v1/tenants[/{name}]``: each tenant's quota (``tenants:`` in guard.yaml) and use.

Use is what the tenant runs: its containers made through ``POST /v1/containers`` (each
counts, and reserves its ``resources``, whether running or asleep: a request may wake it
at any time), plus the instances of the container services in its admin file
(``routes/_admin-<tenant>.yaml``) that are not stopped (``container.resources``; an
instance without a limit reserves nothing here, and says so). ``POST /v1/containers``
and ``PUT /v1/services`` enforce the quota on what the tenant *reserves*
(``guard.admin.quota``: each API container, and ``scale.max`` of each of its container
services), shown as ``reserved``; 429 ``quota_exceeded`` names the limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from guard.admin.answers import Answer, error_answer, json_answer
from guard.admin.auth import Caller
from guard.admin.quota import Reservation, of_resources, of_services
from guard.admin.tenancy import admin_file, owner_of
from guard.config.model import GuardConfig, RoutesConfig
from guard.control.state import Phase

if TYPE_CHECKING:
    from guard.control.plane import ControlPlane


class TenantsApi:
    def __init__(
        self,
        config: GuardConfig,
        token_tenants: frozenset[str],
        routes: Callable[[], RoutesConfig],
        plane: Callable[[], ControlPlane | None],
    ) -> None:
        self.config = config
        self.token_tenants = token_tenants
        self.routes = routes
        self.plane = plane
        # Held from a quota check to the change it admits (POST /v1/containers, PUT and
        # DELETE of routes and services), so two changes cannot both fit the same room.
        self.quota_lock = asyncio.Lock()

    def known(self) -> list[str]:
        """Tenants with a quota, a token or an admin file in force."""
        names = set(self.config.tenants) | set(self.token_tenants)
        routes = self.routes()
        for source in [r.source for r in routes.routes] + [
            s.source for s in routes.services.values()
        ]:
            owner = owner_of(source)
            if owner is not None and owner != "*":
                names.add(owner)
        return sorted(names)

    def get(self, caller: Caller, name: str | None) -> Answer:
        names = self.known() if caller.all else [caller.tenant]
        if name is None:
            return json_answer(200, {"tenants": [self._view(n) for n in names]})
        if name not in names:
            return error_answer(404, "tenant_not_found", f"no tenant {name!r}")
        return json_answer(200, self._view(name))

    def use(self, name: str) -> dict[str, Any]:
        """What tenant ``name`` runs and reserves now."""
        routes = self.routes()
        services = [s for s in routes.services.values() if owner_of(s.source) == name]
        plane = self.plane()
        containers = 0
        cpu = 0.0
        memory = 0
        unlimited = 0
        for svc in services:
            ctl = plane.controllers.get(svc.name) if plane is not None else None
            if ctl is None or svc.container is None:
                continue
            res = svc.container.resources
            for inst in ctl.instances():
                if inst.phase is Phase.STOPPED:
                    continue
                containers += 1
                cpu += res.cpu or 0.0
                memory += res.memory or 0
                if res.cpu is None or res.memory is None:
                    unlimited += 1
        api = 0
        if plane is not None:
            for record in plane.containers.records():
                if record.tenant != name:
                    continue
                api += 1
                res = record.spec.resources
                cpu += res.cpu or 0.0
                memory += res.memory or 0
                if res.cpu is None or res.memory is None:
                    unlimited += 1
        return {
            "containers": containers + api,
            "api_containers": api,
            "cpu": round(cpu, 6),
            "memory": memory,
            "containers_without_limits": unlimited,
            "services": services,
        }

    def api_reserved(self, name: str) -> Reservation:
        """What tenant ``name``'s API containers reserve."""
        plane = self.plane()
        total = Reservation()
        if plane is not None:
            for record in plane.containers.records():
                if record.tenant == name:
                    total += of_resources(record.spec.resources)
        return total

    def reserved(self, name: str) -> Reservation:
        """What tenant ``name`` reserves now: its API containers and, at ``scale.max``,
        the container services of its admin file."""
        own = (s for s in self.routes().services.values() if owner_of(s.source) == name)
        return self.api_reserved(name) + of_services(own)

    def _view(self, name: str) -> dict[str, Any]:
        quota = self.config.tenants.get(name)
        routes = self.routes()
        use = self.use(name)
        services = use.pop("services")
        return {
            "name": name,
            "file": admin_file(name),
            "quota": {
                "max_containers": quota.max_containers if quota else None,
                "max_cpu": quota.max_cpu if quota else None,
                "max_memory": quota.max_memory if quota else None,
                "enforced": quota is not None,
            },
            "use": use,
            "reserved": asdict(self.reserved(name)),
            "services": sorted(s.name for s in services),
            "routes": sorted(r.name for r in routes.routes if owner_of(r.source) == name),
        }
