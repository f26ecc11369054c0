"""API containers on disk, so a restarted Guard still has them.

The records (what was asked for, never instance state) are one JSON document,
``<routes dir>/.admin-containers.json``: next to the admin API's route files, which are
its other persistent state, as a dot-file neither the route loader nor the watcher reads.
Written whole after every change (create, upgrade, delete), atomically: a temp file,
fsync, rename, fsync of the directory. A restarted Guard loads them asleep: the first
request to a container (or ``POST .../start``) starts it again, on a port of its own as
before for tcp/udp.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from guard.admin.routes_api import write_atomic
from guard.config.model import ContainerSpec, ReadyProbe, Resources
from guard.control.containers import ContainerRecord, Lifecycle, PortSpec

log = logging.getLogger("guard.control")

FILE_NAME = ".admin-containers.json"
VERSION = 1


def _spec(doc: dict[str, Any]) -> ContainerSpec:
    ready = doc["ready"]
    udp = ready.get("udp")
    return ContainerSpec(
        driver=doc["driver"],
        image=doc["image"],
        command=tuple(doc["command"]),
        env=tuple((k, v) for k, v in doc["env"]),
        port=doc["port"],
        resources=Resources(**doc["resources"]),
        ready=ReadyProbe(
            http=ready.get("http"),
            tcp=bool(ready.get("tcp")),
            udp=udp.encode("latin-1") if udp is not None else None,
            delay=ready.get("delay"),
            ports=tuple(str(n) for n in ready.get("ports", ())),
        ),
        stop_timeout=float(doc["stop_timeout"]),
        extra_ports=tuple((str(n), int(p)) for n, p in doc.get("extra_ports", ())),
    )


def encode(record: ContainerRecord) -> dict[str, Any]:
    spec = asdict(record.spec)
    udp = record.spec.ready.udp
    spec["ready"]["udp"] = udp.decode("latin-1") if udp is not None else None
    return {
        "id": record.id,
        "tenant": record.tenant,
        "spec": spec,
        "ports": [asdict(p) for p in record.ports],
        "tags": [list(t) for t in record.tags],
        "group": record.group,
        "lifecycle": asdict(record.lifecycle),
        "created_at": record.created_at,
    }


def decode(doc: dict[str, Any]) -> ContainerRecord:
    return ContainerRecord(
        id=str(doc["id"]),
        tenant=str(doc["tenant"]),
        spec=_spec(doc["spec"]),
        ports=tuple(PortSpec(**p) for p in doc["ports"]),
        tags=tuple((str(k), str(v)) for k, v in doc["tags"]),
        group=doc["group"],
        lifecycle=Lifecycle(**doc["lifecycle"]),
        created_at=float(doc["created_at"]),
    )


class ContainerStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_routes(cls, routes_path: Path) -> ContainerStore | None:
        """The store of a Guard whose ``routes:`` is a directory (else none: not kept)."""
        return cls(routes_path / FILE_NAME) if routes_path.is_dir() else None

    def load(self) -> list[ContainerRecord]:
        """The records kept; a file that cannot be read is logged and set aside, never
        thrown away (``.broken`` next to it) and never stops Guard."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as e:
            log.error("cannot read %s: %s; API containers start empty", self.path, e)
            return []
        try:
            doc = json.loads(raw)
            if doc.get("version") != VERSION:
                raise ValueError(f"unknown version {doc.get('version')!r}")
            return [decode(c) for c in doc["containers"]]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            aside = self.path.with_name(self.path.name + ".broken")
            log.error(
                "%s is not valid (%s): moved to %s; API containers start empty", self.path, e, aside
            )
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return []

    def save(self, records: list[ContainerRecord]) -> None:
        """Blocking: call it off the event loop."""
        doc = {"version": VERSION, "containers": [encode(r) for r in records]}
        write_atomic(self.path, json.dumps(doc, indent=1).encode())
