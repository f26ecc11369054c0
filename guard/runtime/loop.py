"""Event loop choice: uvloop where available (it is a dependency), asyncio otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (as nginx's worker_rlimit_nofile): every
    connection is a descriptor, two when proxied, and distributions default the soft
    limit to 1,024, which a proxy reaches long before max_connections."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(main: Coroutine[Any, Any, T]) -> T:
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency on Linux
        return asyncio.run(main)
    return uvloop.run(main)
