"""Cold-start benchmark: time to first byte from zero through Guard, decomposed, next to the
instance's own start-to-listening time; then 1,000 concurrent requests to a sleeping service.

    python benchmarks/cold_start.py [--driver process|docker|both] [--starts 20] [--pooled 5]
                                    [--burst 1000] [--results benchmarks/RESULTS.md]

Issue 4's target: Guard adds <= 15 ms at p50 over the instance's own readiness (Sablier
answers a 1 s app after ~5 s, Cloudflare polls every 300 ms, Knative's activator probes
every 200 ms). Burst target: one wake, 0 errors.

Per driver, one Guard (``python -m guard run`` from this checkout, ``workers: 1``) runs with
a generated guard.yaml and routes dir in a temp dir, and for each instance kind:

1. **Instance alone** (``--starts`` times): the very command Guard would run, started
   directly with a free ``$PORT`` (``subprocess.Popen``, or aiodocker create + start with
   the host network, as the docker driver does), connect-polled every 1 ms until it
   listens, then one ``GET /`` for its first byte. Killed and removed after each sample.
2. **Cold through Guard, per-key** (``--starts`` times, interleaved with 1. so that
   machine noise hits both alike): ``GET /`` with ``Host: k<i>.cold-<kind>.test`` on a
   ``per_key`` service, so every request is a new key and a start from zero. One unmeasured
   warm-up start comes first (Guard's first start pays imports and first-use costs).
3. **Cold through Guard, pooled** (``--pooled`` times): the ordinary path of a service with
   ``sleep_after: 1s``: one request, wait for Guard's ``stopped`` event, again.
4. **Burst** (once per variant): ``--burst`` concurrent connections, each one ``GET``, at a
   sleeping pooled service; variant A needs one instance (target_concurrency above the
   burst), variant B has target_concurrency 100 and max 10 (ten starts expected).

A cold request is decomposed from the client's clocks and Guard's lifecycle log (JSON lines
on stderr): see ``COLUMNS`` below for exactly how each column is measured. Everything binds
to 127.0.0.1; every process runs in its own process group and is stopped on the way out
(also on error, Ctrl-C, SIGTERM and after ``--max-seconds``); every container this run made
is removed and the temp dir deleted.

Guard's docker driver labels its containers ``guard.id=guard`` and reaps every such
container when it starts: do not run this next to another Guard using the same daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
IMAGE = "guard-test-busybox:latest"
BUILD_IMAGE = REPO / "tests" / "docker" / "build_image.sh"
BENCH_LABEL = "guard-bench.run"  # containers of the "instance alone" samples
POLL = 0.001  # connect-poll interval for the instance-alone samples
TARGET_ADDED_MS = 15.0

# How each column is measured (printed with the results, so the numbers carry their meaning).
COLUMNS = """\
- **TTFB**: client clock, from just before the request is written on an established
  connection to Guard until the first response byte is read.
- **decision**: Guard's `start` event timestamp minus the client's wall-clock send time:
  request parsed, routed, held, the wake message passed to the controller, and its
  decision to start (logged just before the driver's create call is scheduled).
- **create**, **start call**, **probe**: the `create_ms`, `start_ms`, `probe_ms` of
  Guard's `ready` event. create = the driver's create call (process: port + workdir;
  docker: `POST /containers/create`); start call = the driver's start call (process:
  fork/exec returned; docker: `POST /containers/{id}/start` returned, the container's
  process exists); probe = from the start call's return until Guard's readiness probe
  (every 15 ms) passed: the app's own boot to listening, plus up to one probe interval.
- **ready→1st byte**: client wall clock at the first byte minus the `ready` event's
  timestamp: publish, release of the held request, upstream connect, the instance
  answering, relay back.
- **held**: Guard's `x-guard-cold-start` header (ms the request was held, whole ms).
- Guard's timestamps are whole milliseconds (uvloop's clock, the log's 3-decimal `ts`), so
  decision and ready→1st byte are +-1 ms; the p50 of each column is taken on its own, so
  the column p50s need not add up to the TTFB p50.
- **alone: listening**: from just before `Popen` (process) or the create call (docker)
  until a TCP connect to `$PORT` succeeds, connect-polled every 1 ms.
  **alone: 1st byte**: listening plus one `GET /` to the instance until its first byte.
- **Guard added** = p50 (p90) of the per-key cold TTFB minus p50 (p90) of the
  instance-alone listening time: what Guard adds over the instance's own readiness, with
  the instance's answer to the request itself (alone: 1st byte - listening) included.
  **added, paired p50**: the p50 of (cold TTFB i - alone listening i); sample i of each
  ran back to back, so this one is less sensitive to the machine's load drifting.
"""


class HarnessError(Exception):
    """A failure worth a clear message rather than a traceback."""


# -- small helpers ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p50 of 20 values is the 10th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def p50_p90(values: Sequence[float]) -> str:
    return f"{fmt(pct(values, 50))} / {fmt(pct(values, 90))}"


def wait_listening(port: int, deadline: float, exited: Callable[[], bool]) -> float:
    """Connect-poll 127.0.0.1:port every POLL seconds; perf_counter() of the first success."""
    while True:
        with socket.socket() as s:
            try:
                s.connect(("127.0.0.1", port))
                return time.perf_counter()
            except OSError:
                pass
        if exited():
            raise HarnessError(f"the instance exited before listening on {port}")
        if time.perf_counter() > deadline:
            raise HarnessError(f"the instance did not listen on {port} in time")
        time.sleep(POLL)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    ttfb_ms: float  # write -> first byte, client clock
    sent_wall: float  # time.time() just before the write
    first_byte_wall: float  # time.time() at the first byte


def timed_get(port: int, host: str, path: str = "/", timeout: float = 60.0) -> Response:
    """One ``GET`` on a new connection (Connection: close), timing write -> first byte."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cold-start-bench\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent_wall = time.time()
        t0 = time.perf_counter()
        s.sendall(request)
        first = s.recv(65536)
        t1 = time.perf_counter()
        first_wall = time.time()
        if not first:
            raise HarnessError(f"{host}: connection closed without a response")
        chunks = [first]
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(
        int(lines[0].split()[1]), headers, body, (t1 - t0) * 1000, sent_wall, first_wall
    )


# -- what runs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One instance program, run the same way by Guard and alone."""

    name: str
    driver: str  # process | docker
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    ready: str = "/"  # ready: {http: PATH}
    image: str | None = None
    about: str = ""

    def container(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "driver": self.driver,
            "command": list(self.command),
            "ready": {"http": self.ready},
            "stop_timeout": "2s",
        }
        if self.env:
            spec["env"] = self.env
        if self.image:
            spec["image"] = self.image
        return spec


# The minimal Python server: no site, no asyncio, one accept loop (a fast Python start).
PY_MIN = (
    "import os,socket\n"
    "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('127.0.0.1',int(os.environ['PORT'])));s.listen(1024)\n"
    "r=b'HTTP/1.1 200 OK\\r\\ncontent-length: 3\\r\\nconnection: close\\r\\n\\r\\nok\\n'\n"
    "while True:\n"
    " c,_=s.accept();c.recv(65536);c.sendall(r);c.close()\n"
)
# busybox sh as PID 1 in a container ignores SIGTERM unless trapped; httpd as its child.
DOCKER_SERVE = "trap 'exit 0' TERM; httpd -f -p 127.0.0.1:$PORT -h /www & wait"


def process_kinds(www: Path) -> list[Kind]:
    kinds = [
        Kind(
            "demo",
            "process",
            (sys.executable, "-m", "guard.demo", "http"),
            env={"PYTHONPATH": str(REPO)},
            ready="/healthz",
            about="`python -m guard.demo http` (asyncio + uvloop echo server)",
        ),
        Kind(
            "py-min",
            "process",
            (sys.executable, "-S", "-c", PY_MIN),
            about="`python -S -c` with a 6-line blocking socket server",
        ),
    ]
    busybox = shutil.which("busybox")
    if busybox:
        kinds.append(
            Kind(
                "busybox",
                "process",
                ("/bin/sh", "-c", f"exec {busybox} httpd -f -p 127.0.0.1:$PORT -h {www}"),
                about="`sh -c 'exec busybox httpd -f -p 127.0.0.1:$PORT'`",
            )
        )
    return kinds


def docker_kinds() -> list[Kind]:
    return [
        Kind(
            "busybox",
            "docker",
            ("/bin/sh", "-c", DOCKER_SERVE),
            image=IMAGE,
            about=f"`{IMAGE}` (tests/docker/build_image.sh), `sh -c '{DOCKER_SERVE}'`",
        )
    ]


# -- Guard --------------------------------------------------------------------------------


@dataclass
class GuardProc:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    prefix: str  # service-name prefix of this run

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def events(self, name: str | None = None, service: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.text().splitlines():
            start = line.find("{")
            if "guard.lifecycle" not in line or start < 0:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line[start:])
                if (name is None or record.get("event") == name) and (
                    service is None or record.get("service") == service
                ):
                    found.append(record)
        return found

    def wait_event(self, name: str, service: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events(name, service)) < count:
            self.check_alive()
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"no {count}th {name} event of {service} within {timeout:g}s:\n{self.tail()}"
                )
            time.sleep(0.02)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise HarnessError(f"Guard exited with {self.proc.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM (Guard stops its instances), then SIGKILL for whatever is left."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            print("cold_start.py: Guard did not stop in 60 s; SIGKILL", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


# name -> (what the table says, scale settings for a burst of n)
BURST_VARIANTS: dict[str, tuple[str, Callable[[int], dict[str, Any]]]] = {
    "burst-one": (
        "target_concurrency > burst, max 1",
        lambda n: {"max": 1, "target_concurrency": n + 1},
    ),
    "burst-ten": (
        "target_concurrency 100, max 10",
        lambda n: {"max": 10, "target_concurrency": 100},
    ),
    # busybox httpd listens with a backlog of 9: a burst of upstream connects overflows it
    # and the kernel's SYN retries (1 s, 3 s, ...) dominate. A per-instance limit keeps the
    # excess in Guard's queue instead.
    "burst-mc8": (
        "as the first, with max_concurrency 8",
        lambda n: {"max": 1, "target_concurrency": n + 1, "max_concurrency": 8},
    ),
}


def burst_variants(driver: str) -> list[str]:
    if driver == "docker":
        return ["burst-one", "burst-ten", "burst-mc8"]
    return ["burst-one", "burst-ten"]


def service(kind: Kind, **scale: Any) -> dict[str, Any]:
    per_key = scale.pop("per_key", False)
    svc: dict[str, Any] = {
        "container": kind.container(),
        "scale": {"min": 0, "sleep_after": "10m", "wake_timeout": "60s", **scale},
    }
    if per_key:
        svc["per_key"] = True
    return svc


def start_guard(
    tmp: Path, driver: str, kinds: list[Kind], burst_kind: Kind | None, args: argparse.Namespace
) -> GuardProc:
    prefix = f"cs{uuid.uuid4().hex[:6]}"
    routes: list[dict[str, Any]] = []
    services: dict[str, dict[str, Any]] = {}

    def add(name: str, host: str, svc: dict[str, Any]) -> None:
        full = f"{prefix}-{name}"
        routes.append({"name": full, "listener": "web", "match": {"host": host}, "service": full})
        services[full] = svc

    for kind in kinds:
        add(
            f"cold-{kind.name}",
            f"{{key}}.cold-{kind.name}.test",
            service(kind, per_key=True, max=args.starts + 5),
        )
        add(f"pool-{kind.name}", f"pool-{kind.name}.test", service(kind, max=2, sleep_after="1s"))
    if burst_kind is not None:
        queue = max(1000, args.burst)
        for variant in burst_variants(driver):
            scale = BURST_VARIANTS[variant][1](args.burst)
            add(variant, f"{variant}.test", service(burst_kind, queue=queue, **scale))

    gdir = tmp / f"guard-{driver}"
    (gdir / "routes").mkdir(parents=True)
    port = free_port()
    drivers: dict[str, Any] = {"process": {}}
    if driver == "docker":
        drivers = {"docker": {"network": "host", "socket": args.docker_socket}}
    config = {
        "workers": 1,
        "routes": "routes",
        "listeners": {"web": {"protocol": "http", "address": f"127.0.0.1:{port}"}},
        # The burst is 1,000 connections from one address: above the per-IP cap's 256.
        "http": {
            "parser": "httptools",
            "timeouts": {"drain": "2s"},
            "limits": {"max_connections_per_ip": 5000},
        },
        "drivers": drivers,
    }
    # JSON is YAML.
    (gdir / "guard.yaml").write_text(json.dumps(config, indent=1))
    (gdir / "routes" / "bench.yaml").write_text(
        json.dumps({"routes": routes, "services": services}, indent=1)
    )
    log = gdir / "guard.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "guard", "run", "--config", str(gdir / "guard.yaml")],
            cwd=gdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    g = GuardProc(proc, port, log, prefix)
    deadline = time.monotonic() + 20
    while True:
        g.check_alive()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return g
        except OSError:
            if time.monotonic() > deadline:
                g.stop()
                raise HarnessError(f"Guard did not listen on {port} in 20 s:\n{g.tail()}") from None
            time.sleep(0.02)


# -- samples ------------------------------------------------------------------------------


@dataclass
class Alone:
    create: float  # ms; docker create call (0 for process)
    start: float  # ms; Popen / docker start call
    listening: float  # ms from t0
    first_byte: float  # ms from t0


@dataclass
class Cold:
    ttfb: float
    decision: float
    create: float
    start: float
    probe: float
    ready_to_first_byte: float
    held: float


class Docker:
    """An aiodocker client on a private loop, for the instance-alone docker samples."""

    def __init__(self, socket_url: str, run_id: str) -> None:
        import aiodocker

        self.runner = asyncio.Runner()
        self.run_id = run_id
        self.client = self.runner.run(self._make(aiodocker, socket_url))

    @staticmethod
    async def _make(aiodocker: Any, url: str) -> Any:
        client = aiodocker.Docker(url=url)
        await client.version()  # the connection exists before anything is timed
        return client

    def close(self) -> None:
        try:
            self.runner.run(self._remove_ours())
            self.runner.run(self.client.close())
        finally:
            self.runner.close()

    async def _remove_ours(self) -> None:
        found = await self.client.containers.list(
            all=True, filters={"label": [f"{BENCH_LABEL}={self.run_id}"]}
        )
        for c in found:
            with contextlib.suppress(Exception):
                await c.delete(force=True)

    def remove_guard_leftovers(self, prefix: str) -> int:
        """Containers of this run's Guard services that Guard's own shutdown did not remove."""

        async def run() -> int:
            found = await self.client.containers.list(
                all=True, filters={"label": ["guard.managed=true"]}
            )
            n = 0
            for c in found:
                if (c["Labels"] or {}).get("guard.instance", "").startswith(prefix + "-"):
                    with contextlib.suppress(Exception):
                        await c.delete(force=True)
                        n += 1
            return n

        return self.runner.run(run())

    def sample(self, kind: Kind, i: int) -> Alone:
        return self.runner.run(self._sample(kind, i))

    async def _sample(self, kind: Kind, i: int) -> Alone:
        port = free_port()
        config = {
            "Image": kind.image,
            "Cmd": list(kind.command),
            "Env": [f"PORT={port}"],
            "Labels": {BENCH_LABEL: self.run_id},
            "HostConfig": {"NetworkMode": "host", "RestartPolicy": {"Name": "no"}},
        }
        t0 = time.perf_counter()
        container = await self.client.containers.create(
            config, name=f"guard-bench-{self.run_id}-{i}"
        )
        t_created = time.perf_counter()
        try:
            await container.start()
            t_started = time.perf_counter()
            # Blocking on purpose: nothing else runs on this loop, and a 1 ms poll loop is
            # simplest without one. A container that exits shows as the timeout.
            t_listen = wait_listening(port, t_started + 30, lambda: False)
            first = timed_get(port, "127.0.0.1", "/", timeout=10)
        finally:
            await container.delete(force=True)
        return Alone(
            (t_created - t0) * 1000,
            (t_started - t_created) * 1000,
            (t_listen - t0) * 1000,
            (t_listen - t0) * 1000 + first.ttfb_ms,
        )


def alone_process(kind: Kind, cwd: Path) -> Alone:
    port = free_port()
    # What Guard's process driver passes: PATH and locale (inherit_env), spec env, PORT.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
    env.update(kind.env, PORT=str(port))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        kind.command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    t_spawned = time.perf_counter()
    try:
        t_listen = wait_listening(port, t0 + 30, lambda: proc.poll() is not None)
        first = timed_get(port, "127.0.0.1", "/", timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    return Alone(
        0.0,
        (t_spawned - t0) * 1000,
        (t_listen - t0) * 1000,
        (t_listen - t0) * 1000 + first.ttfb_ms,
    )


def cold_via_guard(g: GuardProc, host: str, service_name: str, nth: int, key: str | None) -> Cold:
    """One cold request; ``nth`` = how many ready events ``service_name`` will have logged."""
    r = timed_get(g.port, host)
    if r.status != 200:
        raise HarnessError(f"{host}: status {r.status} {r.body[:200]!r}\n{g.tail()}")
    g.wait_event("ready", service_name, nth, 5)
    starts = g.events("start", service_name)
    readies = g.events("ready", service_name)
    if key is not None:
        start = next(e for e in starts if e.get("key") == key)
        ready = next(e for e in readies if e.get("key") == key)
    else:
        start, ready = starts[nth - 1], readies[nth - 1]
    held = r.headers.get("x-guard-cold-start")
    if held is None:
        raise HarnessError(f"{host}: no x-guard-cold-start on a request that should be cold")
    return Cold(
        ttfb=r.ttfb_ms,
        decision=(start["ts"] - r.sent_wall) * 1000,
        create=ready["create_ms"],
        start=ready["start_ms"],
        probe=ready["probe_ms"],
        ready_to_first_byte=(r.first_byte_wall - ready["ts"]) * 1000,
        held=float(held),
    )


def warm_via_guard(g: GuardProc, host: str, n: int = 20) -> list[float]:
    out = []
    for _ in range(n):
        r = timed_get(g.port, host)
        if r.status != 200 or "x-guard-cold-start" in r.headers:
            raise HarnessError(f"{host}: warm request got {r.status} {r.headers}")
        out.append(r.ttfb_ms)
    return out


# -- burst --------------------------------------------------------------------------------


@dataclass
class Burst:
    variant: str
    kind: str
    requests: int
    starts: int
    statuses: dict[str, int]
    latencies: list[float]  # ms, connect -> whole response, successful requests
    served_by: int | None  # distinct instances that answered (when the instance says)
    wall: float  # ms, first connect -> last response


async def _burst(port: int, host: str, n: int, timeout: float) -> tuple[list[Any], float]:
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()

    async def one() -> tuple[str, float, str | None]:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(request)
                    data = await reader.read(-1)
                finally:
                    writer.close()
        except (OSError, TimeoutError) as e:
            return type(e).__name__, (time.perf_counter() - t0) * 1000, None
        took = (time.perf_counter() - t0) * 1000
        head = data.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
        parts = head.split(" ", 2)
        status = parts[1] if len(parts) > 1 else "empty"
        served_by = None
        for line in head.split("\r\n"):
            if line.startswith("x-guard-error:"):  # an answer Guard made itself: say which
                status += " " + line.partition(":")[2].strip()
            elif line.startswith("x-demo-port:"):  # guard.demo says which instance answered
                served_by = line.partition(":")[2].strip()
        return status, took, served_by

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(n)))
    return results, (time.perf_counter() - t0) * 1000


def run_burst(g: GuardProc, variant: str, kind: Kind, n: int) -> Burst:
    name = f"{g.prefix}-{variant}"
    if g.events("start", name):
        raise HarnessError(f"{name} is not sleeping before its burst")
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        # Longer than Guard's own 60 s response_header timeout, so its answer is seen.
        results, wall = runner.run(_burst(g.port, f"{variant}.test", n, 75.0))
    time.sleep(1.0)  # starts the autoscaler makes right after the burst count too
    g.check_alive()
    statuses: dict[str, int] = {}
    for status, _, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    ok = [ms for status, ms, _ in results if status == "200"]
    ports = {port for _, _, port in results if port is not None}
    starts = len(g.events("start", name))
    return Burst(variant, kind.name, n, starts, statuses, ok, len(ports) or None, wall)


# -- one driver ---------------------------------------------------------------------------


@dataclass
class KindResult:
    driver: str
    kind: Kind
    alone: list[Alone]
    per_key: list[Cold]
    pooled: list[Cold]
    warm: list[float]
    warm_alone: list[float]


def measure_driver(
    driver: str, args: argparse.Namespace, tmp: Path, docker: Docker | None
) -> tuple[list[KindResult], list[Burst]]:
    www = tmp / "www"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text("ok\n")
    kinds = process_kinds(www) if driver == "process" else docker_kinds()
    by_name = {k.name: k for k in kinds}
    burst_kind = None
    if args.burst > 0:
        burst_kind = by_name["demo"] if driver == "process" else by_name["busybox"]
    g = start_guard(tmp, driver, kinds, burst_kind, args)
    results: list[KindResult] = []
    bursts: list[Burst] = []
    try:
        for kind in kinds:
            cold_svc = f"{g.prefix}-cold-{kind.name}"
            pool_svc = f"{g.prefix}-pool-{kind.name}"
            print(f"{driver}/{kind.name}: warm-up start, then {args.starts} x (alone, cold)")
            cold_via_guard(g, f"warmup.cold-{kind.name}.test", cold_svc, 1, "warmup")
            alone: list[Alone] = []
            per_key: list[Cold] = []
            for i in range(args.starts):
                if docker is not None and driver == "docker":
                    alone.append(docker.sample(kind, i))
                else:
                    alone.append(alone_process(kind, tmp))
                time.sleep(0.1)
                key = f"k{i}"
                host = f"{key}.cold-{kind.name}.test"
                per_key.append(cold_via_guard(g, host, cold_svc, i + 2, key))
                time.sleep(0.1)
            warm = warm_via_guard(g, f"k0.cold-{kind.name}.test")
            warm_alone = warm_alone_sample(kind, tmp, docker)
            print(f"{driver}/{kind.name}: {args.pooled} pooled cold starts (sleep_after 1s)")
            pooled: list[Cold] = []
            for i in range(args.pooled):
                pooled.append(cold_via_guard(g, f"pool-{kind.name}.test", pool_svc, i + 1, None))
                g.wait_event("stopped", pool_svc, i + 1, 30)
                time.sleep(0.2)
            results.append(KindResult(driver, kind, alone, per_key, pooled, warm, warm_alone))
        if burst_kind is not None:
            for variant in burst_variants(driver):
                print(f"{driver}/{burst_kind.name}: {variant}, {args.burst} concurrent requests")
                bursts.append(run_burst(g, variant, burst_kind, args.burst))
    finally:
        g.stop()
        if docker is not None and driver == "docker":
            left = docker.remove_guard_leftovers(g.prefix)
            if left:
                print(f"cold_start.py: removed {left} containers Guard left", file=sys.stderr)
    return results, bursts


def warm_alone_sample(kind: Kind, tmp: Path, docker: Docker | None, n: int = 20) -> list[float]:
    """Warm TTFB of the instance itself (no Guard): one instance, n requests."""
    port = free_port()
    if kind.driver == "docker":
        assert docker is not None
        return docker.runner.run(_warm_docker(docker, kind, port, n))
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
    env.update(kind.env, PORT=str(port))
    proc = subprocess.Popen(
        kind.command,
        cwd=tmp,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_listening(port, time.perf_counter() + 30, lambda: proc.poll() is not None)
        return [timed_get(port, "127.0.0.1", "/", 10).ttfb_ms for _ in range(n)]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


async def _warm_docker(docker: Docker, kind: Kind, port: int, n: int) -> list[float]:
    config = {
        "Image": kind.image,
        "Cmd": list(kind.command),
        "Env": [f"PORT={port}"],
        "Labels": {BENCH_LABEL: docker.run_id},
        "HostConfig": {"NetworkMode": "host", "RestartPolicy": {"Name": "no"}},
    }
    container = await docker.client.containers.create(
        config, name=f"guard-bench-{docker.run_id}-warm"
    )
    try:
        await container.start()
        wait_listening(port, time.perf_counter() + 30, lambda: False)
        return [timed_get(port, "127.0.0.1", "/", 10).ttfb_ms for _ in range(n)]
    finally:
        await container.delete(force=True)


# -- report -------------------------------------------------------------------------------


def decomposition_table(results: list[KindResult]) -> str:
    rows = [
        "| driver | instance | path | n | TTFB | decision | create | start call | probe "
        "| ready→1st byte | held |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for path, samples in (("per-key", r.per_key), ("pooled", r.pooled)):
            if not samples:
                continue
            cols = [
                [s.ttfb for s in samples],
                [s.decision for s in samples],
                [s.create for s in samples],
                [s.start for s in samples],
                [s.probe for s in samples],
                [s.ready_to_first_byte for s in samples],
                [s.held for s in samples],
            ]
            cells = " | ".join(fmt(pct(c, 50)) for c in cols)
            rows.append(f"| {r.driver} | {r.kind.name} | {path} | {len(samples)} | {cells} |")
    return "\n".join(rows)


def comparison_table(results: list[KindResult]) -> str:
    rows = [
        "| driver | instance | alone: start call | alone: listening | alone: 1st byte "
        "| Guard cold TTFB | **Guard added** | added, paired p50 | <= 15 ms at p50? "
        "| warm TTFB alone / via Guard |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        listening = [a.listening for a in r.alone]
        ttfb = [c.ttfb for c in r.per_key]
        added50 = pct(ttfb, 50) - pct(listening, 50)
        added90 = pct(ttfb, 90) - pct(listening, 90)
        # Samples i of both kinds ran back to back: their difference cancels slow drift.
        paired = [t - a for t, a in zip(ttfb, listening, strict=True)]
        start_call = [a.create + a.start for a in r.alone]
        met = "yes" if added50 <= TARGET_ADDED_MS else "**no**"
        rows.append(
            f"| {r.driver} | {r.kind.name} | {p50_p90(start_call)} | {p50_p90(listening)} "
            f"| {p50_p90([a.first_byte for a in r.alone])} | {p50_p90(ttfb)} "
            f"| **{fmt(added50)} / {fmt(added90)}** | {fmt(pct(paired, 50))} | {met} "
            f"| {fmt(pct(r.warm_alone, 50))} / {fmt(pct(r.warm, 50))} |"
        )
    return "\n".join(rows)


def burst_table(bursts: list[Burst], driver_of: dict[int, str]) -> str:
    rows = [
        "| driver | instance | service | requests | starts | answered by | 200 | errors | p50 "
        "| p99 | max | all done |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for i, b in enumerate(bursts):
        errors = {k: v for k, v in b.statuses.items() if k != "200"}
        err = ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "0"
        setup = BURST_VARIANTS[b.variant][0]
        lat = b.latencies
        rows.append(
            f"| {driver_of[i]} | {b.kind} | {setup} | {b.requests} | {b.starts} "
            f"| {b.served_by or 'n/a'} | {b.statuses.get('200', 0)} | {err} "
            f"| {fmt(pct(lat, 50))} | {fmt(pct(lat, 99))} "
            f"| {fmt(max(lat) if lat else math.nan)} | {fmt(b.wall)} |"
        )
    return "\n".join(rows)


def environment(drivers: list[str]) -> str:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    rev = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    parts = [
        f"{len(os.sched_getaffinity(0))} CPUs (nproc), {model}, Linux {platform.release()}",
        f"Python {platform.python_version()}",
        f"checkout {rev or 'unknown'}",
        f"load average before the run {load}",
    ]
    if "docker" in drivers:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}} {{.Driver}}"],
            capture_output=True,
            text=True,
        ).stdout.split()
        if len(info) == 2:
            parts.append(f"dockerd {info[0]}, storage driver {info[1]}")
    return "; ".join(parts)


def report(
    results: list[KindResult],
    bursts: list[Burst],
    driver_of: dict[int, str],
    args: argparse.Namespace,
    env_line: str,
    skipped: list[str],
) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    command = shlex.join(["python", *sys.argv])
    kinds = "; ".join(f"{r.driver}/{r.kind.name} = {r.kind.about}" for r in results)
    skip = "".join(f"\n- Skipped: {s}" for s in skipped)
    out = f"""
## Cold start run {when}

- Command: `{command}`
- Machine: {env_line}
- Guard: `python -m guard run`, workers 1, httptools, readiness probe `http` every 15 ms;
  per-key services (a new key per request) for the cold starts, one unmeasured warm-up
  start first; pooled services with `sleep_after: 1s` for the pooled path.
- Instances: {kinds}{skip}

Where the time goes, p50 in ms ({args.starts} per-key cold starts, {args.pooled} pooled):

{decomposition_table(results)}

Guard next to the instance alone, p50 / p90 in ms:

{comparison_table(results)}
"""
    if bursts:
        out += f"""
Burst: {args.burst} concurrent connections, one `GET /` each, at a sleeping service
(latency = client connect to whole response, ms, successful requests only; answered by =
distinct instances that answered, from guard.demo's `x-demo-port`; "all done" = the last
response, ms after the first connect):

{burst_table(bursts, driver_of)}
"""
    out += "\nHow each column is measured:\n\n" + COLUMNS
    return out


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--driver", choices=["process", "docker", "both"], default="both")
    parser.add_argument("--starts", type=int, default=20, help="cold starts per instance kind")
    parser.add_argument("--pooled", type=int, default=5, help="pooled-path cold starts per kind")
    parser.add_argument(
        "--burst", type=int, default=1000, help="concurrent requests per burst (0: no burst)"
    )
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument(
        "--docker-socket", default="unix:///var/run/docker.sock", help="the docker driver's"
    )
    parser.add_argument(
        "--max-seconds", type=int, default=900, help="stop (cleaning up) after this long"
    )
    args = parser.parse_args(argv)
    if args.starts < 1 or args.pooled < 0 or args.burst < 0:
        parser.error("--starts must be >= 1, --pooled and --burst >= 0")
    return args


@contextlib.contextmanager
def _terminate_cleanly(max_seconds: int) -> Iterator[None]:
    # SIGTERM/SIGHUP and the overall deadline become SystemExit, so the finally blocks still
    # stop Guard and remove containers.
    def bail(signum: int, _frame: object) -> None:
        why = f"ran longer than {max_seconds} s" if signum == signal.SIGALRM else "got a signal"
        print(f"cold_start.py: {why}, stopping everything it started", file=sys.stderr)
        raise SystemExit(128 + signum)

    sigs = (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)
    old = {s: signal.signal(s, bail) for s in sigs}
    signal.alarm(max_seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        for s, handler in old.items():
            signal.signal(s, handler)


def docker_ready(socket_url: str) -> str | None:
    """None when the daemon answers and the image exists (built if missing), else why not."""
    sys.path.insert(0, str(REPO))
    from guard.drivers.docker import docker_available

    reason = asyncio.run(docker_available(socket_url))
    if reason is not None:
        return reason
    have = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True)
    if have.returncode != 0:
        built = subprocess.run(
            ["bash", str(BUILD_IMAGE), IMAGE], capture_output=True, text=True, timeout=120
        )
        if built.returncode != 0:
            return f"cannot build {IMAGE}: {built.stderr.strip() or built.stdout.strip()}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    drivers = ["process", "docker"] if args.driver == "both" else [args.driver]
    results: list[KindResult] = []
    bursts: list[Burst] = []
    driver_of: dict[int, str] = {}
    skipped: list[str] = []
    env_line = environment(drivers)
    run_id = uuid.uuid4().hex[:8]
    try:
        with (
            _terminate_cleanly(args.max_seconds),
            tempfile.TemporaryDirectory(prefix="guard-cold-") as t,
        ):
            tmp = Path(t)
            for driver in drivers:
                docker = None
                if driver == "docker":
                    reason = docker_ready(args.docker_socket)
                    if reason is not None:
                        if args.driver == "docker":
                            raise HarnessError(f"docker: {reason}")
                        skipped.append(f"docker ({reason})")
                        print(f"cold_start.py: skipping docker: {reason}", file=sys.stderr)
                        continue
                    docker = Docker(args.docker_socket, run_id)
                try:
                    found, made = measure_driver(driver, args, tmp, docker)
                finally:
                    if docker is not None:
                        docker.close()
                results += found
                for b in made:
                    driver_of[len(bursts)] = driver
                    bursts.append(b)
    except HarnessError as exc:
        print(f"cold_start.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cold_start.py: interrupted", file=sys.stderr)
        return 130

    text = report(results, bursts, driver_of, args, env_line, skipped)
    print(text)
    with args.results.open("a") as f:
        f.write(text)
    print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
