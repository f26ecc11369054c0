"""Route files reloaded when they change, not only on SIGHUP.

A poll of ``stat()`` on the route file (or every ``*.yaml``/``*.yml`` in the route
directory) once a second: no inotify dependency, works on every filesystem including bind
mounts and ConfigMap symlink swaps, and costs a handful of syscalls. A change is acted on
once the files have stayed the same for one more poll (editors and ``kubectl`` write in
several steps), then the same reload as SIGHUP runs: validated first, the last good table
kept on error.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("guard.watch")

POLL = 1.0

Signature = tuple[tuple[str, int, int, int], ...]  # (name, mtime_ns, size, inode)


def signature(path: Path) -> Signature:
    """What the route files look like now; changes whenever any of them does."""
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        else:
            files = [path]
        out = []
        for f in files:
            st = os.stat(f)  # follows symlinks: a ConfigMap's ..data swap shows up
            out.append((f.name, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)
    except OSError:
        return ()  # missing while being replaced: the next poll sees the result


class RouteWatcher:
    def __init__(self, path: Path, reload: Callable[[], None], interval: float = POLL) -> None:
        self.path = path
        self.reload = reload
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        seen = signature(self.path)
        pending: Signature | None = None
        while True:
            await asyncio.sleep(self.interval)
            now = signature(self.path)
            if pending is not None and now == pending:
                pending = None
                seen = now
                log.info("route files changed: reloading")
                try:
                    self.reload()
                except Exception:
                    log.exception("route reload failed")
            elif now != seen:
                pending = now  # changed: act once it holds still for one more poll
            else:
                pending = None
