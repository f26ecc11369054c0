"""The ``/v1/containers`` part of the OpenAPI document (``guard.admin.openapi``)."""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_INT = {"type": "integer"}
_UNIT = {"type": ["string", "number"]}  # "250ms", "8MiB", 0.5 ...
_NULL_STR = {"type": ["string", "null"]}
_NULL_NUM = {"type": ["number", "null"]}
_STR_MAP = {"type": "object", "additionalProperties": _STR}


def _obj(props: dict[str, Any], required: tuple[str, ...] = (), closed: bool = True) -> dict:
    doc: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        doc["required"] = list(required)
    if closed:
        doc["additionalProperties"] = False
    return doc


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, **_json(_ref("Error"))}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


PORT = _obj(
    {
        "protocol": {"enum": ["http", "tcp", "udp"], "default": "http"},
        "internal_port": {"type": "integer", "minimum": 1, "maximum": 65535},
    },
    ("internal_port",),
)

CONTAINER = _obj(
    {
        "image": {**_STR, "description": "a docker image (drivers.docker); else command"},
        "command": {
            "type": "array",
            "items": _STR,
            "minItems": 1,
            "description": "argv: the process with no image (drivers.process), Cmd with one",
        },
        "env": _STR_MAP,
        "resources": _obj({"cpu": _UNIT, "memory": _UNIT}),
        "ports": {
            "type": "object",
            "additionalProperties": PORT,
            "propertyNames": {"pattern": "^[a-z0-9]([a-z0-9-]{0,28}[a-z0-9])?$"},
            "description": "by name; an http port is reached at {id}-{name}.{containers.domain},"
            " a tcp/udp port at a listener port from containers.tcp_ports. The main port"
            " (first http, else first tcp) is $PORT in the app, each other one $PORT_<NAME>",
        },
        "tags": _STR_MAP,
        "service": {**_STR, "description": "a group name to list containers by"},
        "lifecycle": _obj(
            {
                "sleep_after": {**_STR, "description": "idle time before it sleeps"},
                "destroy_after": {**_STR, "description": "asleep this long: deleted"},
            }
        ),
    },
)

CONTAINER_VIEW = _obj(
    {
        "id": _STR,
        "tenant": _STR,
        "state": {"enum": ["running", "starting", "stopping", "stopped", "deleting"]},
        "driver": {"enum": ["process", "docker"]},
        "image": _NULL_STR,
        "command": {"type": "array", "items": _STR},
        "env": _STR_MAP,
        "resources": _obj({"cpu": _NULL_NUM, "memory": {"type": ["integer", "null"]}}),
        "ports": {
            "type": "object",
            "additionalProperties": _obj(
                {
                    "protocol": _STR,
                    "internal_port": _INT,
                    "address": {
                        **_STR,
                        "description": "what clients use: http://{id}-{port}.{domain}[:port]"
                        " or tcp://host:port, udp://host:port",
                    },
                }
            ),
        },
        "tags": _STR_MAP,
        "service": _NULL_STR,
        "lifecycle": _obj({"sleep_after": _NULL_NUM, "destroy_after": _NULL_NUM}),
        "created_at": {"type": "number"},
        "instance": {
            "type": ["object", "null"],
            "properties": {
                "id": _STR,
                "state": _STR,
                "started_at": _NULL_NUM,
                "stop_reason": _NULL_STR,
            },
        },
        "last_error": _NULL_STR,
    },
    ("id", "tenant", "state", "ports"),
)

_STRATEGY = {
    "oneOf": [
        {"enum": ["immediate", "rolling"]},
        _obj(
            {"rolling": _obj({"max_unavailable": {"type": "integer", "minimum": 1, "default": 1}})},
            ("rolling",),
        ),
    ],
    "default": "rolling",
    "description": "rolling: a new instance starts beside the old one, takes new requests"
    " once ready, then the old one drains (in-flight requests finish on it); with a"
    " selector, max_unavailable containers at a time. immediate: the old instance drains"
    " and a new one starts at once, requests in between held",
}
_CHANGE = {
    "image": _STR,
    "command": {"type": "array", "items": _STR, "minItems": 1},
    "env": {**_STR_MAP, "description": "replaces the whole environment"},
    "strategy": _STRATEGY,
}
UPGRADE = _obj(_CHANGE)
UPGRADE_MANY = _obj(
    {**_CHANGE, "selector": {**_STR_MAP, "description": "tags every container must have"}},
    ("selector",),
)
UPGRADE_RESULT = _obj(
    {
        "upgraded": {"type": "array", "items": _STR},
        "failed": {
            "type": "array",
            "items": _obj({"id": _STR, "error": _STR, "message": _STR}),
        },
        "skipped": {"type": "array", "items": _STR},
    },
    ("upgraded", "failed", "skipped"),
)

SCHEMAS = {
    "Container": CONTAINER,
    "ContainerView": CONTAINER_VIEW,
    "ContainerUpgrade": UPGRADE,
    "ContainersUpgrade": UPGRADE_MANY,
    "UpgradeResult": UPGRADE_RESULT,
}

_ID = {"name": "id", "in": "path", "required": True, "schema": _STR}
_WAIT = [
    _query("wait_ready", {"type": "boolean"}, "answer once it is ready (or failed to start)"),
    _query("timeout", _STR, "how long wait_ready waits (default 60s)"),
]
_TIMEOUT = [_query("timeout", _STR, "how long in-flight requests may take to finish")]
_VIEW = {"description": "the container", **_json(_ref("ContainerView"))}
_NOT_FOUND = _error("container_not_found: no such container, or another tenant's")
_NOT_CONFIGURED = _error("containers_not_configured: guard.yaml has no containers.listener")
_WAIT_ERRORS = {
    "503": _error(
        "instance_start_failed (with `container`) | driver_unavailable | ports_exhausted"
    ),
    "504": _error("wake_timeout: not ready within the timeout (with `container`)"),
}


def paths(auth_errors: dict[str, Any]) -> dict[str, Any]:
    out = _paths(auth_errors)
    # Every container operation answers 409 while guard.yaml has no containers.listener.
    for item in out.values():
        for method, op in item.items():
            if method == "parameters":
                continue
            conflict = op["responses"].get("409")
            if conflict is None:
                op["responses"]["409"] = _NOT_CONFIGURED
            elif "containers_not_configured" not in conflict["description"]:
                description = f"{conflict['description']} | {_NOT_CONFIGURED['description']}"
                op["responses"]["409"] = {**conflict, "description": description}
    return out


def _paths(auth_errors: dict[str, Any]) -> dict[str, Any]:
    return {
        "/v1/containers": {
            "get": {
                "summary": "the caller's containers, oldest first, a page at a time",
                "parameters": [
                    _query("tag", _STR, "KEY:VALUE or KEY; repeat: all must match"),
                    _query("state", {"enum": ["running", "starting", "stopping", "stopped"]}, ""),
                    _query("service", _STR, "the group name given at create"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, ""),
                    _query("cursor", _STR, "`next` of the previous page"),
                ],
                "responses": {
                    "200": {
                        "description": "a page",
                        **_json(
                            _obj(
                                {
                                    "containers": {
                                        "type": "array",
                                        "items": _ref("ContainerView"),
                                    },
                                    "next": _NULL_STR,
                                },
                                ("containers", "next"),
                            )
                        ),
                    },
                    "400": _error("invalid_request: a bad query parameter"),
                    "409": _NOT_CONFIGURED,
                    **auth_errors,
                },
            },
            "post": {
                "summary": "create and start a container",
                "parameters": _WAIT,
                "requestBody": {"required": True, **_json(_ref("Container"))},
                "responses": {
                    "201": _VIEW,
                    "400": _error("invalid_request, with one `errors` line per problem"),
                    "409": _error(
                        "containers_not_configured: no containers.listener, or a tcp/udp port"
                        " without containers.tcp_ports"
                    ),
                    "413": _error("body over 1 MiB"),
                    "429": _error("quota_exceeded: the tenant's quota, named in the message"),
                    **_WAIT_ERRORS,
                    **auth_errors,
                },
            },
        },
        "/v1/containers/{id}": {
            "parameters": [_ID],
            "get": {
                "summary": "one container",
                "responses": {"200": _VIEW, "404": _NOT_FOUND, **auth_errors},
            },
            "delete": {
                "summary": "refuse new requests, let in-flight ones finish, stop, forget",
                "parameters": _TIMEOUT,
                "responses": {
                    "200": {
                        "description": "deleted",
                        **_json(_obj({"id": _STR, "state": {"const": "deleted"}})),
                    },
                    "404": _NOT_FOUND,
                    **auth_errors,
                },
            },
        },
        "/v1/containers/{id}/stop": {
            "parameters": [_ID],
            "post": {
                "summary": "drain and stop its instance; a request to its address wakes it",
                "parameters": _TIMEOUT,
                "responses": {"200": _VIEW, "404": _NOT_FOUND, **auth_errors},
            },
        },
        "/v1/containers/upgrade": {
            "post": {
                "summary": "upgrade every container (of the caller's) with the selector's tags",
                "parameters": [_query("timeout", _STR, "per container, for its new instance")],
                "requestBody": {"required": True, **_json(_ref("ContainersUpgrade"))},
                "responses": {
                    "200": {"description": "all upgraded", **_json(_ref("UpgradeResult"))},
                    "400": _error("invalid_request, with one `errors` line per problem"),
                    "409": _error("upgrade_in_progress"),
                    "503": _error(
                        "upgrade_failed: `upgraded`, `failed` and (rolling: not tried after"
                        " a failure) `skipped` ids; what failed keeps its old instance"
                    ),
                    **auth_errors,
                },
            },
        },
        "/v1/containers/{id}/upgrade": {
            "parameters": [_ID],
            "post": {
                "summary": "replace its image, command or env",
                "parameters": [_query("timeout", _STR, "how long the new instance may take")],
                "requestBody": {"required": True, **_json(_ref("ContainerUpgrade"))},
                "responses": {
                    "200": _VIEW,
                    "400": _error("invalid_request"),
                    "404": _NOT_FOUND,
                    "409": _error("upgrade_in_progress"),
                    **_WAIT_ERRORS,
                    **auth_errors,
                },
            },
        },
        "/v1/containers/{id}/logs": {
            "parameters": [_ID],
            "get": {
                "summary": "its output (stdout and stderr); asleep, what its last instance wrote",
                "parameters": [
                    _query("tail", {"type": "integer", "minimum": 0}, "the last N lines"),
                    _query(
                        "follow",
                        {"type": "boolean"},
                        "a chunked stream: the last `tail` (default 100) lines, then output"
                        " as it is written, until the instance stops or the client goes",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "the output",
                        "content": {"text/plain": {"schema": _STR}},
                    },
                    "400": _error("invalid_request: a bad query parameter"),
                    "404": _NOT_FOUND,
                    "503": _error("driver_unavailable: the driver cannot be read"),
                    **auth_errors,
                },
            },
        },
        "/v1/containers/{id}/start": {
            "parameters": [_ID],
            "post": {
                "summary": "start it now (it also starts on the next request)",
                "parameters": _WAIT,
                "responses": {"200": _VIEW, "404": _NOT_FOUND, **_WAIT_ERRORS, **auth_errors},
            },
        },
    }
