"""The REST API under ``/v1`` on the admin address: authentication, then one handler per
path.

- ``GET /v1/openapi.json`` — the OpenAPI 3.1 document; open, like /healthz and /metrics.
- ``GET /v1/usage`` — the usage ledger (``guard.admin.usage_api``); a tenant's token
  reads only that tenant's rows.
- ``GET /v1/routes[/{name}]``, ``GET /v1/services[/{name}]`` — ``guard.admin.state_api``.
- ``PUT`` / ``DELETE /v1/routes/{name}``, ``/v1/services/{name}`` —
  ``guard.admin.routes_api``.
- ``GET /v1/tenants[/{name}]`` — quotas and use (``guard.admin.tenants_api``).
- ``/v1/containers[/{id}[/start|stop]]`` — containers as API objects
  (``guard.admin.containers_api``).

With ``admin.tokens`` every path here but the OpenAPI document needs a valid bearer token
(401 ``unauthorized`` otherwise); without tokens the API is open and loopback-only. Every
write leaves one audit line on the ``guard.audit`` logger: tenant, action, target, status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote

from guard.admin.answers import Answer, Request, error_answer
from guard.admin.auth import Caller, TokenTable
from guard.admin.containers_api import ContainersApi
from guard.admin.openapi import document
from guard.admin.routes_api import ReloadNow, RouteWriter
from guard.admin.state_api import StateApi
from guard.admin.tenants_api import TenantsApi
from guard.admin.usage_api import UsagePage, usage_page
from guard.config.model import GuardConfig, RoutesConfig

if TYPE_CHECKING:
    from guard.control.plane import ControlPlane

audit = logging.getLogger("guard.audit")

_READ = ("GET", "HEAD")


def _method_not_allowed(path: str, allow: str) -> Answer:
    return error_answer(
        405, "method_not_allowed", f"{path} takes {allow.replace(', ', ' or ')}", ("allow", allow)
    )


class AdminApi:
    def __init__(
        self,
        config: GuardConfig,
        tokens: TokenTable,
        *,
        routes: Callable[[], RoutesConfig],
        plane: Callable[[], ControlPlane | None],
        reload_now: ReloadNow,
        usage: UsagePage | None = None,
    ) -> None:
        self.tokens = tokens
        self.state = StateApi(routes, plane)
        self.tenants = TenantsApi(config, tokens.tenants, routes, plane)
        self.writer = RouteWriter(config, self.state, reload_now, self.tenants)
        self.containers = ContainersApi(config, plane, self.tenants)
        self.usage = usage
        self.openapi = document()

    @classmethod
    def build(
        cls,
        config: GuardConfig,
        *,
        routes: Callable[[], RoutesConfig],
        plane: Callable[[], ControlPlane | None],
        reload_now: ReloadNow,
    ) -> AdminApi:
        """For worker.py / supervisor.py: the tokens (checked by ``guard run`` already)
        and the usage page come from ``config``."""
        from guard.admin.auth import load_tokens

        return cls(
            config,
            load_tokens(config.admin),
            routes=routes,
            plane=plane,
            reload_now=reload_now,
            usage=usage_page(config),
        )

    async def handle(self, req: Request) -> Answer:
        if req.path == "/v1/openapi.json":
            if req.method not in _READ:
                return _method_not_allowed(req.path, "GET, HEAD")
            return Answer(200, self.openapi)
        caller = self.tokens.caller(req.header("authorization"))
        if caller is None:
            return error_answer(
                401,
                "unauthorized",
                "a valid bearer token is needed: Authorization: Bearer <token>",
                ("www-authenticate", 'Bearer realm="guard"'),
            )
        answer = await self._route(caller, req)
        if req.method not in _READ:
            audit.info(
                "audit tenant=%s action=%s target=%s result=%d",
                caller.tenant,
                req.method,
                req.path,
                answer.status,
            )
        return answer

    async def _route(self, caller: Caller, req: Request) -> Answer:
        parts = [unquote(p) for p in req.path.split("/")[1:]]
        if len(parts) < 2 or parts[0] != "v1" or any(not p for p in parts):
            return error_answer(404, "not_found", f"no admin endpoint {req.path}")
        what, rest = parts[1], parts[2:]
        method = req.method
        if what == "usage" and not rest:
            if method not in _READ:
                return _method_not_allowed(req.path, "GET, HEAD")
            if self.usage is None:
                return error_answer(404, "usage_not_configured", "guard.yaml has no usage ledger")
            return await self.usage(req.query, None if caller.all else caller.tenant)
        if what == "containers":
            return await self.containers.handle(caller, method, rest, req.query, req.body)
        if what == "tenants" and len(rest) <= 1:
            if method not in _READ:
                return _method_not_allowed(req.path, "GET, HEAD")
            return self.tenants.get(caller, rest[0] if rest else None)
        if what not in ("routes", "services") or len(rest) > 1:
            return error_answer(404, "not_found", f"no admin endpoint {req.path}")
        if not rest:
            if method not in _READ:
                return _method_not_allowed(req.path, "GET, HEAD")
            return self.state.get(caller, what, None)
        name = rest[0]
        if method in _READ:
            return self.state.get(caller, what, name)
        if method == "PUT":
            kind = (req.header("content-type") or "application/json").split(";")[0].strip()
            if kind.lower() != "application/json" and not kind.lower().endswith("+json"):
                return error_answer(
                    415, "unsupported_media_type", "the body must be application/json"
                )
            return await self.writer.put(caller, what, name, req.body)
        if method == "DELETE":
            return await self.writer.delete(caller, what, name)
        return _method_not_allowed(req.path, "GET, HEAD, PUT, DELETE")
