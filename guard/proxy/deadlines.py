"""One coarse timer per worker instead of a timer handle per request.

Connections store a deadline (a float on the loop's clock) and the sweeper checks them all
a few times a second, the way HAProxy's scheduler does. Setting or clearing a timeout on
the hot path is then one attribute assignment, and an idle connection owns no timer.
"""

from __future__ import annotations

import asyncio
import math
from typing import Final, Protocol

NEVER: Final = math.inf


class HasDeadline(Protocol):
    deadline: float

    def on_deadline(self) -> None: ...


class OnTick(Protocol):
    def on_tick(self) -> bool:
        """Called once per sweep; True when the member wants no more ticks."""


class DeadlineSweeper:
    __slots__ = ("_handle", "_loop", "_members", "_tickers", "now", "tick")

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float) -> None:
        self._loop = loop
        self.tick = tick
        self._members: set[HasDeadline] = set()
        # Members that do housekeeping once per tick while they have some to do (frame-mode
        # WebSockets shedding parser state once quiet): empty, this costs nothing.
        self._tickers: set[OnTick] = set()
        self._handle: asyncio.TimerHandle | None = None
        # A clock good to one tick, so the hot path never asks the OS for the time.
        self.now = loop.time()

    def add(self, member: HasDeadline) -> None:
        self._members.add(member)

    def discard(self, member: HasDeadline) -> None:
        self._members.discard(member)

    def add_ticker(self, member: OnTick) -> None:
        self._tickers.add(member)

    def discard_ticker(self, member: object) -> None:
        """Forget a ticker (anything: a no-op for what never was one)."""
        self._tickers.discard(member)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._members)

    def start(self) -> None:
        if self._handle is None:
            self._handle = self._loop.call_later(self.tick, self._sweep)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _sweep(self) -> None:
        now = self.now = self._loop.time()
        expired = [m for m in self._members if m.deadline <= now]
        for member in expired:
            member.deadline = NEVER
            member.on_deadline()
        if self._tickers:
            done = [m for m in self._tickers if m.on_tick()]
            self._tickers.difference_update(done)
        self._handle = self._loop.call_later(self.tick, self._sweep)


def tick_for(timeouts: list[float]) -> float:
    """A tick fine enough for the shortest configured timeout (a tenth of it), 10ms-500ms."""
    shortest = min((t for t in timeouts if t > 0), default=5.0)
    return min(0.5, max(0.01, shortest / 10))
