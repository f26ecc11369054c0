"""Guard's PEP 517 build backend: setuptools, plus mypy when GUARD_COMPILE=1.

A compiled build (setup.py) needs mypyc at build time, and only then: pip builds in an
isolated environment, so the requirement is declared here rather than always downloaded
through ``[build-system] requires``.
"""

from __future__ import annotations

import os

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 (every other hook is setuptools')

MYPY = "mypy~=2.4.1"  # (CI type-checks with the same version)


def compiling() -> bool:
    return os.environ.get("GUARD_COMPILE", "").lower() in ("1", "true", "yes")


def _extra() -> list[str]:
    return [MYPY] if compiling() else []


def get_requires_for_build_wheel(config_settings=None):  # type: ignore[no-untyped-def]
    if compiling():
        # (setuptools' own hook would run setup.py, which imports mypyc: not there yet)
        return _extra()
    return _setuptools.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings=None):  # type: ignore[no-untyped-def]
    if compiling():
        return _extra()
    return _setuptools.get_requires_for_build_editable(config_settings)
