"""Workers -> supervisor: each worker streams its snapshot over a Unix socket once a second.

A stream socket (not datagrams) so a snapshot of any size arrives whole: frames are a
4-byte big-endian length and the JSON of ``snapshot.encode``. The supervisor passes the
socket path in ``GUARD_METRICS_SOCKET``.

Each worker keeps one connection for its whole life, and its counters are cumulative since
it started, so the hub keeps only each worker's latest frame. When the connection ends
the worker is gone (or can no longer report): its counters are folded into the hub's
retired total, its gauges dropped, and any later frame from that pid is ignored, so a sum
never counts a process twice and never goes backwards while the supervisor lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from guard.metrics.snapshot import Frame, Snapshot, decode, encode, merge, without_gauges

log = logging.getLogger("guard.metrics")

ENV = "GUARD_METRICS_SOCKET"
INTERVAL = 1.0
MAX_FRAME = 64 * 1024 * 1024  # far beyond any real snapshot; a bound against garbage


def frame_bytes(frame: Frame) -> bytes:
    payload = encode(frame)
    return len(payload).to_bytes(4, "big") + payload


class SnapshotHub:
    """Supervisor side: the latest frame of every live worker plus the retired total."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.live: dict[int, Frame] = {}  # pid -> latest frame
        self.retired: Snapshot = {}
        self._gone: set[int] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def snapshot(self) -> Snapshot:
        return merge([self.retired, *(f.snapshot for f in self.live.values())])

    def accept(self, frame: Frame) -> None:
        if frame.pid in self._gone:
            log.warning("metrics: ignoring a snapshot from retired worker pid %d", frame.pid)
            return
        self.live[frame.pid] = frame

    def retire(self, pid: int) -> None:
        self._gone.add(pid)
        frame = self.live.pop(pid, None)
        if frame is not None:
            self.retired = merge([self.retired, without_gauges(frame.snapshot)])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pid: int | None = None
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(4), "big")
                if size > MAX_FRAME:
                    raise ValueError(f"frame of {size} bytes")
                frame = decode(await reader.readexactly(size))
                if pid is not None and frame.pid != pid:
                    raise ValueError(f"pid changed from {pid} to {frame.pid}")
                pid = frame.pid
                self.accept(frame)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker exited (or closed after its final frame)
        except ValueError as e:
            log.warning("metrics: dropping a worker's snapshot stream: %s", e)
        finally:
            if pid is not None:
                self.retire(pid)
            writer.close()


class SnapshotSender:
    """Worker side: connect, then send ``source()`` every ``interval`` until closed."""

    def __init__(
        self, path: str, worker_id: int, source: Callable[[], Snapshot], interval: float = INTERVAL
    ) -> None:
        self.path = path
        self.worker_id = worker_id
        self.source = source
        self.interval = interval
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _frame(self) -> bytes:
        return frame_bytes(Frame(os.getpid(), self.worker_id, self.source()))

    async def _run(self) -> None:
        try:
            _, self._writer = await asyncio.open_unix_connection(self.path)
            while True:
                self._writer.write(self._frame())
                await self._writer.drain()
                await asyncio.sleep(self.interval)
        except OSError as e:
            # Not retried: the hub counts one connection as one process (see above).
            log.error(
                "metrics: cannot report to the supervisor (%s): this worker's "
                "counters are missing from /metrics",
                e,
            )

    async def close(self, timeout: float = 1.0) -> None:
        """Send a last snapshot (what was counted while draining), then disconnect."""
        task, writer = self._task, self._writer
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if writer is None or writer.is_closing():
            return
        with contextlib.suppress(OSError, TimeoutError):
            writer.write(self._frame())
            await asyncio.wait_for(writer.drain(), timeout)
        writer.close()
