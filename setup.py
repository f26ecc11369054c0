"""The one thing pyproject.toml cannot say: an optional compiled build of the hot path.

``GUARD_COMPILE=1 pip install .`` compiles the modules in ``guard/buildinfo.py``'s
HOT_PATH with mypyc (needs a C compiler and the Python headers; mypy is fetched as a build
requirement by ``_build/guard_build.py``). Same source, less CPU per proxied request (see
benchmarks/RESULTS.md). Without the variable Guard installs as pure Python. Not meant for
editable installs: the compiled modules would shadow the sources being edited.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def hot_path(buildinfo: Path = HERE / "guard" / "buildinfo.py") -> list[str]:
    """HOT_PATH from guard/buildinfo.py, read without importing Guard (or its deps)."""
    tree = ast.parse(buildinfo.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "HOT_PATH":
            return [name.replace(".", "/") + ".py" for name in ast.literal_eval(node.value)]
    raise RuntimeError("guard/buildinfo.py has no HOT_PATH")


def ext_modules() -> list:  # type: ignore[type-arg]
    if os.environ.get("GUARD_COMPILE", "").lower() not in ("1", "true", "yes"):
        return []
    from mypyc.build import mypycify  # (a clear ImportError if mypy is missing)

    # (An isolated build has none of Guard's dependencies, nor their type stubs: their
    # values are Any to mypyc, which only changes how calls into them are made.)
    return mypycify(["--ignore-missing-imports", *hot_path()], opt_level="3")


setup(ext_modules=ext_modules())
