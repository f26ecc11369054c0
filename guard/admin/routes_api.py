"""``PUT`` / ``DELETE`` of ``/v1/routes/{name}`` and ``/v1/services/{name}``.

A write changes one admin route file (``guard.admin.tenancy``): the object's own file when
it exists, else the caller's. Each write, one at a time:

1. ownership: a tenant changes only objects of its own file (anything else is 404, as on
   GET); a ``*`` caller any admin file's, never a hand-written file's (405 with
   ``Allow: GET, HEAD``: edit the file);
2. the candidate file is checked by the real loader: the route directory is mirrored into
   a dot-directory inside it (symlinks, so the loader's parse cache still hits) with the
   candidate in place of the admin file, and ``load_routes`` runs on that, so a bad body
   gets exactly the ``file: key: message`` lines a bad file would;
3. tenant rules the loader does not know: a tenant's route may only use the tenant's own
   services, and may not take a host (or SNI name) that a route of another file serves;
   a tenant with a quota may not grow what it reserves past it (``guard.admin.quota``:
   each container service reserves ``scale.max`` containers; 429 ``quota_exceeded``);
4. the file is replaced atomically (temp file, fsync, rename, fsync of the directory);
5. the same reload as SIGHUP runs, and the answer waits for it: 200 with the object as now
   served, or 409 with the reasons (and the previous file back) if the reload refused.

The route watcher sees the new file a second or two later and reloads once more: the same
files, so nothing changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from guard.admin.answers import Answer, error_answer, json_answer
from guard.admin.auth import ALL, Caller
from guard.admin.quota import exceeded, missing_limit, of_services
from guard.admin.state_api import StateApi, route_view
from guard.admin.tenancy import admin_file, owner_of, owner_of_name
from guard.admin.tenants_api import TenantsApi
from guard.config import load_routes
from guard.config.model import GuardConfig, RoutesConfig
from guard.errors import ConfigError, ConfigErrors

log = logging.getLogger("guard.admin")

STAGING = ".admin-staging"  # a dot-directory: neither the loader nor the watcher reads it
_HEADER = (
    "# Written by Guard's admin API (PUT/DELETE /v1/routes, /v1/services). Edits by hand are\n"
    "# kept, comments are not: the API rewrites the whole file.\n"
)


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a synchronous reload did: the routes now served, or why nothing changed."""

    routes: RoutesConfig | None
    errors: tuple[str, ...] = ()

    @classmethod
    def rejected(cls, *errors: str) -> ReloadOutcome:
        return cls(None, errors)


ReloadNow = Callable[[], Awaitable[ReloadOutcome]]


class _Refused(Exception):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer


class RouteWriter:
    def __init__(
        self, config: GuardConfig, state: StateApi, reload_now: ReloadNow, tenants: TenantsApi
    ) -> None:
        self.config = config
        self.state = state
        self.tenants = tenants
        self.reload_now = reload_now
        self.dir = config.routes_path
        # Error lines name files as the operator knows them: routes/_admin.yaml.
        self.shown = self.dir.name or str(self.dir)
        self._lock = asyncio.Lock()  # one write at a time: each reads what the last wrote

    # ------------------------------------------------------------------ entry points
    async def put(self, caller: Caller, kind: str, name: str, body: bytes) -> Answer:
        try:
            entry = _parse_body(kind, name, body)
        except _Refused as r:
            return r.answer
        return await self._locked(caller, kind, name, entry)

    async def delete(self, caller: Caller, kind: str, name: str) -> Answer:
        return await self._locked(caller, kind, name, None)

    async def _locked(
        self, caller: Caller, kind: str, name: str, entry: dict[str, Any] | None
    ) -> Answer:
        try:
            async with self._lock, self.tenants.quota_lock:
                return await self._change(caller, kind, name, entry)
        except _Refused as r:
            return r.answer
        except OSError as e:
            # A read-only or full route directory: say so (without its path, which is
            # the operator's business) rather than a bare 500.
            log.error("admin API: writing %s/%s failed: %s", kind, name, e)
            return error_answer(
                500, "routes_write_failed", f"the route directory cannot be written: {e.strerror}"
            )

    # ------------------------------------------------------------------ the write
    async def _change(
        self, caller: Caller, kind: str, name: str, entry: dict[str, Any] | None
    ) -> Answer:
        if not self.dir.is_dir():
            raise _Refused(
                error_answer(
                    409,
                    "routes_not_a_directory",
                    f"routes: in guard.yaml is the file {self.dir.name}, not a directory; the"
                    " admin API writes its own file next to the others, so it needs a directory",
                )
            )
        target = self._target(caller, kind, name)
        path = self.dir / target
        before = await asyncio.to_thread(_read_bytes, path)
        doc = self._document(target, before)
        if not _apply(doc, kind, name, entry):
            # Deleting what the file does not hold (a stale listing, a hand edit).
            raise _Refused(_not_found(kind, name))
        text = _render(doc)
        owner = owner_of_name(target) or ALL
        lines = self._tenant_rules(owner, target, doc)
        if not lines:
            lines, candidate = await asyncio.to_thread(self._validate, target, text)
            if not lines and candidate is not None:
                self._check_quota(owner, target, kind, name, candidate)
        if lines:
            raise _Refused(
                error_answer(
                    400,
                    "invalid_config",
                    f"the change to {self.shown}/{target} does not validate; nothing changed",
                    errors=self._redact(caller, target, lines),
                )
            )
        await asyncio.to_thread(write_atomic, path, text)
        outcome = await self.reload_now()
        if outcome.routes is None:
            await asyncio.to_thread(_restore, path, before)
            errors = list(outcome.errors)
            if not caller.all:
                # Lines naming files are about everyone's files: a tenant gets the gist.
                errors = [e for e in errors if os.sep not in e] or [
                    "the reload refused the route files (details in Guard's log)"
                ]
            return error_answer(
                409,
                "reload_rejected",
                "the change validated but the reload refused it; the file is as before",
                errors=errors,
            )
        return self._result(kind, name, entry is None, outcome.routes)

    def _target(self, caller: Caller, kind: str, name: str) -> str:
        """The admin file this write goes to, after the ownership checks."""
        routes = self.state.routes()
        if kind == "routes":
            source = next((r.source for r in routes.routes if r.name == name), None)
            exists = any(r.name == name for r in routes.routes)
        else:
            svc = routes.services.get(name)
            source, exists = (svc.source if svc else None), svc is not None
        if exists:
            owner = owner_of(source)
            if not caller.all and owner != caller.tenant:
                raise _Refused(_not_found(kind, name))  # another's: as if it did not exist
            if owner is None or source is None or source.parent != self.dir:
                # Read-only through the API: 405, and Allow says what it does take.
                shown = f"{self.shown}/{source.name}" if source is not None else "a route file"
                raise _Refused(
                    error_answer(
                        405,
                        "method_not_allowed",
                        f"{_singular(kind)} {name!r} is defined in {shown}, a file the admin"
                        " API does not write: change it there",
                        ("allow", "GET, HEAD"),
                    )
                )
            return source.name
        # New, or (deleting) not served but perhaps still in the caller's own file: the
        # file decides.
        return admin_file(caller.tenant)

    def _document(self, target: str, raw: bytes | None) -> dict[str, Any]:
        if raw is None:
            return {}
        try:
            doc = yaml.safe_load(raw.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as e:
            raise _Refused(
                error_answer(
                    409,
                    "admin_file_invalid",
                    f"{self.shown}/{target} cannot be read ({e}); fix or remove it first",
                )
            ) from None
        if doc is None:
            return {}
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("routes"), list | None)
            or not isinstance(doc.get("services"), dict | None)
        ):
            raise _Refused(
                error_answer(
                    409,
                    "admin_file_invalid",
                    f"{self.shown}/{target} is not a route file (routes: [...], services: {{}});"
                    " fix or remove it first",
                )
            )
        return doc

    def _tenant_rules(self, owner: str, target: str, doc: dict[str, Any]) -> list[str]:
        """Rules for tenants' files the loader does not know; empty when all hold."""
        if owner == ALL:
            return []
        where = f"{self.shown}/{target}"
        own = set((doc.get("services") or {}).keys())
        lines = []
        # Hosts and SNI names that routes of other files serve, per listener.
        taken: set[tuple[str, str, str]] = set()
        for r in self.state.routes().routes:
            if r.source is not None and r.source.name == target:
                continue
            for key in ("host", "sni"):
                value = getattr(r.match, key)
                if value is not None:
                    taken.add((r.listener, key, value.lower()))
        for i, route in enumerate(doc.get("routes") or []):
            if not isinstance(route, dict):
                continue  # the loader says what is wrong with it
            service = route.get("service")
            if isinstance(service, str) and service not in own:
                lines.append(
                    f"{where}: routes[{i}].service: tenant {owner} has no service {service!r}"
                    " (a tenant's routes use the tenant's own services)"
                )
            match = route.get("match")
            listener = route.get("listener")
            if not isinstance(match, dict) or not isinstance(listener, str):
                continue
            for key in ("host", "sni"):
                value = match.get(key)
                if isinstance(value, str) and (listener, key, value.lower()) in taken:
                    lines.append(
                        f"{where}: routes[{i}].match.{key}: {value!r} is already routed on"
                        f" listener {listener!r} by another owner"
                    )
        return lines

    def _check_quota(
        self, owner: str, target: str, kind: str, name: str, candidate: RoutesConfig
    ) -> None:
        """A tenant's container services reserve ``scale.max`` containers each
        (``guard.admin.quota``): refuse a change that grows the reservation past the
        tenant's quota (429), or a container service without the limits it needs (400)."""
        quota = self.config.tenants.get(owner)
        if owner == ALL or quota is None:
            return
        own = [s for s in candidate.services.values() if s.source and s.source.name == target]
        if kind == "services":
            svc = candidate.services.get(name)
            if svc is not None and svc.container is not None:
                where = f"{self.shown}/{target}: services.{name}.container.resources"
                missing = missing_limit(quota, svc.container.resources, where)
                if missing is not None:
                    raise _Refused(
                        error_answer(
                            400,
                            "invalid_config",
                            f"the change to {self.shown}/{target} does not validate;"
                            " nothing changed",
                            errors=[missing],
                        )
                    )
        before = self.tenants.reserved(owner)
        problem = exceeded(quota, before, self.tenants.api_reserved(owner) + of_services(own))
        if problem is not None:
            raise _Refused(
                error_answer(
                    429,
                    "quota_exceeded",
                    f"tenant {owner}: quota exceeded: {problem} (each container service"
                    " reserves scale.max containers)",
                )
            )

    def _validate(self, target: str, text: str | None) -> tuple[list[str], RoutesConfig | None]:
        """Blocking: the loader over the route directory with ``text`` as ``target``:
        its error lines, or none and what it loaded."""
        staging = self.dir / STAGING
        staging.mkdir(exist_ok=True)
        for old in staging.iterdir():
            old.unlink()
        for p in self.dir.iterdir():
            # The loader's own choice of files (guard.config.loader._route_files).
            if p.suffix not in (".yaml", ".yml") or p.name.startswith(".") or not p.is_file():
                continue
            if p.name != target:
                (staging / p.name).symlink_to(p)
        if text is not None:
            (staging / target).write_text(text, encoding="utf-8")
        try:
            loaded = load_routes(staging, self.config.listeners, self.config.drivers)
        except ConfigErrors as e:
            return [self._line(err, staging) for err in e.errors], None
        finally:
            # No copy of a candidate stays behind. (The loader's parse cache is keyed by
            # what the symlinks point at, so the next validation still hits it.)
            shutil.rmtree(staging, ignore_errors=True)
        return [], loaded

    def _line(self, err: ConfigError, staging: Path) -> str:
        prefix = os.path.normpath(str(staging)) + os.sep
        return str(err).replace(prefix, f"{self.shown}/")

    def _redact(self, caller: Caller, target: str, lines: list[str]) -> list[str]:
        """A tenant sees its own file's lines; of other files only that there are some."""
        if caller.all:
            return lines
        mine = f"{self.shown}/{target}: "
        own = [
            _ALSO.sub("also defined in another route file", s) for s in lines if s.startswith(mine)
        ]
        others = len(lines) - len(own)
        if others:
            own.append(
                f"{others} problem(s) in route files of other owners (the change would"
                " break them, or they are already broken: ask the operator)"
            )
        return own

    def _result(self, kind: str, name: str, deleted: bool, routes: RoutesConfig) -> Answer:
        if deleted:
            return json_answer(200, {"deleted": _singular(kind), "name": name})
        if kind == "routes":
            route = next((r for r in routes.routes if r.name == name), None)
            if route is not None:
                return json_answer(200, route_view(route))
        else:
            svc = routes.services.get(name)
            if svc is not None:
                return json_answer(200, self.state.service_view(svc))
        # Reloaded, but not from our file: someone changed the files meanwhile.
        return error_answer(
            409, "conflict", f"{_singular(kind)} {name!r} was changed on disk meanwhile; GET it"
        )


_ALSO = re.compile(r"also defined in \S+(?: routes\[\d+\])?")


def _singular(kind: str) -> str:
    return "route" if kind == "routes" else "service"


def _not_found(kind: str, name: str) -> Answer:
    return error_answer(404, f"{_singular(kind)}_not_found", f"no {_singular(kind)} {name!r}")


def _parse_body(kind: str, name: str, body: bytes) -> dict[str, Any]:
    try:
        entry = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise _Refused(error_answer(400, "invalid_json", f"the body is not JSON: {e}")) from None
    if not isinstance(entry, dict):
        raise _Refused(
            error_answer(400, "invalid_json", f"the body must be a JSON object: one {kind[:-1]}")
        )
    # GET answers carry these read-only fields: accept them back so GET, edit, PUT works.
    entry.pop("source", None)
    entry.pop("owner", None)
    if kind == "routes":
        given = entry.get("name", name)
        if given != name:
            raise _Refused(
                error_answer(
                    400,
                    "invalid_config",
                    "the route's name must be the one in the path, or absent",
                    errors=[f"name: must be {name!r} (the name in the path) or absent"],
                )
            )
        entry = {"name": name, **{k: v for k, v in entry.items() if k != "name"}}
    elif entry.get("name", name) != name:
        raise _Refused(
            error_answer(
                400,
                "invalid_config",
                "the service's name is the one in the path",
                errors=[f"name: must be {name!r} (the name in the path) or absent"],
            )
        )
    else:
        entry.pop("name", None)
    return entry


def _apply(doc: dict[str, Any], kind: str, name: str, entry: dict[str, Any] | None) -> bool:
    """Put ``entry`` (None: remove) into the file's document; False if there was nothing
    to remove."""
    if kind == "routes":
        routes: list[Any] = doc.get("routes") or []
        at = next(
            (i for i, r in enumerate(routes) if isinstance(r, dict) and r.get("name") == name),
            None,
        )
        if entry is None:
            if at is None:
                return False
            del routes[at]
        elif at is None:
            routes.append(entry)
        else:
            routes[at] = entry  # keeps its place: order breaks ties between routes
        doc["routes"] = routes
    else:
        services: dict[str, Any] = doc.get("services") or {}
        if entry is None:
            if name not in services:
                return False
            del services[name]
        else:
            services[name] = entry
        doc["services"] = services
    return True


def _render(doc: dict[str, Any]) -> str | None:
    """The file's text; None when it holds nothing any more (the file is removed)."""
    out = {k: v for k, v in doc.items() if v}
    if not out:
        return None
    return _HEADER + yaml.safe_dump(out, sort_keys=False, allow_unicode=True)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str | bytes | None) -> None:
    """Replace ``path`` with ``text`` (None: remove it) so readers see old or new, whole."""
    if text is None:
        path.unlink(missing_ok=True)
    else:
        data = text.encode("utf-8") if isinstance(text, str) else text
        # A dot-name with a non-yaml suffix: neither the loader nor the watcher reads it.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    _fsync_dir(path.parent)


def _restore(path: Path, before: bytes | None) -> None:
    write_atomic(path, before)
