"""The docker driver against a real Docker daemon, with a busybox image built locally.

Skipped when no daemon answers at the default socket (or $GUARD_TEST_DOCKER_SOCKET), except
under CI=true, where .ci/run starts one: there a missing daemon or image fails every test
instead of hiding them.
The image is built by tests/docker/build_image.sh (no registry needed) when missing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest
import uvloop
from aiodocker.exceptions import DockerError

from guard.config.model import ContainerSpec, DockerDriverConfig, Resources
from guard.drivers import DriverError, InstanceHandle, InstanceNotFound, InstanceStatus
from guard.drivers import docker as docker_driver
from guard.drivers.docker import (
    DockerDriver,
    docker_available,
    docker_exit_reason,
    memory_in_use,
    python_exit_code,
)

REPO = Path(__file__).resolve().parent.parent
# Another daemon (rootless, remote) for these tests; the default is the driver's default.
SOCKET = os.environ.get("GUARD_TEST_DOCKER_SOCKET") or DockerDriverConfig().socket
CONFIG = DockerDriverConfig(socket=SOCKET)
IMAGE = "guard-test-busybox:latest"
BUILD_IMAGE = REPO / "tests" / "docker" / "build_image.sh"
TEST_NETWORK = "guard-test-bridge"
MiB = 1024 * 1024
Runner = Callable[[Coroutine[Any, Any, Any]], Any]

# busybox sh as PID 1 has no default SIGTERM action: trap it so `docker stop` is graceful,
# and keep the server a child so the trap can run while the shell waits.
SERVE = "trap 'exit 0' TERM; httpd -f -p {bind}$PORT -h /www & wait"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run must provide a docker daemon)", pytrace=False)
    pytest.skip(reason)


async def _image_present(name: str) -> bool:
    async with aiodocker.Docker(url=SOCKET) as docker:
        try:
            await docker.images.inspect(name)
        except DockerError as e:
            if e.status == 404:
                return False
            raise
    return True


@pytest.fixture(scope="session")
def docker_image() -> str:
    reason = asyncio.run(docker_available(SOCKET))
    if reason is not None:
        _unavailable(f"no docker daemon: {reason}")
    if not asyncio.run(_image_present(IMAGE)):
        built = subprocess.run(
            ["bash", str(BUILD_IMAGE), IMAGE], capture_output=True, text=True, timeout=60
        )
        if built.returncode != 0:
            _unavailable(f"cannot build {IMAGE}: {built.stderr.strip() or built.stdout.strip()}")
    return IMAGE


async def _remove_containers(label: str | None, names: list[str]) -> None:
    async with aiodocker.Docker(url=SOCKET) as docker:
        found = []
        if label is not None:
            found = await docker.containers.list(all=True, filters={"label": [label]})
        targets = [c.id for c in found] + names
        for target in targets:
            try:
                await docker.containers.container(target).delete(force=True)
            except DockerError as e:
                if e.status != 404:
                    raise


@pytest.fixture
def guard_id(docker_image: str) -> Iterator[str]:
    """A Guard id of this test's own: its containers are found (and removed) by label."""
    gid = f"test-{uuid.uuid4().hex[:10]}"
    yield gid
    asyncio.run(_remove_containers(f"guard.id={gid}", []))


@pytest.fixture
def stray_names() -> Iterator[list[str]]:
    """Names of unlabelled containers a test makes; removed afterwards."""
    names: list[str] = []
    yield names
    if names:
        asyncio.run(_remove_containers(None, names))


@pytest.fixture
def run() -> Runner:
    """Guard runs on uvloop (guard.runtime.loop); one test also covers plain asyncio."""
    return uvloop.run


def spec(
    script: str,
    *,
    env: dict[str, str] | None = None,
    cpu: float | None = None,
    memory: int | None = None,
    port: int | None = None,
    stop: float = 5.0,
) -> ContainerSpec:
    return ContainerSpec(
        driver="docker",
        image=IMAGE,
        command=("/bin/sh", "-c", script),
        env=tuple((env or {}).items()),
        port=port,
        resources=Resources(cpu=cpu, memory=memory),
        stop_timeout=stop,
    )


def serve(bind: str = "127.0.0.1:", before: str = "") -> str:
    return before + SERVE.format(bind=bind)


async def docker_show(name: str) -> dict[str, Any] | None:
    async with aiodocker.Docker(url=SOCKET) as docker:
        try:
            return await docker.containers.container(name).show()
        except DockerError as e:
            if e.status == 404:
                return None
            raise


async def http_get(handle: InstanceHandle, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(handle.host, handle.port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def wait_http(handle: InstanceHandle, path: str, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = await http_get(handle, path)
            if status == 200:
                return body
        except (OSError, IndexError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{handle.address}{path} did not answer within {timeout}s")
        await asyncio.sleep(0.05)


async def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------ lifecycle


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_httpd_lifecycle(loop: str, guard_id: str) -> None:
    async def main() -> None:
        driver = DockerDriver(CONFIG, guard_id=guard_id)
        exits: list[tuple[InstanceHandle, int, str]] = []
        driver.on_exit(lambda *args: exits.append(args))
        try:
            handle = await driver.create(spec(serve()), instance_id=f"{guard_id}-web", env_extra={})
            assert handle.container_id is None and handle.driver == "docker"
            assert handle.host == "127.0.0.1" and handle.port > 0
            assert (await driver.inspect(handle)).status is InstanceStatus.CREATED

            handle = await driver.start(handle)
            assert handle.container_id is not None
            state = await driver.inspect(handle)
            assert state.status is InstanceStatus.RUNNING and state.pid
            assert await wait_http(handle, "/index.html", 10) == b"ok\n"

            stats = await driver.stats(handle)
            assert stats.cpu_seconds >= 0 and stats.memory_bytes > 0

            started = time.monotonic()
            await driver.stop(handle, 5.0)
            assert time.monotonic() - started < 4.0  # the TERM trap ran: no SIGKILL at 5 s
            state = await driver.inspect(handle)
            assert state.status is InstanceStatus.EXITED and state.stop_requested
            assert (state.exit_code, state.reason) == (0, "exited with code 0 after stop")
            await asyncio.sleep(0.3)  # a duplicate die would have arrived by now
            assert exits == [(handle, 0, "exited with code 0 after stop")]
            with pytest.raises(DriverError, match="not running"):
                await driver.stats(handle)

            await driver.remove(handle)
            assert await docker_show(f"guard-{guard_id}-web") is None
            with pytest.raises(InstanceNotFound):
                await driver.inspect(handle)
        finally:
            await driver.close()

    (asyncio.run if loop == "asyncio" else uvloop.run)(main())


def test_environment_labels_and_resources(run: Runner, guard_id: str) -> None:
    async def main() -> None:
        driver = DockerDriver(CONFIG, guard_id=guard_id)
        try:
            handle = await driver.create(
                spec(
                    serve(before="env > /www/env.txt; "),
                    env={"MODE": "demo", "PORT": "1"},
                    cpu=0.5,
                    memory=64 * MiB,
                ),
                instance_id=f"{guard_id}-env",
                env_extra={"GUARD_KEY": "k1"},
            )
            await driver.start(handle)
            text = (await wait_http(handle, "/env.txt", 10)).decode()
            env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
            assert env["PORT"] == str(handle.port)  # Guard's pick wins over spec.env
            assert env["MODE"] == "demo" and env["GUARD_KEY"] == "k1"

            info = await docker_show(f"guard-{guard_id}-env")
            assert info is not None
            labels = info["Config"]["Labels"]
            assert labels["guard.managed"] == "true" and labels["guard.id"] == guard_id
            assert labels["guard.instance"] == f"{guard_id}-env"
            host = info["HostConfig"]
            assert host["NanoCpus"] == 500_000_000
            assert host["Memory"] == host["MemorySwap"] == 64 * MiB
            assert host["NetworkMode"] == "host"
            assert info["Config"]["StopTimeout"] == 5
        finally:
            await driver.close()

    run(main())


def test_exit_code_and_reason_and_restart(run: Runner, guard_id: str) -> None:
    async def main() -> None:
        driver = DockerDriver(CONFIG, guard_id=guard_id)
        events: list[tuple[InstanceHandle, int, str]] = []
        fired = asyncio.Event()

        def on_exit(handle: InstanceHandle, code: int, reason: str) -> None:
            events.append((handle, code, reason))
            fired.set()

        driver.on_exit(lambda *_: 1 / 0)  # a broken listener must not silence the others
        driver.on_exit(on_exit)
        try:
            handle = await driver.create(
                spec("echo bye; exit 3"), instance_id=f"{guard_id}-three", env_extra={}
            )
            handle = await driver.start(handle)
            await asyncio.wait_for(fired.wait(), 10)
            assert events == [(handle, 3, "exited with code 3")]
            state = await driver.inspect(handle)
            assert state.status is InstanceStatus.EXITED and state.exit_code == 3
            assert not state.stop_requested and state.pid is None

            # An exited instance can be started again, and its next exit is reported too.
            fired.clear()
            await driver.start(handle)
            await asyncio.wait_for(fired.wait(), 10)
            await asyncio.sleep(0.3)
            assert len(events) == 2 and events[1][1:] == (3, "exited with code 3")
        finally:
            await driver.close()

    run(main())


def test_stop_kills_after_the_timeout(run: Runner, guard_id: str) -> None:
    async def main() -> None:
        driver = DockerDriver(CONFIG, guard_id=guard_id)
        reasons: list[str] = []
        driver.on_exit(lambda _h, _c, reason: reasons.append(reason))
        try:
            # PID 1 without a TERM handler: SIGTERM does nothing, SIGKILL has to.
            handle = await driver.create(
                spec("while :; do sleep 1; done"), instance_id=f"{guard_id}-stub", env_extra={}
            )
            await driver.start(handle)
            started = time.monotonic()
            await driver.stop(handle, 1.0)
            took = time.monotonic() - started
            assert 1.0 <= took < 6.0
            state = await driver.inspect(handle)
            assert state.exit_code == -9
            assert reasons == ["killed by signal 9 (SIGKILL) after stop"]
            await driver.stop(handle, 1.0)  # not running: a no-op
            assert len(reasons) == 1
        finally:
            await driver.close()

    run(main())


def test_stats_follow_a_busy_loop_under_a_cpu_limit(run: Runner, guard_id: str) -> None:
    async def main() -> None:
        driver = DockerDriver(CONFIG, guard_id=guard_id)
        try:
            handle = await driver.create(
                spec("while :; do :; done", cpu=0.5), instance_id=f"{guard_id}-busy", env_extra={}
            )
            await driver.start(handle)
            first = await driver.stats(handle)
            await asyncio.sleep(1.0)
            second = await driver.stats(handle)
            assert second.memory_bytes > 0
            assert second.cpu_seconds > first.cpu_seconds and second.at > first.at
            rate = (second.cpu_seconds - first.cpu_seconds) / (second.at - first.at)
            # NanoCpus caps the loop at half a core (a shared machine may give it less).
            assert 0.02 < rate < 0.8, rate
        finally:
            await driver.close()

    run(main())


def test_out_of_memory_is_the_reason(run: Runner, guard_id: str) -> None:
    async def main() -> None:
        driver = DockerDriver(CONFIG, guard_id=guard_id)
        got: list[tuple[int, str]] = []
        driver.on_exit(lambda _h, code, reason: got.append((code, reason)))
        try:
            handle = await driver.create(
                spec('x=a; while :; do x="$x$x"; done', memory=8 * MiB),
                instance_id=f"{guard_id}-oom",
                env_extra={},
            )
            await driver.start(handle)
            await wait_until(lambda: bool(got), 20, "the OOM kill")
            assert got == [(-9, "out of memory (killed by signal 9 (SIGKILL))")]
            assert (await driver.inspect(handle)).reason == got[0][1]
        finally:
            await driver.close()

    run(main())


@pytest.mark.parametrize("recovery", ["replay", "reconcile"])
def test_exit_while_the_event_stream_is_down_is_still_reported(
    run: Runner, guard_id: str, recovery: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The watcher waits 1.5 s before re-subscribing; the container exits within that gap.
    monkeypatch.setattr(docker_driver, "_RETRY_MIN", 1.5)

    async def main() -> None:
        driver = DockerDriver(CONFIG, guard_id=guard_id)
        codes: list[int] = []
        driver.on_exit(lambda _h, code, _r: codes.append(code))
        try:
            handle = await driver.create(
                spec("sleep 0.5; exit 5"), instance_id=f"{guard_id}-gap", env_extra={}
            )
            docker = driver._docker
            assert docker is not None
            await wait_until(lambda: docker.events.json_stream is not None, 5, "the stream")
            await driver.start(handle)
            # End the stream as a daemon restart would (its connection closes).
            await docker.events.json_stream._close()
            if recovery == "reconcile":
                # As if the daemon had restarted: its replay buffer no longer holds the exit
                # (a `since` in the future replays nothing), so only the inspect pass that
                # follows every re-subscription can find it.
                driver._events_since = f"{time.time() + 3600:.9f}"
            await asyncio.sleep(1.0)
            assert codes == []  # exited by now, but nobody has heard yet
            await wait_until(lambda: bool(codes), 10, "the exit")
            await asyncio.sleep(0.3)
            assert codes == [5]
            assert (await driver.inspect(handle)).exit_code == 5
        finally:
            await driver.close()

    run(main())


def test_close_stops_everything(run: Runner, guard_id: str) -> None:
    async def main() -> None:
        driver = DockerDriver(CONFIG, guard_id=guard_id)
        handles = []
        for i in range(3):
            h = await driver.create(
                spec("trap 'exit 0' TERM; while :; do sleep 1 & wait; done"),
                instance_id=f"{guard_id}-c{i}",
                env_extra={},
            )
            handles.append(await driver.start(h))
        started = time.monotonic()
        await driver.close()
        assert time.monotonic() - started < 5.0  # concurrently, and gracefully
        for h in handles:
            info = await docker_show(f"guard-{h.id}")
            assert info is not None and info["State"]["Status"] == "exited"
            assert (await driver.inspect(h)).status is InstanceStatus.EXITED
        await driver.close()  # inspect reopened the client

    run(main())


# ------------------------------------------------------------------------ networking


@pytest.fixture
def bridge_network(docker_image: str) -> Iterator[str]:
    """A user-defined bridge: dockerd runs with --bridge=none, so there is no default one."""

    async def ensure() -> None:
        async with aiodocker.Docker(url=SOCKET) as docker:
            try:
                await docker.networks.get(TEST_NETWORK)
            except DockerError:
                await docker.networks.create({"Name": TEST_NETWORK, "Driver": "bridge"})

    try:
        asyncio.run(ensure())
    except DockerError as e:
        _unavailable(f"cannot create a bridge network: {e}")
    yield TEST_NETWORK  # left in place: cheap, and shared by later runs


def test_bridge_network_publishes_the_port(run: Runner, guard_id: str, bridge_network: str) -> None:
    async def main() -> None:
        config = DockerDriverConfig(socket=SOCKET, network=bridge_network)
        driver = DockerDriver(config, guard_id=guard_id)
        try:
            handle = await driver.create(
                spec(serve(bind="", before="echo $PORT > /www/port.txt; "), port=8080),
                instance_id=f"{guard_id}-br",
                env_extra={},
            )
            assert handle.port != 8080 and handle.host == "127.0.0.1"
            await driver.start(handle)
            assert await wait_http(handle, "/port.txt", 10) == b"8080\n"
            info = await docker_show(f"guard-{guard_id}-br")
            assert info is not None
            binding = info["HostConfig"]["PortBindings"]["8080/tcp"]
            assert binding == [{"HostIp": "127.0.0.1", "HostPort": str(handle.port)}]
        finally:
            await driver.close()

    run(main())


# ------------------------------------------------------------------------ orphans, errors


def test_reap_orphans_removes_only_this_guards_leftovers(
    run: Runner, guard_id: str, stray_names: list[str]
) -> None:
    other_guard = f"{guard_id}-other"
    stray = f"stray-{guard_id}"
    stray_names.extend([stray, f"guard-{other_guard}-x"])

    async def main() -> None:
        async with aiodocker.Docker(url=SOCKET) as docker:
            base = {"Image": IMAGE, "Cmd": ["sleep", "60"], "HostConfig": {"NetworkMode": "host"}}
            leftover = await docker.containers.create(
                {
                    **base,
                    "Labels": {
                        "guard.managed": "true",
                        "guard.id": guard_id,
                        "guard.instance": "old",
                    },
                },
                name=f"guard-{guard_id}-old",
            )
            await leftover.start()
            await docker.containers.create(base, name=stray)
            await docker.containers.create(
                {**base, "Labels": {"guard.managed": "true", "guard.id": other_guard}},
                name=f"guard-{other_guard}-x",
            )

        driver = DockerDriver(CONFIG, guard_id=guard_id)
        try:
            mine = await driver.create(
                spec("sleep 60"), instance_id=f"{guard_id}-new", env_extra={}
            )
            assert await driver.reap_orphans() == [f"guard-{guard_id}-old"]
            assert await docker_show(f"guard-{guard_id}-old") is None
            assert await docker_show(stray) is not None  # not Guard's
            assert await docker_show(f"guard-{other_guard}-x") is not None  # another Guard's
            assert (await driver.inspect(mine)).status is InstanceStatus.CREATED  # live: kept
            assert await driver.reap_orphans() == []
        finally:
            await driver.close()

    run(main())


def test_leftovers_adopt_and_abandoned_removal(run: Runner, guard_id: str) -> None:
    """A second driver (the next Guard) lists the first one's running container with what
    it was made for, adopts it (exits reported, stats from adoption on), and a removal that
    failed while the daemon was unreachable is finished by the next resync."""

    async def main() -> None:
        first = DockerDriver(CONFIG, guard_id=guard_id)
        serve = spec("sleep 60")
        made = await first.create(
            serve,
            instance_id=f"{guard_id}-a",
            env_extra={"GUARD_SERVICE": "svc", "GUARD_KEY": "k1"},
        )
        made = await first.start(made)
        await first._client().close()  # the first Guard "crashed": its containers run on
        second = DockerDriver(CONFIG, guard_id=guard_id)
        try:
            (left,) = await second.leftovers()
            assert left.service == "svc" and left.key == "k1"
            assert left.spec == docker_driver.spec_digest(serve, CONFIG.network)
            assert left.handle.id == made.id and left.handle.port == made.port
            assert left.handle.container_id == made.container_id
            handle = second.adopt(left, stop_timeout=1.0)
            assert (await second.inspect(handle)).status is InstanceStatus.RUNNING
            assert await second.leftovers() == []  # known now
            assert (await second.stats(handle)).cpu_seconds == 0.0  # counted from adoption

            # The daemon "goes away" just as the instance is being removed.
            client = second._docker
            second._docker = aiodocker.Docker(url=f"unix:///nonexistent/{guard_id}.sock")
            with pytest.raises(docker_driver.DriverUnavailable):
                await second.remove(handle)
            await second._docker.close()
            second._docker = client
            await second._reconcile()  # what the events watcher runs once it reconnects
            assert await docker_show(f"guard-{handle.id}") is None
            with pytest.raises(InstanceNotFound):
                await second.inspect(handle)
        finally:
            await second.close()

    run(main())


def test_missing_image_names_it(run: Runner, guard_id: str) -> None:
    async def main() -> None:
        driver = DockerDriver(CONFIG, guard_id=guard_id)
        missing = ContainerSpec(driver="docker", image="guard-test-missing:latest")
        try:
            with pytest.raises(DriverError, match="image guard-test-missing:latest not found"):
                await driver.create(missing, instance_id=f"{guard_id}-nope", env_extra={})
            with pytest.raises(InstanceNotFound):  # nothing was registered
                await driver.inspect(InstanceHandle(f"{guard_id}-nope", "docker", "x", 1))
        finally:
            await driver.close()

    run(main())


def test_start_failure_raises_and_leaves_the_instance_created(run: Runner, guard_id: str) -> None:
    async def main() -> None:
        driver = DockerDriver(CONFIG, guard_id=guard_id)
        bad = ContainerSpec(driver="docker", image=IMAGE, command=("/nonexistent/server",))
        try:
            handle = await driver.create(bad, instance_id=f"{guard_id}-bad", env_extra={})
            with pytest.raises(DriverError, match="nonexistent"):
                await driver.start(handle)
            state = await driver.inspect(handle)
            assert state.status is InstanceStatus.CREATED
            assert state.reason is not None and state.reason.startswith("failed to start")
        finally:
            await driver.close()

    run(main())


def test_create_validates(run: Runner, guard_id: str) -> None:
    async def main() -> None:
        driver = DockerDriver(CONFIG, guard_id=guard_id)
        try:
            for bad in ("", "..", "a/b", "x" * 200):
                with pytest.raises(DriverError, match="invalid instance id"):
                    await driver.create(spec("true"), instance_id=bad, env_extra={})
            with pytest.raises(DriverError, match="image"):
                await driver.create(
                    ContainerSpec(driver="docker"), instance_id=f"{guard_id}-a", env_extra={}
                )
            await driver.create(spec("true"), instance_id=f"{guard_id}-a", env_extra={})
            with pytest.raises(DriverError, match="already exists"):
                await driver.create(spec("true"), instance_id=f"{guard_id}-a", env_extra={})
            # Another driver (a second Guard with the same id) sees the name taken.
            other = DockerDriver(CONFIG, guard_id=guard_id)
            try:
                with pytest.raises(DriverError, match="already exists"):
                    await other.create(spec("true"), instance_id=f"{guard_id}-a", env_extra={})
            finally:
                await other.close()
            unknown = InstanceHandle(f"{guard_id}-zz", "docker", "127.0.0.1", 1)
            for call in (driver.start(unknown), driver.stats(unknown), driver.remove(unknown)):
                with pytest.raises(InstanceNotFound):
                    await call
        finally:
            await driver.close()

    run(main())


# ------------------------------------------------------------------------ no daemon needed


def test_unreachable_daemon_is_a_driver_error(tmp_path: Path) -> None:
    socket = f"unix://{tmp_path}/docker.sock"

    async def main() -> None:
        reason = await docker_available(socket)
        assert reason is not None and reason.startswith(f"cannot reach docker at {socket}")
        driver = DockerDriver(DockerDriverConfig(socket=socket))
        try:
            with pytest.raises(DriverError, match=f"cannot reach docker at {socket}: No such"):
                await driver.create(spec("true"), instance_id="a", env_extra={})
            with pytest.raises(DriverError, match="cannot reach docker"):
                await driver.reap_orphans()
        finally:
            await driver.close()
        assert await docker_available("bogus://x") is not None

    uvloop.run(main())


def test_exit_code_conversion_and_reasons() -> None:
    assert python_exit_code(0) == 0 and python_exit_code(3) == 3
    assert python_exit_code(137) == -9 and python_exit_code(143) == -15
    assert python_exit_code(128) == 128 and python_exit_code(255) == 255
    assert docker_exit_reason(-9, oom=True, stop_requested=False) == (
        "out of memory (killed by signal 9 (SIGKILL))"
    )
    assert docker_exit_reason(0, oom=False, stop_requested=True) == "exited with code 0 after stop"


def test_memory_in_use_subtracts_reclaimable_cache() -> None:
    v1 = {"usage": 10_000, "stats": {"total_inactive_file": 3_000, "inactive_file": 1, "cache": 5}}
    v2 = {"usage": 10_000, "stats": {"inactive_file": 4_000, "file": 6_000}}
    old = {"usage": 10_000, "stats": {"cache": 2_000}}
    assert memory_in_use(v1) == 7_000
    assert memory_in_use(v2) == 6_000
    assert memory_in_use(old) == 8_000
    assert memory_in_use({"usage": 10, "stats": {"inactive_file": 20}}) == 10
    assert memory_in_use({}) == 0
