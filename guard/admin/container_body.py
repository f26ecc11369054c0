"""The body of ``POST /v1/containers``, checked field by field.

Every problem is reported at once, each as ``path: message`` (``ports.http.protocol: must
be one of http, tcp, udp``), as the route loader does for files. Unknown fields are errors
at every level: a misspelt ``sleep_afer`` must not silently mean "never sleeps".

Pure: JSON in, a ``ContainerRequest`` or ``BodyErrors`` out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

from guard.config import units
from guard.config.model import ContainerSpec, DriversConfig, Resources
from guard.control.containers import Lifecycle, PortSpec

PROTOCOLS = ("http", "tcp", "udp")
FIELDS = ("image", "command", "env", "resources", "ports", "tags", "service", "lifecycle")
# A port name is part of a DNS label ({id}-{port}.domain): lowercase, digits, '-'.
PORT_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,28}[a-z0-9])?")
TAG_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:/-]{0,62}[A-Za-z0-9])?")
SERVICE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_TAGS = 32
MAX_TAG_VALUE = 256
MAX_ENV = 256
MAX_PORTS = 16
STOP_TIMEOUT = 10.0


class BodyErrors(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class ContainerRequest:
    spec: ContainerSpec
    ports: tuple[PortSpec, ...]
    tags: tuple[tuple[str, str], ...]
    group: str | None
    lifecycle: Lifecycle


def _object(errors: list[str], path: str, v: Any, allowed: tuple[str, ...] | None) -> dict:
    if not isinstance(v, dict):
        errors.append(f"{path}: must be an object")
        return {}
    if allowed is not None:
        for k in v:
            if k not in allowed:
                errors.append(f"{_join(path, k)}: unknown field (allowed: {', '.join(allowed)})")
    return v


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def parse_body(body: bytes, drivers: DriversConfig) -> ContainerRequest:
    """The request, or ``BodyErrors`` with every problem found."""
    try:
        doc = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError) as e:
        raise BodyErrors([f"the body is not JSON: {e}"]) from None
    errors: list[str] = []
    if doc is None:
        raise BodyErrors(["the body must be a JSON object with image or command"])
    doc = _object(errors, "", doc, FIELDS) if isinstance(doc, dict) else None
    if doc is None:
        raise BodyErrors(["the body must be a JSON object"])

    image, given = _image_and_command(errors, doc)
    command = given or ()
    if "image" not in doc and "command" not in doc:
        errors.append("image: one of image (a docker image) or command (a process) is required")
    driver = "docker" if image is not None else "process"
    if image is not None and drivers.docker is None:
        errors.append("image: this Guard has no docker driver (drivers.docker in guard.yaml)")
    elif image is None and command and drivers.process is None:
        errors.append("command: this Guard has no process driver (drivers.process in guard.yaml)")

    env = _env(errors, doc["env"]) if "env" in doc else []

    resources = Resources()
    if "resources" in doc:
        raw_res = _object(errors, "resources", doc["resources"], ("cpu", "memory"))
        cpu = memory = None
        if "cpu" in raw_res:
            try:
                cpu = units.parse_cpu(raw_res["cpu"])
            except ValueError as e:
                errors.append(f"resources.cpu: {e}")
        if "memory" in raw_res:
            try:
                memory = units.parse_size(raw_res["memory"])
                if memory < 4 * 1024 * 1024:
                    errors.append("resources.memory: must be at least 4MiB")
            except ValueError as e:
                errors.append(f"resources.memory: {e}")
        resources = Resources(cpu=cpu, memory=memory)

    ports: list[PortSpec] = []
    if "ports" in doc:
        raw_ports = _object(errors, "ports", doc["ports"], None)
        if len(raw_ports) > MAX_PORTS:
            errors.append(f"ports: at most {MAX_PORTS} ports")
        for name, raw_port in raw_ports.items():
            path = f"ports.{name}"
            if not PORT_NAME.fullmatch(name):
                errors.append(f"{path}: a port name is 1-30 lowercase letters, digits or '-'")
                continue
            p = _object(errors, path, raw_port, ("protocol", "internal_port"))
            protocol = p.get("protocol", "http")
            if protocol not in PROTOCOLS:
                errors.append(f"{path}.protocol: must be one of {', '.join(PROTOCOLS)}")
                continue
            internal = p.get("internal_port")
            if internal is None:
                errors.append(f"{path}.internal_port: required (the port the app listens on)")
                continue
            try:
                port = units.parse_port(internal)
            except ValueError as e:
                errors.append(f"{path}.internal_port: {e}")
                continue
            ports.append(PortSpec(name, protocol, port))

    tags: list[tuple[str, str]] = []
    if "tags" in doc:
        raw_tags = _object(errors, "tags", doc["tags"], None)
        if len(raw_tags) > MAX_TAGS:
            errors.append(f"tags: at most {MAX_TAGS} tags")
        for k, v in raw_tags.items():
            if not TAG_KEY.fullmatch(k):
                errors.append(f"tags.{k}: a tag name is letters, digits and _ . : / -")
            elif not isinstance(v, str) or len(v) > MAX_TAG_VALUE:
                errors.append(f"tags.{k}: must be a string of at most {MAX_TAG_VALUE} characters")
            else:
                tags.append((k, v))

    group = doc.get("service")
    if group is not None and (not isinstance(group, str) or not SERVICE_NAME.fullmatch(group)):
        errors.append("service: must be a name of letters, digits and _ . -")
        group = None

    lifecycle = Lifecycle()
    if "lifecycle" in doc:
        raw_life = _object(errors, "lifecycle", doc["lifecycle"], ("sleep_after", "destroy_after"))
        values: dict[str, float | None] = {}
        for key in ("sleep_after", "destroy_after"):
            if key in raw_life:
                try:
                    values[key] = units.parse_duration(raw_life[key])
                    if values[key] == 0:
                        errors.append(f"lifecycle.{key}: must be more than 0s")
                except ValueError as e:
                    errors.append(f"lifecycle.{key}: {e}")
        lifecycle = Lifecycle(values.get("sleep_after"), values.get("destroy_after"))

    if errors:
        raise BodyErrors(errors)
    # The instance's main port (the one probed for readiness, $PORT) is the first http
    # port, else the first tcp one: both can be probed; the others are its extra ports.
    ports.sort(key=lambda p: PROTOCOLS.index(p.protocol))
    spec = ContainerSpec(
        driver=driver,
        image=image,
        command=command,
        env=tuple(env),
        port=ports[0].internal_port if ports else None,
        resources=resources,
        stop_timeout=STOP_TIMEOUT,
        extra_ports=tuple((p.name, p.internal_port) for p in ports[1:]),
    )
    return ContainerRequest(spec, tuple(ports), tuple(sorted(tags)), group, lifecycle)


UPGRADE_FIELDS = ("image", "command", "env", "strategy")


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    image: str | None
    command: tuple[str, ...] | None  # None: keep
    env: tuple[tuple[str, str], ...] | None  # None: keep
    rolling: bool
    max_unavailable: int
    selector: tuple[tuple[str, str], ...]  # bulk upgrades: tags every container must have

    def apply(self, spec: ContainerSpec) -> ContainerSpec:
        return replace(
            spec,
            image=self.image if self.image is not None else spec.image,
            command=self.command if self.command is not None else spec.command,
            env=self.env if self.env is not None else spec.env,
        )


def parse_upgrade(body: bytes, *, bulk: bool) -> UpgradeRequest:
    """``{image?, command?, env?, strategy?}`` (and ``selector`` for a bulk upgrade).
    ``strategy``: ``"immediate"``, ``"rolling"`` or ``{"rolling": {"max_unavailable": N}}``
    (the default: rolling, one at a time)."""
    try:
        doc = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError) as e:
        raise BodyErrors([f"the body is not JSON: {e}"]) from None
    if not isinstance(doc, dict):
        raise BodyErrors(["the body must be a JSON object"])
    errors: list[str] = []
    allowed = (*UPGRADE_FIELDS, "selector") if bulk else UPGRADE_FIELDS
    _object(errors, "", doc, allowed)
    if not any(k in doc for k in ("image", "command", "env")):
        errors.append("image: give what changes: image, command or env")
    image, command = _image_and_command(errors, doc)
    env = None
    if "env" in doc:
        env = tuple(_env(errors, doc["env"]))
    rolling, max_unavailable = True, 1
    strategy = doc.get("strategy", "rolling")
    if strategy == "immediate":
        rolling = False
    elif isinstance(strategy, dict):
        inner = _object(errors, "strategy", strategy, ("rolling",))
        roll = _object(errors, "strategy.rolling", inner.get("rolling", {}), ("max_unavailable",))
        n = roll.get("max_unavailable", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            errors.append("strategy.rolling.max_unavailable: must be a whole number from 1")
        else:
            max_unavailable = n
    elif strategy != "rolling":
        errors.append('strategy: must be "immediate", "rolling" or {"rolling": {...}}')
    selector: list[tuple[str, str]] = []
    if bulk:
        raw_sel = _object(errors, "selector", doc.get("selector"), None)
        if not raw_sel:
            errors.append("selector: the tags (at least one) of the containers to upgrade")
        for k, v in raw_sel.items():
            if not isinstance(v, str):
                errors.append(f"selector.{k}: must be a string")
            else:
                selector.append((k, v))
    if errors:
        raise BodyErrors(errors)
    return UpgradeRequest(image, command, env, rolling, max_unavailable, tuple(sorted(selector)))


def _image_and_command(
    errors: list[str], doc: dict[str, Any]
) -> tuple[str | None, tuple[str, ...] | None]:
    """``image`` (None if absent or bad) and ``command`` (None if absent or bad)."""
    image = doc.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        errors.append("image: must be a non-empty string")
        image = None
    command: tuple[str, ...] | None = None
    if "command" in doc:
        raw = doc["command"]
        if not isinstance(raw, list) or not raw or not all(isinstance(a, str) for a in raw):
            errors.append("command: must be a non-empty list of strings")
        else:
            command = tuple(raw)
    return image, command


def _env(errors: list[str], raw: Any) -> list[tuple[str, str]]:
    env: list[tuple[str, str]] = []
    raw_env = _object(errors, "env", raw, None)
    if len(raw_env) > MAX_ENV:
        errors.append(f"env: at most {MAX_ENV} variables")
    for k, v in raw_env.items():
        if not ENV_NAME.fullmatch(k):
            errors.append(f"env.{k}: must be an environment variable name")
        elif not isinstance(v, str):
            errors.append(f"env.{k}: must be a string")
        elif "\0" in v:
            errors.append(f"env.{k}: must not contain NUL")
        else:
            env.append((k, v))
    return env
