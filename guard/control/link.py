"""The control link over a Unix socket, for ``workers > 1``: workers <-> the one control plane.

The supervisor runs the control plane and listens on a private socket (path in
``GUARD_CONTROL_SOCKET``); each worker keeps one connection for its life. Messages are the
frozen values of ``guard.control.messages`` (plus usage ``TrafficReport``s) as JSON lines:
small, self-delimiting, and readable in a packet capture. A worker says who it is first
(``hello``); a second connection with the same worker id (a restarted worker) replaces the
first, and a worker whose connection ends is forgotten, so a drain never waits on a
process that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from guard.control.messages import (
    ContainerRoute,
    ContainerUpdate,
    DataPlaneSink,
    Endpoint,
    LoadReport,
    ServiceEndpoints,
    ServiceHealth,
    WakeFailure,
)

if TYPE_CHECKING:
    from guard.control.metering import TrafficReport
    from guard.control.plane import ControlPlane

log = logging.getLogger("guard.control")

ENV = "GUARD_CONTROL_SOCKET"
MAX_LINE = 1024 * 1024  # an endpoint set of ~10,000 instances; a bound against garbage


# ------------------------------------------------------------------------- encoding


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def encode_endpoints(update: ServiceEndpoints) -> bytes:
    return _line(
        {
            "t": "endpoints",
            "service": update.service,
            "seq": update.seq,
            "ready": [
                [e.instance, e.host, e.port, e.key, [list(p) for p in e.ports]]
                for e in update.ready
            ],
        }
    )


def encode_failure(failure: WakeFailure) -> bytes:
    return _line(
        {
            "t": "fail",
            "service": failure.service,
            "key": failure.key,
            "code": failure.code,
            "message": failure.message,
        }
    )


def encode_report(report: LoadReport) -> bytes:
    return _line(
        {
            "t": "report",
            "worker": report.worker,
            "service": report.service,
            "seq": report.seq,
            "in_flight": report.in_flight,
            "served": report.served,
            "held": report.held,
            "held_keys": report.held_keys,
        }
    )


def decode_report(doc: dict[str, Any]) -> LoadReport:
    return LoadReport(
        worker=int(doc["worker"]),
        service=str(doc["service"]),
        seq=int(doc["seq"]),
        in_flight=tuple((str(i), int(n)) for i, n in doc["in_flight"]),
        served=tuple((str(i), int(n)) for i, n in doc["served"]),
        held=int(doc["held"]),
        held_keys=tuple(str(k) for k in doc["held_keys"]),
    )


def decode_endpoints(doc: dict[str, Any]) -> ServiceEndpoints:
    return ServiceEndpoints(
        service=str(doc["service"]),
        seq=int(doc["seq"]),
        ready=tuple(
            Endpoint(
                str(i),
                str(h),
                int(p),
                None if k is None else str(k),
                tuple((str(n), int(port)) for n, port in ports),
            )
            for i, h, p, k, ports in doc["ready"]
        ),
    )


def decode_failure(doc: dict[str, Any]) -> WakeFailure:
    key = doc["key"]
    return WakeFailure(
        str(doc["service"]),
        None if key is None else str(key),
        str(doc["code"]),
        str(doc["message"]),
    )


def encode_containers(update: ContainerUpdate) -> bytes:
    return _line(
        {
            "t": "containers",
            "reset": update.reset,
            "upsert": [
                [c.id, c.service, [list(p) for p in c.ports], c.wake_timeout, c.queue, c.accepting]
                for c in update.upsert
            ],
            "remove": list(update.remove),
        }
    )


def decode_containers(doc: dict[str, Any]) -> ContainerUpdate:
    return ContainerUpdate(
        reset=bool(doc["reset"]),
        upsert=tuple(
            ContainerRoute(
                str(i),
                str(s),
                tuple((str(n), str(proto), int(port)) for n, proto, port in ports),
                float(w),
                int(q),
                bool(a),
            )
            for i, s, ports, w, q, a in doc["upsert"]
        ),
        remove=tuple(str(i) for i in doc["remove"]),
    )


# ----------------------------------------------------------------- control-plane side


class _WorkerSink:
    """The plane's view of one connected worker."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def apply_endpoints(self, update: ServiceEndpoints) -> None:
        self._send(encode_endpoints(update))

    def wake_failed(self, failure: WakeFailure) -> None:
        self._send(encode_failure(failure))

    def apply_health(self, update: ServiceHealth) -> None:
        self._send(_line({"t": "health", "service": update.service, "down": update.down}))

    def apply_containers(self, update: ContainerUpdate) -> None:
        self._send(encode_containers(update))

    def _send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


class ControlServer:
    """Serves the control plane to worker processes."""

    def __init__(
        self,
        plane: ControlPlane,
        path: str,
        *,
        traffic: Callable[[TrafficReport], None] | None = None,
    ) -> None:
        self.plane = plane
        self.path = path
        self.traffic = traffic
        self._server: asyncio.AbstractServer | None = None
        self._sinks: dict[int, _WorkerSink] = {}

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_LINE)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for sink in self._sinks.values():
            sink.writer.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        worker: int | None = None
        sink = _WorkerSink(writer)
        try:
            hello = json.loads(await reader.readline())
            if hello.get("t") != "hello":
                raise ValueError("the first message must be hello")
            worker = int(hello["worker"])
            old = self._sinks.get(worker)
            if old is not None:
                old.writer.close()
            self._sinks[worker] = sink
            self.plane.attach(worker, sink)
            while line := await reader.readline():
                self._dispatch(json.loads(line))
        except (ValueError, KeyError, TypeError, OSError) as e:
            log.warning("control link: worker %s: %s", worker, e)
        finally:
            if worker is not None and self._sinks.get(worker) is sink:
                del self._sinks[worker]
                self.plane.detach(worker)
            writer.close()

    def _dispatch(self, doc: dict[str, Any]) -> None:
        kind = doc.get("t")
        if kind == "wake":
            key = doc["key"]
            self.plane.on_wake(
                str(doc["service"]), None if key is None else str(key), int(doc["demand"])
            )
        elif kind == "report":
            self.plane.on_report(decode_report(doc))
        elif kind == "traffic":
            if self.traffic is not None:
                from guard.control.metering import TrafficReport

                self.traffic(TrafficReport(**doc["report"]))
        else:
            raise ValueError(f"unknown message {kind!r}")


# ----------------------------------------------------------------------- worker side


class RemoteLink:
    """A worker's ``ControlLink`` to the supervisor's control plane."""

    def __init__(self, path: str, worker: int, sink: DataPlaneSink) -> None:
        self.path = path
        self.worker = worker
        self.sink = sink
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def connect(self) -> None:
        reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_LINE)
        self._writer = writer
        writer.write(_line({"t": "hello", "worker": self.worker}))
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
        self.connected.set()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                doc = json.loads(line)
                kind = doc.get("t")
                if kind == "endpoints":
                    self.sink.apply_endpoints(decode_endpoints(doc))
                elif kind == "fail":
                    self.sink.wake_failed(decode_failure(doc))
                elif kind == "health":
                    down = tuple(str(n) for n in doc["down"])
                    self.sink.apply_health(ServiceHealth(str(doc["service"]), down))
                elif kind == "containers":
                    self.sink.apply_containers(decode_containers(doc))
        except (ValueError, KeyError, TypeError, OSError) as e:
            log.error("control link to the supervisor broke: %s", e)
            return
        log.error("control link: the supervisor closed it")

    # ControlLink
    def wake(self, service: str, key: str | None, demand: int) -> None:
        self._send(_line({"t": "wake", "service": service, "key": key, "demand": demand}))

    def report(self, report: LoadReport) -> None:
        self._send(encode_report(report))

    def traffic(self, report: TrafficReport) -> None:
        fields = {
            "worker": report.worker,
            "route": report.route,
            "service": report.service,
            "start": report.start,
            "end": report.end,
            "requests": report.requests,
            "bytes_in": report.bytes_in,
            "bytes_out": report.bytes_out,
        }
        self._send(_line({"t": "traffic", "report": fields}))

    def _send(self, data: bytes) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(data)

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()
