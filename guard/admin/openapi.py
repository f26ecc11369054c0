"""The OpenAPI 3.1 document of the admin API, served at ``GET /v1/openapi.json``.

Written by hand next to the handlers it describes (it is short, and a generator would be
a dependency). Request bodies are the route-file schema; the loader stays the judge of
values (units, cross-file references), so the schemas here describe shapes and types, and
an answer of 400 ``invalid_config`` carries the loader's ``file: key: message`` lines.
"""

from __future__ import annotations

import json
from typing import Any

from guard import __version__
from guard.admin import openapi_containers

_UNIT = {"type": ["string", "number"]}  # "250ms", "8MiB", 0.5 ...
_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_NULL_STR = {"type": ["string", "null"]}


def _obj(props: dict[str, Any], required: tuple[str, ...] = (), closed: bool = True) -> dict:
    doc: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        doc["required"] = list(required)
    if closed:
        doc["additionalProperties"] = False  # the loader rejects unknown keys too
    return doc


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_MATCH = _obj(
    {
        "host": _STR,
        "path_prefix": _STR,
        "path": _STR,
        "methods": {"type": "array", "items": _STR},
        "headers": {"type": "object", "additionalProperties": _STR},
        "sni": _STR,
    }
)

ROUTE = _obj(
    {
        "name": {**_STR, "description": "must equal the name in the path, or be absent"},
        "listener": _STR,
        "match": _MATCH,
        "service": _STR,
        "strip_prefix": _BOOL,
        "priority": _INT,
        "websocket": _obj({"max_message": _UNIT}, ("max_message",)),
        "rate_limit": _obj({"average": {"type": "number"}, "burst": _INT, "by": _STR}),
        "source": {**_STR, "readOnly": True, "description": "ignored on PUT"},
        "owner": {**_NULL_STR, "readOnly": True, "description": "ignored on PUT"},
    },
    ("listener", "service"),
)

ROUTE_VIEW = _obj(
    {
        "name": _STR,
        "listener": _STR,
        "match": _MATCH,
        "service": _STR,
        "strip_prefix": _BOOL,
        "priority": _INT,
        "websocket": {"type": "object"},
        "rate_limit": {"type": "object"},
        "source": {
            **_NULL_STR,
            "description": "the route file it came from; _admin.yaml and _admin-<tenant>.yaml"
            " are written by this API",
        },
        "owner": {
            **_NULL_STR,
            "description": "'*' (_admin.yaml), a tenant (_admin-<tenant>.yaml), or null for"
            " hand-written files",
        },
    },
    ("name", "listener", "match", "service", "source", "owner"),
    closed=False,
)

_CONTAINER = _obj(
    {
        "driver": {"enum": ["docker", "process"]},
        "image": _STR,
        "command": {"type": "array", "items": _STR, "minItems": 1},
        "env": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
        "port": _INT,
        "resources": _obj({"cpu": _UNIT, "memory": _UNIT}),
        "ready": _obj({"http": _STR, "tcp": _BOOL, "udp": _STR, "delay": _UNIT}),
        "stop_timeout": _UNIT,
    },
    ("driver",),
)

_SCALE = _obj(
    {
        k: _UNIT
        for k in (
            "min",
            "max",
            "target_concurrency",
            "target_cpu",
            "max_concurrency",
            "sleep_after",
            "wake_timeout",
            "queue",
            "stable_window",
            "panic_window",
            "scale_down_delay",
        )
    }
)

SERVICE = _obj(
    {
        "servers": {"type": "array", "items": _STR, "minItems": 1},
        "container": _CONTAINER,
        "scale": _SCALE,
        "per_key": _BOOL,
        "key": _STR,
        "balance": {"enum": ["round_robin", "least_request", "p2c", "hash"]},
        "hash_on": _STR,
        "health": _obj(
            {
                "http": _STR,
                "tcp": _BOOL,
                "interval": _UNIT,
                "timeout": _UNIT,
                "unhealthy_after": _INT,
                "healthy_after": _INT,
            }
        ),
        "retries": _obj(
            {"attempts": _INT, "on": {"type": "array", "items": _UNIT}, "budget": _UNIT}
        ),
        "proxy_protocol": _obj({"send": {"enum": ["v1", "v2"]}}, ("send",)),
        "limits": _obj({"max_connections": _INT, "max_pending": _INT, "max_in_flight": _INT}),
        "outlier": _obj({"consecutive_errors": _INT, "base_ejection": _UNIT}),
        "name": {**_STR, "description": "must equal the name in the path, or be absent"},
        "source": {**_STR, "readOnly": True, "description": "ignored on PUT"},
        "owner": {**_NULL_STR, "readOnly": True, "description": "ignored on PUT"},
    },
)

SERVICE_VIEW = _obj(
    {
        "name": _STR,
        "kind": {"enum": ["servers", "container"]},
        "source": _NULL_STR,
        "owner": _NULL_STR,
        "balance": _STR,
        "servers": {"type": ["array", "integer"]},
        "instances": {"type": ["array", "object"]},
        "autoscaler": {"type": ["object", "null"]},
    },
    ("name", "kind", "source", "owner"),
    closed=False,
)

ERROR = _obj(
    {
        "error": {**_STR, "description": "stable code, also in the x-guard-error header"},
        "message": _STR,
        "errors": {
            "type": "array",
            "items": _STR,
            "description": "invalid_config: the loader's `file: key: message` lines",
        },
    },
    ("error", "message"),
    closed=False,
)

USAGE = _obj(
    {
        "by": {"enum": ["tenant", "service", "instance"]},
        "since": {"type": ["number", "null"]},
        "until": {"type": ["number", "null"]},
        "rate_card": _NULL_STR,
        "rates": {"type": "array", "items": _STR},
        "rows": {"type": "array", "items": {"type": "object"}},
        "notes": {"type": "array", "items": _STR},
    },
    ("by", "rows"),
    closed=False,
)

TENANT = _obj(
    {
        "name": _STR,
        "file": _STR,
        "quota": _obj(
            {
                "max_containers": {"type": ["integer", "null"]},
                "max_cpu": {"type": ["number", "null"]},
                "max_memory": {"type": ["integer", "null"]},
                "enforced": _BOOL,
            },
            closed=False,
        ),
        "use": _obj(
            {
                "containers": _INT,
                "cpu": {"type": "number"},
                "memory": _INT,
                "containers_without_limits": _INT,
            },
            closed=False,
        ),
        "reserved": _obj(
            {"containers": _INT, "cpu": {"type": "number"}, "memory": _INT},
            ("containers", "cpu", "memory"),
        ),
        "services": {"type": "array", "items": _STR},
        "routes": {"type": "array", "items": _STR},
    },
    ("name", "quota", "use", "reserved"),
    closed=False,
)


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, **_json(_ref("Error"))}


_AUTH_ERRORS = {"401": _error("no or wrong bearer token (tokens configured)")}
_NAME = {"name": "name", "in": "path", "required": True, "schema": _STR}


def _collection(kind: str, item: str, view: str) -> dict[str, Any]:
    one = kind[:-1]
    return {
        f"/v1/{kind}": {
            "get": {
                "summary": f"every {one} the caller may see",
                "responses": {
                    "200": {
                        "description": f"the {kind}",
                        **_json(
                            _obj(
                                {kind: {"type": "array", "items": _ref(view)}},
                                (kind,),
                                closed=False,
                            )
                        ),
                    },
                    **_AUTH_ERRORS,
                },
            }
        },
        f"/v1/{kind}/{{name}}": {
            "parameters": [_NAME],
            "get": {
                "summary": f"one {one}",
                "responses": {
                    "200": {"description": f"the {one}", **_json(_ref(view))},
                    "404": _error(f"no such {one}, or another tenant's"),
                    **_AUTH_ERRORS,
                },
            },
            "put": {
                "summary": f"create or replace a {one}: validated, persisted under routes/,"
                " applied before the answer",
                "requestBody": {"required": True, **_json(_ref(item))},
                "responses": {
                    "200": {"description": f"the {one} as now served", **_json(_ref(view))},
                    "400": _error("invalid JSON or invalid_config (with `errors` lines)"),
                    "404": _error(f"another tenant's {one}"),
                    "405": _error(f"the {one} is in a hand-written route file: change it there"),
                    "409": _error(
                        "routes_not_a_directory | reload_rejected | admin_file_invalid | conflict"
                    ),
                    "413": _error("body over 1 MiB"),
                    "429": _error(
                        "quota_exceeded: a tenant's container services would reserve more than"
                        " its quota (each reserves scale.max containers)"
                    ),
                    "500": _error("routes_write_failed: the route directory cannot be written"),
                    "415": _error("the body is not application/json"),
                    **_AUTH_ERRORS,
                },
            },
            "delete": {
                "summary": f"remove a {one} from its admin file and from serving",
                "responses": {
                    "200": {
                        "description": "removed",
                        **_json(_obj({"deleted": _STR, "name": _STR}, ("deleted", "name"))),
                    },
                    "400": _error("invalid_config: something still uses it"),
                    "404": _error(f"no such {one} in an admin file the caller owns"),
                    "405": _error(f"the {one} is in a hand-written route file: change it there"),
                    "409": _error("routes_not_a_directory | reload_rejected | admin_file_invalid"),
                    "500": _error("routes_write_failed: the route directory cannot be written"),
                    **_AUTH_ERRORS,
                },
            },
        },
    }


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v1/openapi.json": {
            "get": {
                "summary": "this document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1", **_json({"type": "object"})}},
            }
        },
        "/v1/usage": {
            "get": {
                "summary": "the usage ledger, as `guard usage`; a tenant's token sees its own",
                "parameters": [
                    {"name": n, "in": "query", "required": False, "schema": s}
                    for n, s in (
                        ("since", _STR),
                        ("until", _STR),
                        ("by", {"enum": ["tenant", "service", "instance"]}),
                        ("tenant", _STR),
                        ("price", {"enum": ["rivet", "cloudflare", "fly"]}),
                        ("format", {"enum": ["json", "csv"]}),
                    )
                ],
                "responses": {
                    "200": {
                        "description": "usage rows",
                        "content": {
                            "application/json": {"schema": _ref("Usage")},
                            "text/csv": {"schema": _STR},
                        },
                    },
                    "400": _error("invalid_parameter"),
                    "404": _error("usage_not_configured"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/tenants": {
            "get": {
                "summary": "tenants with their quota and use (a tenant's token: itself)",
                "responses": {
                    "200": {
                        "description": "the tenants",
                        **_json(
                            _obj(
                                {"tenants": {"type": "array", "items": _ref("Tenant")}},
                                ("tenants",),
                                closed=False,
                            )
                        ),
                    },
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/tenants/{name}": {
            "parameters": [_NAME],
            "get": {
                "summary": "one tenant's quota (enforced on POST /v1/containers and PUT"
                " /v1/services), what it reserves and what it uses",
                "responses": {
                    "200": {"description": "the tenant", **_json(_ref("Tenant"))},
                    "404": _error("no such tenant, or not the caller's"),
                    **_AUTH_ERRORS,
                },
            },
        },
    }
    paths.update(_collection("routes", "Route", "RouteView"))
    paths.update(_collection("services", "Service", "ServiceView"))
    paths.update(openapi_containers.paths(_AUTH_ERRORS))
    return paths


def spec() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Guard admin API",
            "version": __version__,
            "description": "Routes, services, containers, tenants and usage of one Guard. With"
            " admin.tokens every path but this document needs `Authorization: Bearer"
            " <token>`; a tenant's token sees and changes only its own objects (others are"
            " 404). Errors carry a stable code in `x-guard-error` and in the body.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Route": ROUTE,
                "RouteView": ROUTE_VIEW,
                "Service": SERVICE,
                "ServiceView": SERVICE_VIEW,
                "Usage": USAGE,
                "Tenant": TENANT,
                "Error": ERROR,
                **openapi_containers.SCHEMAS,
            },
        },
    }


def document() -> bytes:
    return json.dumps(spec(), indent=1).encode()
