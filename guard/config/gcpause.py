"""Pause the cyclic garbage collector while a reload builds its objects.

A route load allocates about a dozen containers per route (parsed dicts, values, model
objects, table entries), ~120,000 for 10,000 routes, none of them in a reference cycle.
Left on, the collector ran ~190 times during that burst (2 of them full collections),
re-scanning the same young objects: ~60 ms of a ~290 ms first load measured here. Paused,
the new objects are scanned once by the first collection after it (~5 ms).

Reloads run in threads (``asyncio.to_thread``) and may overlap, so pauses nest: the
collector comes back when the last one ends, and only if it was on when the first began.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
