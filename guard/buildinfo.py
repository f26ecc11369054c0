"""Which build of Guard is running: pure Python, or its hot path compiled with mypyc.

``GUARD_COMPILE=1 pip install .`` compiles the modules in ``HOT_PATH`` (setup.py reads the
list from here, without importing Guard): the same source, run as C extension modules.
Everything else, and every module when not compiled, is plain Python.
"""

from __future__ import annotations

import importlib

# The modules every proxied HTTP request runs through, typed throughout (mypy-clean).
HOT_PATH = (
    "guard.http.plain",
    "guard.http.forwarding",
    "guard.http.codec",
    "guard.http.codec_httptools",
    "guard.routing.table",
    "guard.balancing.backend",
    "guard.balancing.balancers",
    "guard.proxy.context",
    "guard.proxy.deadlines",
    "guard.proxy.http_proxy",
    "guard.proxy.writes",
    "guard.upstream.pool",
    "guard.upstream.service",
)


def compiled_modules() -> list[str]:
    """The modules of HOT_PATH this process runs compiled."""
    compiled = []
    for name in HOT_PATH:
        path = importlib.import_module(name).__file__ or ""
        if not path.endswith(".py"):
            compiled.append(name)
    return compiled


def describe() -> str:
    """One line for ``guard --version``, the log at start and benchmark reports."""
    n = len(compiled_modules())
    if not n:
        return "pure Python"
    return f"compiled with mypyc: {n} of {len(HOT_PATH)} hot-path modules"
