"""Read-only admin endpoints over the routes in force and the control plane's state.

- ``GET /v1/services`` — every service: kind (servers | container), and a summary.
- ``GET /v1/services/{name}`` — a static service's servers with their health, or a
  container service's instances (state, key, address, in flight, age), its wake queue and
  the autoscaler's last decision with its inputs.
- ``GET /v1/routes`` / ``GET /v1/routes/{name}`` — the routes in force, with the file each
  came from.

A tenant's token sees only objects from its own admin file (``guard.admin.tenancy``);
anything else is 404, exactly as if it did not exist. Answers are built from what this
process holds, on the event loop, in microseconds: no IO.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from guard.admin.answers import Answer, error_answer, json_answer
from guard.admin.auth import Caller
from guard.admin.tenancy import owner_of, visible
from guard.config.model import RouteConfig, RoutesConfig, ServiceConfig
from guard.control.state import Phase

if TYPE_CHECKING:
    from guard.control.plane import ControlPlane


def route_view(route: RouteConfig) -> dict[str, Any]:
    m = route.match
    match = {k: v for k, v in asdict(m).items() if v not in (None, (), [])}
    if "headers" in match:
        match["headers"] = dict(match["headers"])
    doc: dict[str, Any] = {
        "name": route.name,
        "listener": route.listener,
        "match": match,
        "service": route.service,
        "strip_prefix": route.strip_prefix,
        "priority": route.priority,
    }
    if route.websocket is not None:
        doc["websocket"] = asdict(route.websocket)
    if route.rate_limit is not None:
        doc["rate_limit"] = asdict(route.rate_limit)
    doc["source"] = str(route.source) if route.source else None
    doc["owner"] = owner_of(route.source)
    return doc


class StateApi:
    def __init__(
        self,
        routes: Callable[[], RoutesConfig],
        plane: Callable[[], ControlPlane | None] = lambda: None,
    ) -> None:
        self.routes = routes  # the route files in force
        self.plane = plane  # None: no control plane in this Guard (static services only)

    def get(self, caller: Caller, kind: str, name: str | None) -> Answer:
        """GET /v1/{kind}[/{name}] for ``kind`` routes | services."""
        routes = self.routes()
        if kind == "routes":
            if name is None:
                shown = [route_view(r) for r in routes.routes if visible(caller, r.source)]
                return json_answer(200, {"routes": shown})
            route = self.find_route(caller, name)
            if route is None:
                return error_answer(404, "route_not_found", f"no route {name!r}")
            return json_answer(200, route_view(route))
        if name is None:
            services = [
                self._summary(s) for s in routes.services.values() if visible(caller, s.source)
            ]
            return json_answer(200, {"services": services})
        svc = self.find_service(caller, name)
        if svc is None:
            return error_answer(404, "service_not_found", f"no service {name!r}")
        return json_answer(200, self.service_view(svc))

    def find_route(self, caller: Caller, name: str) -> RouteConfig | None:
        for r in self.routes().routes:
            if r.name == name:
                return r if visible(caller, r.source) else None
        return None

    def find_service(self, caller: Caller, name: str) -> ServiceConfig | None:
        svc = self.routes().services.get(name)
        return svc if svc is not None and visible(caller, svc.source) else None

    def service_view(self, svc: ServiceConfig) -> dict[str, Any]:
        return self._detail(svc)

    def _summary(self, svc: ServiceConfig) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": svc.name,
            "kind": "container" if svc.container is not None else "servers",
            "source": str(svc.source) if svc.source else None,
            "owner": owner_of(svc.source),
        }
        plane = self.plane()
        ctl = plane.controllers.get(svc.name) if plane is not None else None
        if ctl is not None:
            counts: dict[str, int] = {}
            for inst in ctl.instances():
                counts[inst.phase.value] = counts.get(inst.phase.value, 0) + 1
            doc["instances"] = counts
        else:
            checker = plane.health.get(svc.name) if plane is not None else None
            doc["servers"] = len(svc.servers)
            doc["servers_down"] = len(checker.down()) if checker is not None else 0
        return doc

    def _detail(self, svc: ServiceConfig) -> dict[str, Any]:
        doc = self._summary(svc)
        doc["balance"] = svc.balance
        plane = self.plane()
        ctl = plane.controllers.get(svc.name) if plane is not None else None
        if plane is None or ctl is None:
            checker = plane.health.get(svc.name) if plane is not None else None
            states = {s.name: s for s in checker.servers} if checker is not None else {}
            doc["health"] = asdict(svc.health) if svc.health is not None else None
            doc["servers"] = [
                {
                    "address": str(a),
                    "up": states[str(a)].up if str(a) in states else True,
                    "checked": str(a) in states,
                }
                for a in svc.servers
            ]
            return doc
        loop_now = plane.loop.time()
        wall_now = time.time()
        load = plane.peek_load(svc.name)
        doc["per_key"] = svc.per_key
        doc["scale"] = asdict(ctl.scale)
        doc["held"] = load.held
        doc["instances"] = [
            {
                "id": inst.id,
                "state": inst.phase.value,
                "key": inst.key,
                "address": inst.handle.address if inst.handle is not None else None,
                "in_flight": load.in_flight.get(inst.id, 0),
                "started_at": inst.started_wall,
                "ready_for_s": round(loop_now - inst.ready_at, 3)
                if inst.ready_at is not None and inst.phase is Phase.READY
                else None,
                "idle_for_s": round(loop_now - inst.last_active, 3),
                "stop_reason": inst.stop_reason,
            }
            for inst in sorted(ctl.instances(), key=lambda i: i.created_at)
        ]
        decision = ctl.last_decision
        doc["autoscaler"] = (
            None
            if decision is None
            else {
                "desired": decision.desired,
                "ready": decision.ready,
                "panicking": decision.panicking,
                "reason": decision.reason,
                "stable_concurrency": round(decision.stable_concurrency, 3),
                "panic_concurrency": round(decision.panic_concurrency, 3),
                "cpu_utilization": decision.cpu_utilization,
            }
        )
        doc["generated_at"] = wall_now
        return doc
