"""The build Guard runs as: pure Python, or its hot path compiled with mypyc (setup.py).

CI runs the whole suite twice, once per build; ``GUARD_EXPECT_COMPILED`` says which one a
run must be testing, so a compiled run can never quietly test the sources instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import guard.buildinfo
from guard.buildinfo import HOT_PATH, compiled_modules, describe

REPO = Path(__file__).resolve().parent.parent


def test_the_build_is_the_one_expected() -> None:
    compiled = compiled_modules()
    expected = os.environ.get("GUARD_EXPECT_COMPILED")
    if expected == "1":
        assert compiled == list(HOT_PATH), describe()
    elif expected == "0":
        assert compiled == [], describe()
    else:
        assert compiled in ([], list(HOT_PATH)), f"a partly compiled build: {compiled}"


def test_setup_compiles_the_hot_path_modules() -> None:
    # Only setup.py's hot_path(): running the module would call setup(). Read from the
    # package being tested (CI's compiled run has no sources beside the tests).
    namespace: dict[str, object] = {"__file__": str(REPO / "setup.py")}
    source = (REPO / "setup.py").read_text().split("\ndef ext_modules")[0]
    exec(compile(source, "setup.py", "exec"), namespace)
    package = Path(guard.buildinfo.__file__).parent
    files = namespace["hot_path"](package / "buildinfo.py")  # type: ignore[operator]
    assert files == [name.replace(".", "/") + ".py" for name in HOT_PATH]
    for name in files:
        assert (package.parent / name).is_file(), name


def test_version_names_the_build() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "guard", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"guard 0.1.0 ({describe()})"
