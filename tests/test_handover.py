"""guard.runtime.handover.start_successor with stand-in successors (real child processes):
ready, exits early, never ready, and the old Guard stopping while one starts."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from l4_procs import free_port

from guard.config import load_config
from guard.runtime import handover
from guard.runtime.handover import PidFile, read_pid, start_successor
from guard.runtime.sockets import ListenSockets, open_sockets

# A successor that checks the socket it was given, then reports ready (or not) and waits.
CHILD = """
import json, os, socket, sys, time
entries = json.loads(os.environ["GUARD_LISTEN_FDS"])
port = socket.socket(fileno=entries[0]["fd"]).getsockname()[1]
ok = port == entries[0]["port"] and os.environ["GUARD_PREVIOUS_PID"] == str(os.getppid())
if sys.argv[1] == "ready" and ok:
    from guard.runtime.handover import notify_ready
    notify_ready(["web-i-2", "web-i-1"])  # what it adopted, then "ready"
if sys.argv[1] == "ready-split" and ok:  # the same, a byte at a time
    fd = int(os.environ["GUARD_READY_FD"])
    for byte in b"adopted x-1\\nready\\n":
        os.write(fd, bytes([byte]))
        time.sleep(0.01)
if sys.argv[1] == "exit":
    sys.exit(3)
time.sleep(30)
"""


@pytest.fixture
def sockets(tmp_path: Path) -> Iterator[ListenSockets]:
    doc = {"listeners": {"web": {"protocol": "http", "address": f"127.0.0.1:{free_port()}"}}}
    (tmp_path / "guard.yaml").write_text(json.dumps(doc))
    bound, _ = open_sockets(
        load_config(tmp_path / "guard.yaml"), slots=1, reuse_port=False, inherited=[]
    )
    yield bound
    bound.close()


def successor(monkeypatch: pytest.MonkeyPatch, behaviour: str) -> None:
    cmd = [sys.executable, "-c", CHILD, behaviour]
    monkeypatch.setattr(handover, "successor_command", lambda: cmd)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.parametrize(
    ("behaviour", "adopted"), [("ready", {"web-i-1", "web-i-2"}), ("ready-split", {"x-1"})]
)
def test_ready_successor(
    monkeypatch: pytest.MonkeyPatch, sockets: ListenSockets, behaviour: str, adopted: set[str]
) -> None:
    successor(monkeypatch, behaviour)
    ready = asyncio.run(start_successor(sockets, timeout=10))
    assert ready is not None and ready.adopted == adopted
    os.kill(ready.pid, 9)
    os.waitpid(ready.pid, 0)


def test_successor_exiting_early(
    monkeypatch: pytest.MonkeyPatch, sockets: ListenSockets, caplog: pytest.LogCaptureFixture
) -> None:
    successor(monkeypatch, "exit")
    with caplog.at_level(logging.INFO, "guard.handover"):
        assert asyncio.run(start_successor(sockets, timeout=10)) is None
    assert "exited with status 3 before it was ready" in caplog.text
    assert f"pid {os.getpid()} keeps serving" in caplog.text


def test_successor_never_ready_is_killed(
    monkeypatch: pytest.MonkeyPatch, sockets: ListenSockets, caplog: pytest.LogCaptureFixture
) -> None:
    successor(monkeypatch, "hang")
    start = time.monotonic()
    with caplog.at_level(logging.INFO, "guard.handover"):
        assert asyncio.run(start_successor(sockets, timeout=1)) is None
    assert time.monotonic() - start < 8
    assert "not ready after 1s; killed" in caplog.text


def test_stopping_while_a_successor_starts_stops_it(
    monkeypatch: pytest.MonkeyPatch, sockets: ListenSockets
) -> None:
    successor(monkeypatch, "hang")
    started: list[int] = []
    real_popen = handover.subprocess.Popen

    def popen(*args: object, **kw: object) -> object:
        proc = real_popen(*args, **kw)  # type: ignore[call-overload]
        started.append(proc.pid)
        return proc

    monkeypatch.setattr(handover.subprocess, "Popen", popen)

    async def main() -> None:
        task = asyncio.create_task(start_successor(sockets, timeout=30))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    (pid,) = started
    deadline = time.monotonic() + 5
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid)
    os.waitpid(pid, 0)


def test_pid_file_names_its_writer_only(tmp_path: Path) -> None:
    path = tmp_path / "guard.pid"
    pid_file = PidFile(path)
    pid_file.write()
    assert read_pid(path) == os.getpid()
    path.write_text("1\n")  # a successor wrote its own since
    pid_file.remove()
    assert path.exists()
    path.write_text(f"{os.getpid()}\n")
    pid_file.remove()
    assert not path.exists()
    with pytest.raises(ValueError, match="cannot read pid file"):
        read_pid(path)
    path.write_text("garbage")
    with pytest.raises(ValueError, match="no pid in it"):
        read_pid(path)
