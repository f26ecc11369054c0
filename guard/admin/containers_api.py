"""``/v1/containers``: containers as API objects, each with its own address.

- ``POST /v1/containers`` (``?wait_ready=true&timeout=30s``) — create and start; 201 with
  the container, its state and per http port the address clients use:
  ``http://{id}-{port}.{containers.domain}[:listener port]`` on ``containers.listener``.
- ``GET /v1/containers`` (``?tag=k:v`` (repeatable, all must match; ``tag=k``: has the
  tag), ``state=``, ``service=``, ``limit=``, ``cursor=``) — paginated, oldest first.
- ``GET /v1/containers/{id}``; ``DELETE /v1/containers/{id}`` (``?timeout=``: how long
  in-flight requests may take to finish before it is stopped).
- ``POST /v1/containers/{id}/stop`` (``?timeout=``) and ``/start`` (``?wait_ready=``):
  a stopped container is asleep, and a request to its address wakes it too.

A tenant's token sees and changes only its own containers: another tenant's id is 404
``container_not_found``, as for an id that never existed. Creating past a tenant's quota
(``tenants:`` in guard.yaml) is 429 ``quota_exceeded`` naming the limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from guard.admin.answers import Answer, error_answer, json_answer
from guard.admin.auth import Caller
from guard.admin.container_body import BodyErrors, UpgradeRequest, parse_body, parse_upgrade
from guard.admin.quota import exceeded, missing_limit, of_resources
from guard.config import units
from guard.config.model import GuardConfig, ReadyProbe, Resources
from guard.control.containers import (
    WAKE_TIMEOUT,
    ContainerRecord,
    PortSpec,
    StartFailed,
    new_id,
    state_of,
)
from guard.control.state import Phase
from guard.drivers.base import DriverError

if TYPE_CHECKING:
    from guard.admin.tenants_api import TenantsApi
    from guard.control.plane import ControlPlane

STATES = ("running", "starting", "stopping", "stopped")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TIMEOUT = 600.0
MAX_TAIL = 100_000
DEFAULT_FOLLOW_TAIL = 100  # a follow starts with this many lines unless ?tail= says
_LIST_PARAMS = frozenset({"tag", "state", "service", "limit", "cursor"})


class _Refused(Exception):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer


def _bad(message: str) -> _Refused:
    return _Refused(error_answer(400, "invalid_request", message))


def _params(query: str, allowed: frozenset[str]) -> list[tuple[str, str]]:
    pairs = parse_qsl(query, keep_blank_values=True)
    for k, _ in pairs:
        if k not in allowed:
            shown = ", ".join(sorted(allowed)) or "none"
            raise _bad(f"unknown query parameter {k!r} (allowed: {shown})")
    return pairs


def _one(pairs: list[tuple[str, str]], key: str) -> str | None:
    values = [v for k, v in pairs if k == key]
    if len(values) > 1:
        raise _bad(f"{key}: given more than once")
    return values[0] if values else None


def _flag(pairs: list[tuple[str, str]], key: str) -> bool:
    v = _one(pairs, key)
    if v is None:
        return False
    if v.lower() in ("true", "1", "yes", ""):
        return True
    if v.lower() in ("false", "0", "no"):
        return False
    raise _bad(f"{key}: must be true or false")


def _timeout(pairs: list[tuple[str, str]], default: float | None) -> float | None:
    v = _one(pairs, "timeout")
    if v is None:
        return default
    try:
        t = units.parse_duration(v)
    except ValueError as e:
        raise _bad(f"timeout: {e}") from None
    if t > MAX_TIMEOUT:
        raise _bad(f"timeout: at most {MAX_TIMEOUT:g}s")
    return t


class ContainersApi:
    def __init__(
        self,
        config: GuardConfig,
        plane: Callable[[], ControlPlane | None],
        tenants: TenantsApi,
    ) -> None:
        self.config = config
        self.plane = plane
        self.tenants = tenants
        self._upgrading: set[str] = set()  # container ids with an upgrade under way
        listener = config.listeners.get(config.containers.listener or "")
        self._scheme = "https" if listener is not None and listener.protocol == "https" else "http"
        default_port = 443 if self._scheme == "https" else 80
        host = listener.host if listener is not None else "127.0.0.1"
        self._host = f"[{host}]" if ":" in host else host
        self._port_suffix = (
            f":{listener.port}" if listener is not None and listener.port != default_port else ""
        )

    async def handle(
        self, caller: Caller, method: str, rest: list[str], req_query: str, body: bytes
    ) -> Answer:
        try:
            plane = self.plane()
            if self.config.containers.listener is None or plane is None:
                return error_answer(
                    409,
                    "containers_not_configured",
                    "containers are served once guard.yaml sets containers.listener (the http"
                    " listener their addresses are on)",
                )
            return await self._route(plane, caller, method, rest, req_query, body)
        except _Refused as r:
            return r.answer

    async def _route(
        self,
        plane: ControlPlane,
        caller: Caller,
        method: str,
        rest: list[str],
        query: str,
        body: bytes,
    ) -> Answer:
        if not rest:
            if method in ("GET", "HEAD"):
                return self._list(plane, caller, query)
            if method == "POST":
                return await self._create(plane, caller, query, body)
            return _not_allowed("/v1/containers", "GET, HEAD, POST")
        if rest == ["upgrade"]:
            if method != "POST":
                return _not_allowed("/v1/containers/upgrade", "POST")
            return await self._upgrade_many(plane, caller, query, body)
        record = self._find(plane, caller, rest[0])
        if len(rest) == 1:
            if method in ("GET", "HEAD"):
                _params(query, frozenset())
                return json_answer(200, self.view(plane, record))
            if method == "DELETE":
                timeout = _timeout(_params(query, frozenset({"timeout"})), None)
                await plane.containers.delete(record, timeout)
                return json_answer(200, {"id": record.id, "state": "deleted"})
            return _not_allowed(f"/v1/containers/{record.id}", "GET, HEAD, DELETE")
        action = rest[1]
        if len(rest) == 2 and action == "upgrade":
            if method != "POST":
                return _not_allowed(f"/v1/containers/{record.id}/upgrade", "POST")
            return await self._upgrade_one(plane, record, query, body)
        if len(rest) == 2 and action == "logs":
            if method not in ("GET", "HEAD"):
                return _not_allowed(f"/v1/containers/{record.id}/logs", "GET, HEAD")
            return await self._logs(plane, record, query)
        if len(rest) == 2 and action in ("start", "stop"):
            if method != "POST":
                return _not_allowed(f"/v1/containers/{record.id}/{action}", "POST")
            if action == "stop":
                timeout = _timeout(_params(query, frozenset({"timeout"})), None)
                await plane.containers.stop(record, timeout)
                return json_answer(200, self.view(plane, record))
            pairs = _params(query, frozenset({"wait_ready", "timeout"}))
            wait, timeout = _flag(pairs, "wait_ready"), _timeout(pairs, WAKE_TIMEOUT)
            plane.containers.start(record)
            return await self._maybe_wait(plane, record, wait, timeout, 200)
        return error_answer(404, "not_found", f"no admin endpoint /v1/containers/{'/'.join(rest)}")

    def _find(self, plane: ControlPlane, caller: Caller, container_id: str) -> ContainerRecord:
        record = plane.containers.get(container_id)
        if record is None or record.deleting or not (caller.all or record.tenant == caller.tenant):
            raise _Refused(
                error_answer(404, "container_not_found", f"no container {container_id!r}")
            )
        return record

    # ------------------------------------------------------------------ create
    async def _create(self, plane: ControlPlane, caller: Caller, query: str, body: bytes) -> Answer:
        pairs = _params(query, frozenset({"wait_ready", "timeout"}))
        wait, timeout = _flag(pairs, "wait_ready"), _timeout(pairs, WAKE_TIMEOUT)
        try:
            request = parse_body(body, self.config.drivers)
        except BodyErrors as e:
            return error_answer(
                400, "invalid_request", f"the container is not valid: {e}", errors=e.errors
            )
        spec = request.spec
        ports = request.ports  # the main port first (container_body)
        l4 = [p for p in ports if p.protocol != "http"]
        if not ports or ports[0].protocol == "udp":
            # Nothing to probe, or udp, which has no reply every app gives: ready once it
            # runs (a moment to bind).
            spec = replace(spec, ready=ReadyProbe(delay=0.1 if ports else 0.05))
        streams = tuple(p.name for p in ports[1:] if p.protocol != "udp")
        if streams:
            spec = replace(spec, ready=replace(spec.ready, ports=streams))
        if l4 and self.config.containers.tcp_ports is None:
            return error_answer(
                409,
                "containers_not_configured",
                f"ports.{l4[0].name}: {l4[0].protocol} ports need containers.tcp_ports in"
                " guard.yaml (the range their listeners are given ports from)",
            )
        async with self.tenants.quota_lock:  # the quota check and the create, together
            self._check_quota(plane, caller, spec.resources.cpu, spec.resources.memory)
            given: dict[str, int] = {}
            for p in l4:
                public = plane.containers.allocate_port(p.protocol, set(given.values()))
                if public is None:
                    return error_answer(
                        503, "ports_exhausted", "every port of containers.tcp_ports is taken"
                    )
                given[p.name] = public
            ports = tuple(
                replace(p, public_port=given[p.name]) if p.name in given else p for p in ports
            )
            record = ContainerRecord(
                id=new_id(),
                tenant=caller.tenant,
                spec=spec,
                ports=ports,
                tags=request.tags,
                group=request.group,
                lifecycle=request.lifecycle,
                created_at=time.time(),
            )
            try:
                await plane.containers.create(record)
            except DriverError as e:
                return error_answer(503, "driver_unavailable", f"cannot create containers: {e}")
        return await self._maybe_wait(
            plane, record, wait, timeout, 201, ("location", f"/v1/containers/{record.id}")
        )

    async def _maybe_wait(
        self,
        plane: ControlPlane,
        record: ContainerRecord,
        wait: bool,
        timeout: float | None,
        status: int,
        *extra: tuple[str, str],
    ) -> Answer:
        if wait:
            try:
                await plane.containers.wait_ready(record, timeout or WAKE_TIMEOUT)
            except StartFailed as e:
                code_status = 504 if e.code == "wake_timeout" else 503
                if e.code == "container_not_found":
                    code_status = 404
                return error_answer(
                    code_status,
                    e.code,
                    f"container {record.id} is not ready: {e}",
                    *extra,
                    container=self.view(plane, record),
                )
        return json_answer(status, self.view(plane, record), *extra)

    def _check_quota(
        self, plane: ControlPlane, caller: Caller, cpu: float | None, memory: int | None
    ) -> None:
        if caller.all:
            return
        quota = self.config.tenants.get(caller.tenant)
        if quota is None:
            return
        asked = Resources(cpu=cpu, memory=memory)
        missing = missing_limit(quota, asked, "resources")
        if missing is not None:
            raise _bad(missing)
        before = self.tenants.reserved(caller.tenant)
        problem = exceeded(quota, before, before + of_resources(asked))
        if problem is not None:
            raise _Refused(
                error_answer(
                    429, "quota_exceeded", f"tenant {caller.tenant}: quota exceeded: {problem}"
                )
            )

    # ------------------------------------------------------------------ list
    def _list(self, plane: ControlPlane, caller: Caller, query: str) -> Answer:
        pairs = _params(query, _LIST_PARAMS)
        tags: list[tuple[str, str | None]] = []
        for k, v in pairs:
            if k == "tag":
                key, sep, value = v.partition(":")
                if not key:
                    raise _bad("tag: must be KEY:VALUE or KEY")
                tags.append((key, value if sep else None))
        state = _one(pairs, "state")
        if state is not None and state not in STATES:
            raise _bad(f"state: must be one of {', '.join(STATES)}")
        group = _one(pairs, "service")
        raw_limit = _one(pairs, "limit")
        limit = DEFAULT_LIMIT
        if raw_limit is not None:
            if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
                raise _bad(f"limit: must be a whole number from 1 to {MAX_LIMIT}")
            limit = int(raw_limit)
        cursor = _one(pairs, "cursor")
        records = [
            r
            for r in plane.containers.records()
            if not r.deleting and (caller.all or r.tenant == caller.tenant)
        ]
        if cursor:
            index = next((i for i, r in enumerate(records) if r.id == cursor), None)
            if index is None:
                raise _bad("cursor: not a container of this listing (use the next value given)")
            records = records[index + 1 :]
        page: list[dict[str, Any]] = []
        more = False
        for r in records:
            if group is not None and r.group != group:
                continue
            if tags:
                have = dict(r.tags)
                if not all(k in have and (v is None or have[k] == v) for k, v in tags):
                    continue
            if state is not None and state_of(plane.containers.instances(r)) != state:
                continue
            if len(page) == limit:
                more = True
                break
            page.append(self.view(plane, r))
        next_cursor = page[-1]["id"] if more and page else None
        return json_answer(200, {"containers": page, "next": next_cursor})

    # ------------------------------------------------------------------ upgrades
    def _upgrade_request(
        self, query: str, body: bytes, *, bulk: bool
    ) -> tuple[UpgradeRequest, float]:
        timeout = _timeout(_params(query, frozenset({"timeout"})), WAKE_TIMEOUT)
        try:
            return parse_upgrade(body, bulk=bulk), timeout or WAKE_TIMEOUT
        except BodyErrors as e:
            raise _Refused(
                error_answer(
                    400, "invalid_request", f"the upgrade is not valid: {e}", errors=e.errors
                )
            ) from None

    @staticmethod
    def _driver_change(record: ContainerRecord, req: UpgradeRequest) -> str | None:
        if req.image is not None and record.spec.driver != "docker":
            return (
                f"image: container {record.id} runs a command on the process driver; an image"
                " needs a new container"
            )
        return None

    async def _upgrade(
        self, plane: ControlPlane, record: ContainerRecord, req: UpgradeRequest, timeout: float
    ) -> ContainerRecord:
        self._upgrading.add(record.id)
        try:
            return await plane.containers.upgrade(
                record, req.apply(record.spec), rolling=req.rolling, timeout=timeout
            )
        finally:
            self._upgrading.discard(record.id)

    def _busy(self, record: ContainerRecord) -> Answer:
        return error_answer(
            409, "upgrade_in_progress", f"container {record.id} is being upgraded already"
        )

    async def _upgrade_one(
        self, plane: ControlPlane, record: ContainerRecord, query: str, body: bytes
    ) -> Answer:
        req, timeout = self._upgrade_request(query, body, bulk=False)
        problem = self._driver_change(record, req)
        if problem is not None:
            raise _bad(problem)
        if record.id in self._upgrading:
            return self._busy(record)
        try:
            record = await self._upgrade(plane, record, req, timeout)
        except StartFailed as e:
            current = plane.containers.get(record.id) or record
            return error_answer(
                504 if e.code == "wake_timeout" else 503,
                e.code,
                f"container {record.id}: the upgrade's new instance is not ready: {e}",
                container=self.view(plane, current),
            )
        return json_answer(200, self.view(plane, record))

    async def _upgrade_many(
        self, plane: ControlPlane, caller: Caller, query: str, body: bytes
    ) -> Answer:
        req, timeout = self._upgrade_request(query, body, bulk=True)
        chosen = [
            r
            for r in plane.containers.records()
            if not r.deleting
            and (caller.all or r.tenant == caller.tenant)
            and all(t in r.tags for t in req.selector)
        ]
        problems = [p for r in chosen if (p := self._driver_change(r, req)) is not None]
        if problems:
            raise _Refused(
                error_answer(
                    400, "invalid_request", "some containers cannot take it", errors=problems
                )
            )
        busy = [r for r in chosen if r.id in self._upgrading]
        if busy:
            return self._busy(busy[0])
        # Immediate: all at once. Rolling: max_unavailable at a time, and none started
        # after a failure (what failed keeps its old instance serving).
        gate = asyncio.Semaphore(len(chosen) if not req.rolling else req.max_unavailable)
        upgraded: list[str] = []
        failed: list[dict[str, str]] = []
        skipped: list[str] = []

        async def one(record: ContainerRecord) -> None:
            async with gate:
                if failed and req.rolling:
                    skipped.append(record.id)
                    return
                try:
                    await self._upgrade(plane, record, req, timeout)
                except StartFailed as e:
                    failed.append({"id": record.id, "error": e.code, "message": str(e)})
                else:
                    upgraded.append(record.id)

        await asyncio.gather(*(one(r) for r in chosen))
        order = {r.id: i for i, r in enumerate(chosen)}
        doc = {
            "upgraded": sorted(upgraded, key=order.__getitem__),
            "failed": sorted(failed, key=lambda f: order[f["id"]]),
            "skipped": sorted(skipped, key=order.__getitem__),
        }
        if failed:
            return error_answer(
                503, "upgrade_failed", f"{len(failed)} of {len(chosen)} upgrades failed", **doc
            )
        return json_answer(200, doc)

    async def _logs(self, plane: ControlPlane, record: ContainerRecord, query: str) -> Answer:
        pairs = _params(query, frozenset({"tail", "follow"}))
        raw_tail = _one(pairs, "tail")
        tail: int | None = None
        if raw_tail is not None:
            if not raw_tail.isdigit() or int(raw_tail) > MAX_TAIL:
                raise _bad(f"tail: must be a whole number of lines from 0 to {MAX_TAIL}")
            tail = int(raw_tail)
        kind = "text/plain; charset=utf-8"
        if _flag(pairs, "follow"):
            first = DEFAULT_FOLLOW_TAIL if tail is None else tail
            stream = plane.containers.follow_logs(record, first)
            return Answer(200, b"", kind, stream=stream)
        try:
            out = await plane.containers.logs(record, tail)
        except DriverError as e:
            return error_answer(503, "driver_unavailable", f"cannot read the logs: {e}")
        return Answer(200, out, kind)

    # ------------------------------------------------------------------ views
    def address(self, record: ContainerRecord, port: PortSpec) -> str:
        if port.public_port is not None:
            return f"{port.protocol}://{self._host}:{port.public_port}"
        domain = self.config.containers.domain
        return f"{self._scheme}://{record.id}-{port.name}.{domain}{self._port_suffix}"

    def view(self, plane: ControlPlane, record: ContainerRecord) -> dict[str, Any]:
        spec = record.spec
        instances = sorted(plane.containers.instances(record), key=lambda i: i.created_at)
        live = [i for i in instances if i.phase is not Phase.STOPPED]
        current = live[-1] if live else None
        failure = plane.containers.last_failure(record.id)
        doc: dict[str, Any] = {
            "id": record.id,
            "tenant": record.tenant,
            "state": "deleting" if record.deleting else state_of(instances),
            "driver": spec.driver,
            "image": spec.image,
            "command": list(spec.command),
            "env": dict(spec.env),
            "resources": asdict(spec.resources),
            "ports": {
                p.name: {
                    "protocol": p.protocol,
                    "internal_port": p.internal_port,
                    "address": self.address(record, p),
                }
                for p in record.ports
            },
            "tags": dict(record.tags),
            "service": record.group,
            "lifecycle": asdict(record.lifecycle),
            "created_at": record.created_at,
            "instance": None
            if current is None
            else {
                "id": current.id,
                "state": current.phase.value,
                "started_at": current.started_wall,
                "stop_reason": current.stop_reason,
            },
            "last_error": None if failure is None else failure.message,
        }
        return doc


def _not_allowed(path: str, allow: str) -> Answer:
    return error_answer(
        405, "method_not_allowed", f"{path} takes {allow.replace(', ', ' or ')}", ("allow", allow)
    )
