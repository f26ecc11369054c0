"""The process driver with real child processes, under both asyncio and uvloop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from guard.config.model import ContainerSpec
from guard.drivers import DriverError, InstanceHandle, InstanceNotFound, InstanceStatus
from guard.drivers.process import ProcessDriver, group_usage, parse_proc_stat

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

REPO = Path(__file__).resolve().parent.parent
Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Guard runs on uvloop (guard.runtime.loop); the driver must work on both loops."""
    return asyncio.run if request.param == "asyncio" else uvloop.run


def spec(*command: str, env: dict[str, str] | None = None, stop: float = 5.0) -> ContainerSpec:
    return ContainerSpec(
        driver="process",
        command=command,
        env=tuple((env or {}).items()),
        stop_timeout=stop,
    )


def py(code: str) -> tuple[str, ...]:
    return (sys.executable, "-u", "-c", textwrap.dedent(code))


def alive(pid: int) -> bool:
    """Running and not a zombie (a killed child whose reaper has not run yet is dead)."""
    try:
        return parse_proc_stat(Path(f"/proc/{pid}/stat").read_text()).state != "Z"
    except FileNotFoundError:
        return False


async def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def http_get(handle: InstanceHandle, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(handle.host, handle.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def wait_http(handle: InstanceHandle, timeout: float) -> float:
    start = time.monotonic()
    while True:
        try:
            status, _ = await http_get(handle, "/healthz")
            if status == 200:
                return time.monotonic() - start
        except (OSError, IndexError, ValueError):
            pass
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{handle.address} did not answer /healthz within {timeout}s")
        await asyncio.sleep(0.02)


def log_text(handle: InstanceHandle) -> str:
    assert handle.log_path is not None
    return handle.log_path.read_text(errors="replace")


async def logged_pid(handle: InstanceHandle, prefix: str) -> int:
    """The pid the instance printed as ``prefix PID``: wait for the whole line, since an
    unbuffered print() writes its pieces in separate writes."""

    def line() -> str | None:
        return next(
            (
                ln
                for ln in log_text(handle).splitlines(keepends=True)
                if ln.startswith(prefix) and ln.endswith("\n")
            ),
            None,
        )

    await wait_until(lambda: line() is not None, 5, f"a {prefix!r} line")
    return int((line() or "").split()[1])


# ------------------------------------------------------------------------ lifecycle


def test_demo_http_through_the_driver(run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        driver = ProcessDriver(tmp_path)
        handle = await driver.create(
            spec(sys.executable, "-m", "guard.demo", "http"), instance_id="demo-1", env_extra={}
        )
        assert handle.pid is None and handle.host == "127.0.0.1" and handle.port > 0
        assert (await driver.inspect(handle)).status is InstanceStatus.CREATED
        handle = await driver.start(handle)
        assert handle.pid is not None and alive(handle.pid)
        assert (await driver.inspect(handle)).status is InstanceStatus.RUNNING
        await wait_http(handle, 5.0)

        for _ in range(5):  # some work to show up in the CPU counter
            status, body = await http_get(handle, "/bytes/2000000")
            assert status == 200 and len(body) == 2_000_000
        stats = await driver.stats(handle)
        assert stats.cpu_seconds > 0
        assert stats.memory_bytes > 1024 * 1024  # a Python interpreter: MiBs of RSS
        later = await driver.stats(handle)
        assert later.cpu_seconds >= stats.cpu_seconds and later.at > stats.at

        await driver.stop(handle, 5.0)
        state = await driver.inspect(handle)
        assert state.status is InstanceStatus.EXITED and state.stop_requested
        assert state.reason is not None and state.reason.endswith("after stop")
        assert not alive(handle.pid)
        with pytest.raises(DriverError):
            await driver.stats(handle)
        await driver.remove(handle)
        assert not (tmp_path / "demo-1").exists()
        with pytest.raises(InstanceNotFound):
            await driver.inspect(handle)

    run(main())


def test_environment_port_and_workdir(run: Runner, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GUARD_ADMIN_TOKEN", "secret")  # Guard's secrets stay in Guard
    code = """
        import json, os
        print(json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}))
    """

    async def main() -> None:
        driver = ProcessDriver(tmp_path)
        handle = await driver.create(
            spec(*py(code), env={"MODE": "demo", "PORT": "1"}),
            instance_id="env",
            env_extra={"GUARD_KEY": "k1"},
        )
        exited = asyncio.Event()
        driver.on_exit(lambda *_: exited.set())
        await driver.start(handle)
        await asyncio.wait_for(exited.wait(), 5)
        seen = json.loads(log_text(handle))
        assert seen["env"]["PORT"] == str(handle.port)  # Guard's pick wins over spec.env
        assert seen["env"]["MODE"] == "demo" and seen["env"]["GUARD_KEY"] == "k1"
        assert "GUARD_ADMIN_TOKEN" not in seen["env"]
        assert seen["env"].get("PATH") == os.environ.get("PATH")
        assert Path(seen["cwd"]) == tmp_path / "env" == handle.workdir

    run(main())


def test_on_exit_reports_exit_code_and_log_captures_output(run: Runner, tmp_path: Path) -> None:
    code = """
        import sys
        print("to stdout")
        print("to stderr", file=sys.stderr)
        sys.exit(3)
    """

    async def main() -> None:
        driver = ProcessDriver(tmp_path)
        events: list[tuple[InstanceHandle, int, str]] = []
        fired = asyncio.Event()

        def on_exit(handle: InstanceHandle, code: int, reason: str) -> None:
            events.append((handle, code, reason))
            fired.set()

        driver.on_exit(lambda *_: 1 / 0)  # a broken listener must not silence the others
        driver.on_exit(on_exit)
        handle = await driver.start(
            await driver.create(spec(*py(code)), instance_id="three", env_extra={})
        )
        await asyncio.wait_for(fired.wait(), 5)
        assert events == [(handle, 3, "exited with code 3")]
        state = await driver.inspect(handle)
        assert state.status is InstanceStatus.EXITED and state.exit_code == 3
        assert not state.stop_requested
        text = log_text(handle)
        assert "to stdout" in text and "to stderr" in text

        # An exited instance can be started again, same port and log (appended).
        fired.clear()
        await driver.start(handle)
        await asyncio.wait_for(fired.wait(), 5)
        assert len(events) == 2 and log_text(handle).count("to stdout") == 2

    run(main())


def test_killed_by_signal_reason(run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        driver = ProcessDriver(tmp_path)
        got: list[tuple[int, str]] = []
        driver.on_exit(lambda _h, code, reason: got.append((code, reason)))
        handle = await driver.start(
            await driver.create(
                spec(*py("import os; os.kill(os.getpid(), 9)")), instance_id="k", env_extra={}
            )
        )
        await wait_until(lambda: bool(got), 5, "on_exit")
        assert got == [(-9, "killed by signal 9 (SIGKILL)")]
        assert (await driver.inspect(handle)).exit_code == -9

    run(main())


def test_stop_kills_a_child_that_ignores_sigterm_after_the_timeout(
    run: Runner, tmp_path: Path
) -> None:
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("trapped")
        time.sleep(60)
    """

    async def main() -> None:
        driver = ProcessDriver(tmp_path)
        reasons: list[str] = []
        driver.on_exit(lambda _h, _c, reason: reasons.append(reason))
        handle = await driver.start(
            await driver.create(spec(*py(code)), instance_id="stubborn", env_extra={})
        )
        await wait_until(lambda: "trapped" in log_text(handle), 5, "the SIGTERM trap")
        started = time.monotonic()
        await driver.stop(handle, 0.5)
        took = time.monotonic() - started
        assert 0.5 <= took < 3.0
        assert handle.pid is not None and not alive(handle.pid)
        state = await driver.inspect(handle)
        assert state.exit_code == -signal.SIGKILL
        assert reasons == ["killed by signal 9 (SIGKILL) after stop"]

    run(main())


def test_stop_terminates_the_whole_process_group(run: Runner, tmp_path: Path) -> None:
    # The instance starts a helper (as a shell wrapper or a worker pool would) that ignores
    # SIGTERM; stopping the instance must not leave the helper behind.
    code = """
        import subprocess, sys, time
        helper = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
        print("helper", helper.pid)
        time.sleep(60)
    """

    async def main() -> None:
        driver = ProcessDriver(tmp_path)
        handle = await driver.start(
            await driver.create(spec(*py(code)), instance_id="group", env_extra={})
        )
        helper = await logged_pid(handle, "helper")
        assert alive(helper)
        stats = await driver.stats(handle)  # both interpreters' RSS
        assert stats.memory_bytes > 2 * 1024 * 1024
        await driver.stop(handle, 0.5)
        await wait_until(lambda: not alive(helper), 2, "the helper to die")
        assert not alive(handle.pid or 0)

    run(main())


def test_a_crash_takes_its_helpers_with_it(run: Runner, tmp_path: Path) -> None:
    code = """
        import os, subprocess, sys, time
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("helper", helper.pid)
        time.sleep(0.3)
        os._exit(7)
    """

    async def main() -> None:
        driver = ProcessDriver(tmp_path)
        codes: list[int] = []
        driver.on_exit(lambda _h, code, _r: codes.append(code))
        handle = await driver.start(
            await driver.create(spec(*py(code)), instance_id="crash", env_extra={})
        )
        await wait_until(lambda: bool(codes), 5, "the crash")
        assert codes == [7]
        helper = await logged_pid(handle, "helper")
        await wait_until(lambda: not alive(helper), 2, "the orphaned helper to be killed")

    run(main())


def test_start_failure_raises_and_leaves_the_instance_created(run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        driver = ProcessDriver(tmp_path)
        handle = await driver.create(
            spec("/nonexistent/server"), instance_id="missing", env_extra={}
        )
        with pytest.raises(DriverError, match="nonexistent"):
            await driver.start(handle)
        state = await driver.inspect(handle)
        assert state.status is InstanceStatus.CREATED
        assert state.reason is not None and state.reason.startswith("failed to start")

    run(main())


def test_create_validates(run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        driver = ProcessDriver(tmp_path)
        for bad in ("", "..", "a/b", "x" * 200):
            with pytest.raises(DriverError, match="invalid instance id"):
                await driver.create(spec("true"), instance_id=bad, env_extra={})
        with pytest.raises(DriverError, match="command"):
            await driver.create(ContainerSpec(driver="process"), instance_id="a", env_extra={})
        await driver.create(spec("true"), instance_id="a", env_extra={})
        with pytest.raises(DriverError, match="already exists"):
            await driver.create(spec("true"), instance_id="a", env_extra={})

    run(main())


def test_log_file_is_bounded(run: Runner, tmp_path: Path) -> None:
    code = """
        import sys, time
        line = "x" * 1023 + "\\n"
        for i in range(40):
            sys.stdout.write(line * 64)  # 64 KiB per step, 2.5 MiB in all
            sys.stdout.flush()
            time.sleep(0.02)
        print("done")
        time.sleep(60)
    """
    limit = 256 * 1024

    async def main() -> None:
        driver = ProcessDriver(tmp_path, log_limit=limit, log_check_interval=0.01)
        handle = await driver.start(
            await driver.create(spec(*py(code)), instance_id="chatty", env_extra={})
        )
        assert handle.log_path is not None
        path, biggest = handle.log_path, 0
        deadline = time.monotonic() + 30

        rotated = path.with_name("output.log.1")

        def tail(p: Path) -> bytes:  # cheap: the test must not starve the writer it watches
            try:
                with p.open("rb") as f:
                    f.seek(max(0, p.stat().st_size - 16))
                    return f.read()
            except FileNotFoundError:
                return b""

        # "done" may have been rotated into output.log.1 already.
        while b"done" not in tail(path) + tail(rotated):
            biggest = max(biggest, path.stat().st_size)
            assert time.monotonic() < deadline, "the writer never finished"
            await asyncio.sleep(0.01)
        assert rotated.exists() and rotated.stat().st_size > limit
        # One check interval of output past the limit at most (with scheduling slack).
        assert biggest < limit + 512 * 1024
        assert handle.log_path.stat().st_size < limit + 512 * 1024
        await driver.close()
        assert handle.pid is not None and not alive(handle.pid)

    run(main())


def test_close_stops_everything(run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        driver = ProcessDriver(tmp_path)
        handles = [
            await driver.start(
                await driver.create(
                    spec(*py("import time; time.sleep(60)")), instance_id=f"i{i}", env_extra={}
                )
            )
            for i in range(3)
        ]
        await driver.close()
        for h in handles:
            assert h.pid is not None and not alive(h.pid)
            assert (await driver.inspect(h)).status is InstanceStatus.EXITED

    run(main())


# ------------------------------------------------------------------------ no orphans

PARENT = """
import asyncio, sys
from pathlib import Path
from guard.config.model import ContainerSpec
from guard.drivers.process import ProcessDriver

async def main() -> None:
    driver = ProcessDriver(Path(sys.argv[1]))
    spec = ContainerSpec(driver="process", command=(sys.executable, "-m", "guard.demo", "http"))
    handle = await driver.start(await driver.create(spec, instance_id="orphan", env_extra={}))
    print(handle.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_sigkilled_guard_leaves_no_orphan(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert alive(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        deadline = time.monotonic() + 2.0
        while alive(pid):
            assert time.monotonic() < deadline, f"instance {pid} outlived its SIGKILLed parent"
            time.sleep(0.02)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)


# ------------------------------------------------------------------------ /proc parsing


def test_parse_proc_stat_survives_odd_command_names() -> None:
    fields = ["S", "1", "4242", "4242"] + ["0"] * 7 + ["150", "50", "7", "3"] + ["0"] * 6
    fields += ["1234"] + ["0"] * 20
    text = "4243 (a) b (c)) " + " ".join(fields) + "\n"
    st = parse_proc_stat(text)
    assert (st.pid, st.state, st.pgrp, st.cpu_ticks, st.rss_pages) == (4243, "S", 4242, 210, 1234)
    zombie = parse_proc_stat(text.replace(") S ", ") Z "))
    other = parse_proc_stat(text.replace(" 4242 4242 ", " 9 9 "))
    assert group_usage([st, zombie, other], 4242) == (210, 1234)


def test_parse_proc_stat_of_this_process() -> None:
    st = parse_proc_stat(Path("/proc/self/stat").read_text())
    assert st.pgrp == os.getpgrp() and st.rss_pages > 0 and st.state == "R"
