"""Child processes for the tcp/udp listener tests: Guard with a tmp config, demo backends.

Every process is started in its own process group and killed by ``stop()``; the tests
call it in ``finally`` (through fixtures), whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A child process whose combined output is collected by a thread."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_line(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        with self._cond:
            while True:
                for line in self.lines:
                    m = regex.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(
                        f"no line matching {pattern!r} (exit {self.proc.poll()}):\n"
                        + "".join(self.lines)
                    )
                self._cond.wait(min(left, 0.1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(2)


def start_demo(mode: str) -> tuple[Child, int]:
    """``python -m guard.demo tcp|udp`` on a free port; returns (child, port)."""
    child = Child(["-m", "guard.demo", mode, "--port", "0"])
    try:
        m = child.wait_line(rf"guard.demo {mode} listening on [\d.]+:(\d+)")
    except BaseException:
        child.stop()
        raise
    return child, int(m.group(1))


def start_guard(tmp: Path, guard_yaml: str, routes_yaml: str) -> Child:
    (tmp / "routes").mkdir(exist_ok=True)
    (tmp / "guard.yaml").write_text(guard_yaml)
    (tmp / "routes" / "routes.yaml").write_text(routes_yaml)
    child = Child(["-m", "guard", "run", "--config", str(tmp / "guard.yaml")])
    try:
        child.wait_line(r"guard: serving")
    except BaseException:
        child.stop()
        raise
    return child
