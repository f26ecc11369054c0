"""Read-only admin endpoints over the control plane's state (issue 6's GET half).

- ``GET /v1/services`` — every service: kind (servers | container), and a summary.
- ``GET /v1/services/{name}`` — a static service's servers with their health, or a
  container service's instances (state, key, address, in flight, age), its wake queue and
  the autoscaler's last decision with its inputs.
- ``GET /v1/routes`` / ``GET /v1/routes/{name}`` — the routes in force, with the file each
  came from.

Answers are built from what the control plane holds, on the event loop, in microseconds:
no IO. Writes (PUT/DELETE, containers) come with admin tokens.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from guard.admin.answers import Answer, error_answer
from guard.config.model import RouteConfig, ServiceConfig
from guard.control.state import Phase

if TYPE_CHECKING:
    from guard.control.plane import ControlPlane


def _ok(doc: Any) -> Answer:
    return Answer(200, json.dumps(doc, default=str).encode())


def _route(route: RouteConfig) -> dict[str, Any]:
    m = route.match
    match = {k: v for k, v in asdict(m).items() if v not in (None, (), [])}
    if "headers" in match:
        match["headers"] = dict(match["headers"])
    return {
        "name": route.name,
        "listener": route.listener,
        "match": match,
        "service": route.service,
        "strip_prefix": route.strip_prefix,
        "priority": route.priority,
        "source": str(route.source) if route.source else None,
    }


class StateApi:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def answer(self, method: str, path: str) -> Answer | None:
        """The answer for a /v1 state path, or None when the path is not one of ours."""
        parts = path.strip("/").split("/")
        if len(parts) < 2 or parts[0] != "v1" or parts[1] not in ("services", "routes"):
            return None
        if len(parts) > 3 or (len(parts) == 3 and not parts[2]):
            return error_answer(404, "not_found", f"no admin endpoint {path}")
        if method not in ("GET", "HEAD"):
            return error_answer(
                405, "method_not_allowed", f"{path} is read-only for now", ("allow", "GET, HEAD")
            )
        routes = self.plane.routes
        if parts[1] == "routes":
            if len(parts) == 2:
                return _ok({"routes": [_route(r) for r in routes.routes]})
            for r in routes.routes:
                if r.name == parts[2]:
                    return _ok(_route(r))
            return error_answer(404, "route_not_found", f"no route {parts[2]!r}")
        if len(parts) == 2:
            return _ok({"services": [self._summary(s) for s in routes.services.values()]})
        svc = routes.services.get(parts[2])
        if svc is None:
            return error_answer(404, "service_not_found", f"no service {parts[2]!r}")
        return _ok(self._detail(svc))

    def _summary(self, svc: ServiceConfig) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": svc.name,
            "kind": "container" if svc.container is not None else "servers",
            "source": str(svc.source) if svc.source else None,
        }
        ctl = self.plane.controllers.get(svc.name)
        if ctl is not None:
            counts: dict[str, int] = {}
            for inst in ctl.instances():
                counts[inst.phase.value] = counts.get(inst.phase.value, 0) + 1
            doc["instances"] = counts
        else:
            checker = self.plane.health.get(svc.name)
            doc["servers"] = len(svc.servers)
            doc["servers_down"] = len(checker.down()) if checker is not None else 0
        return doc

    def _detail(self, svc: ServiceConfig) -> dict[str, Any]:
        doc = self._summary(svc)
        doc["balance"] = svc.balance
        ctl = self.plane.controllers.get(svc.name)
        if ctl is None:
            checker = self.plane.health.get(svc.name)
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
        loop_now = self.plane.loop.time()
        wall_now = time.time()
        load = self.plane.peek_load(svc.name)
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
