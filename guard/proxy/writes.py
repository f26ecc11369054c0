"""Coalesce the writes one read causes into one send per socket.

A small proxied response arrives as one read holding head, body and end; written as it is
parsed that is three ``send`` calls and often three packets. While a ``data_received``
callback runs, writes are queued per transport and flushed when the outermost callback
returns: one syscall per socket per event-loop callback, and no added latency.
"""

from __future__ import annotations

import asyncio
from typing import Final


class BufferedWriter:
    """Mixin for protocols: ``_out`` queues while corked, writes through otherwise."""

    __slots__ = ()

    transport: asyncio.Transport | None
    _wbuf: list[bytes]

    def _out(self, data: bytes) -> None:
        if CORK.depth:
            buf = self._wbuf
            if not buf:
                CORK.dirty.append(self)
            buf.append(data)
        elif self.transport is not None:
            self.transport.write(data)

    def flush_writes(self) -> None:
        buf = self._wbuf
        if not buf:
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if len(buf) == 1:
                transport.write(buf[0])
            else:
                transport.writelines(buf)
        buf.clear()


class Cork:
    __slots__ = ("depth", "dirty")

    def __init__(self) -> None:
        self.depth = 0
        self.dirty: list[BufferedWriter] = []

    def release(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.dirty:
            self.flush()

    def flush(self) -> None:
        """Write out every queued buffer (the hot paths inline ``release`` around this)."""
        dirty = self.dirty
        while dirty:
            dirty.pop().flush_writes()


# One event loop per process, so one cork per process.
CORK: Final = Cork()
