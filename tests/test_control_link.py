"""The control link over a real Unix socket: a worker knows the plane's state before it
serves (the ``attached`` marker follows the state ``attach`` sends)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from guard.control.link import ControlServer, RemoteLink
from guard.control.messages import ContainerRoute, ContainerUpdate

ROUTE = ContainerRoute("c1", "ctr-c1", (("http", "http", 0),), 30.0, 1000, True)


class Plane:
    """What ControlServer uses of the control plane: attach sends the current state."""

    def __init__(self) -> None:
        self.attached: list[int] = []

    def attach(self, worker: int, sink: object) -> None:
        self.attached.append(worker)
        sink.apply_containers(ContainerUpdate(True, (ROUTE,)))  # type: ignore[attr-defined]

    def detach(self, worker: int) -> None:
        pass


class Sink:
    def __init__(self) -> None:
        self.updates: list[ContainerUpdate] = []

    def apply_containers(self, update: ContainerUpdate) -> None:
        self.updates.append(update)


def test_a_worker_has_the_state_when_attached_is_set(tmp_path: Path) -> None:
    async def main() -> None:
        plane = Plane()
        server = ControlServer(plane, str(tmp_path / "control.sock"))  # type: ignore[arg-type]
        await server.start()
        sink = Sink()
        link = RemoteLink(str(tmp_path / "control.sock"), 3, sink)  # type: ignore[arg-type]
        try:
            await link.connect()
            await asyncio.wait_for(link.attached.wait(), 5)
            assert plane.attached == [3]
            assert sink.updates == [ContainerUpdate(True, (ROUTE,))]
        finally:
            server.close()

    asyncio.run(main())
