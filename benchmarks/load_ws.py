"""WebSocket through Guard, side by side with HAProxy and nginx (issue 3's benchmarks).

    python benchmarks/load_ws.py [--duration 5] [--connections 100] [--sizes 64,1024]
                                 [--idle 5000] [--tests echo,memory]
                                 [--targets direct,guard,guard-frames,haproxy,nginx]
                                 [--backend raw|demo] [--results benchmarks/RESULTS.md]

Two tests, everything on 127.0.0.1:

* **echo**: ``--connections`` WebSocket clients, each sending one binary message of each
  ``--sizes`` size and waiting for its echo before the next, for ``--duration`` seconds
  (after a 1 s warm-up): messages/s and p50/p99 round trip, per target in turn. Every
  echo is compared with what was sent; a missing, wrong or late echo is an error.
* **memory**: ``--idle`` WebSockets opened through each proxy and left idle; the proxy's
  RSS (``/proc``, its whole process group) before, with them open, after one message on
  each, after closing them, and again for a second round (a leak shows as growth there).
  Each proxy runs in a fresh process for this test, so memory freed by an earlier test
  and kept by the allocator cannot hide what the connections cost.

Targets: ``direct`` (the echo backend alone), ``guard`` (tunnel mode, the default),
``guard-frames`` (frame mode: the route has ``websocket: {max_message: 1MiB}``, wsproto
both sides), ``haproxy`` (nbthread 1, ``mode http``, which tunnels after the 101) and
``nginx`` (1 worker, ``proxy_http_version 1.1`` + ``Upgrade``/``Connection`` headers).
Guard runs ``workers: 1`` from this checkout. HAProxy and nginx are installed with apt-get
when missing (as root), like ``load.py`` does.

The backend (``--backend raw``, the default) is a minimal echo server in this file: raw
asyncio on uvloop, the handshake and frames parsed by hand, the payload unmasked with one
big-int XOR. ``--backend demo`` uses ``python -m guard.demo http``'s ``/ws`` (wsproto),
which is several times slower. The client is a hand-rolled framer for the fixed message
sizes (one precomputed masked frame, the expected echo compared as bytes; an echo that
comes back re-fragmented is reassembled and compared) in its own process(es)
(``--client-procs``). CPU seconds of the client, the proxy and the backend are
read from ``/proc`` over each measured window and printed as % of one core, so a reader
can see which process was the bottleneck. CPUs are not pinned: on the 2-core reference
machine all of them share both cores, so compare ratios within one run.

Every process runs in its own process group and gets SIGTERM then SIGKILL on the way out
(also on error, Ctrl-C, SIGTERM and after ``--max-seconds``); the temp dir is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import resource
import select
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import (  # noqa: E402  (benchmarks/load.py: tools, versions, process groups)
    HarnessError,
    _signal_group,
    ensure_tools,
    machine_info,
    tool_versions,
)

TARGETS = ("direct", "guard", "guard-frames", "haproxy", "nginx")
TESTS = ("echo", "memory")
DESCRIPTIONS = {
    "direct": "the echo backend alone",
    "guard": "Guard, workers: 1, tunnel mode (byte relay after the 101)",
    "guard-frames": "Guard, workers: 1, frame mode (`websocket: {max_message: 1MiB}`)",
    "haproxy": "HAProxy, nbthread 1, mode http, timeout tunnel 1h",
    "nginx": "nginx, 1 worker, proxy_http_version 1.1 + Upgrade/Connection headers",
}
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
KiB = 1024
WARMUP = 1.0  # seconds of echo before each measured window


# -- WebSocket bits shared by the client and the raw backend --------------------------------


def accept_value(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def frame_header(b0: int, n: int, mask: bytes = b"") -> bytes:
    m = 0x80 if mask else 0
    if n < 126:
        return bytes((b0, m | n)) + mask
    if n < 65536:
        return bytes((b0, m | 126)) + n.to_bytes(2, "big") + mask
    return bytes((b0, m | 127)) + n.to_bytes(8, "big") + mask


def xor_mask(payload: bytes, key: bytes) -> bytes:
    """RFC 6455 masking (its own inverse): one big-int XOR, ~3 us for 1 KiB."""
    n = len(payload)
    if not n:
        return b""
    keys = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")).to_bytes(
        n, "little"
    )


def upgrade_request(port: int, key: bytes) -> bytes:
    return (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (port, key)
    )


def is_101(head: bytes, accept: bytes) -> bool:
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 101"):
        return False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-accept":
            return value.strip() == accept
    return False


# -- the raw echo backend (`load_ws.py _backend --port P`) ---------------------------------


class EchoBackend(asyncio.Protocol):
    """One connection: a hand-parsed handshake, then every data frame echoed with its
    opcode and FIN bit, pings answered, a close answered and the socket closed."""

    __slots__ = ("buf", "open", "transport")

    def __init__(self) -> None:
        self.buf = b""
        self.open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.transport.resume_reading()  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.open:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > 16 * KiB:
                    self.transport.close()  # type: ignore[union-attr]
                else:
                    self.buf = data
                return
            self._handshake(data[:end])
            data = data[end + 4 :]
            if not data or self.transport.is_closing():  # type: ignore[union-attr]
                return
        self._frames(data)

    def _handshake(self, head: bytes) -> None:
        transport = self.transport
        assert transport is not None
        key = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        if key is None:
            transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            transport.close()
            return
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: %s\r\n\r\n" % accept_value(key)
        )
        self.open = True

    def _frames(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        out = []
        i, n = 0, len(data)
        while n - i >= 2:
            b0, b1 = data[i], data[i + 1]
            size, h = b1 & 0x7F, 2
            if size == 126:
                if n - i < 4:
                    break
                size, h = int.from_bytes(data[i + 2 : i + 4], "big"), 4
            elif size == 127:
                if n - i < 10:
                    break
                size, h = int.from_bytes(data[i + 2 : i + 10], "big"), 10
            if not b1 & 0x80:
                transport.close()  # a client frame must be masked
                return
            end = i + h + 4 + size
            if end > n:
                break
            payload = xor_mask(data[i + h + 4 : end], data[i + h : i + h + 4])
            i = end
            op = b0 & 0x0F
            if op == 0x8:
                out.append(frame_header(0x88, len(payload)) + payload)
                transport.write(b"".join(out))
                transport.close()
                return
            if op == 0x9:
                out.append(frame_header(0x8A, len(payload)) + payload)
            elif op != 0xA:
                out.append(frame_header(b0 & 0x8F, size) + payload)
        if i < n:
            self.buf = data[i:]
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))


async def _serve_backend(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoBackend, "127.0.0.1", port, backlog=4096, reuse_port=True)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    await stop
    server.close()


# -- the clients (`load_ws.py _client ...` and `load_ws.py _idle ...`) ---------------------


@dataclass
class ClientRun:
    """What one client process's connections share."""

    frame: bytes  # the masked frame every connection sends
    expect: bytes  # the unmasked echo frame it should get back
    payload: bytes  # the message: what a re-fragmented echo must add up to
    request: bytes
    accept: bytes
    recording: bool = False
    stopping: bool = False
    bad: int = 0  # echoes that differ from what was sent
    lost: int = 0  # connections closed by the other side while running
    rtts: array[int] = field(default_factory=lambda: array("q"))


class WsClient(asyncio.Protocol):
    """One client connection: handshake, then one message at a time, each sent when the
    previous one's echo came back (or, with ``stopping``, nothing more)."""

    __slots__ = (
        "buf", "closed", "count", "open", "opened", "parts", "run", "sent", "transport",
    )  # fmt: skip

    def __init__(self, run: ClientRun, opened: asyncio.Future[bool]) -> None:
        self.run = run
        self.opened = opened
        self.buf = b""
        self.parts: list[bytes] = []  # the payloads so far of a fragmented echo
        self.open = False
        self.closed = False
        self.sent = 0  # perf_counter_ns of the message in flight; 0: none
        self.count = 0  # echoes in the measured window
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.run.request)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_result(False)
        elif not self.run.stopping:
            self.run.lost += 1

    def send(self, now: int) -> None:
        self.sent = now
        self.transport.write(self.run.frame)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self._handshake(data)
        elif not self.buf and data == self.run.expect:
            self._echoed(True)  # the fast path: the whole echo, one frame, in one read
        else:
            self.buf += data
            self._frames()

    def _frames(self) -> None:
        """The slow path: an echo split across reads, or re-fragmented on the way (a frame
        relay may pass a message on in pieces, as RFC 6455 5.4 allows)."""
        buf = self.buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            size, h = b1 & 0x7F, 2
            if size == 126:
                size, h = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                size, h = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < h or len(buf) < h + size:
                break
            if b1 & 0x80 or b0 & 0x0F not in (0x0, 0x2):  # masked, or not binary data
                self.run.bad += 1
            self.parts.append(buf[h : h + size])
            buf = buf[h + size :]
            if b0 & 0x80:  # FIN: the message is complete
                message = b"".join(self.parts)
                self.parts.clear()
                self._echoed(message == self.run.payload)
        self.buf = buf

    def _echoed(self, ok: bool) -> None:
        run = self.run
        now = time.perf_counter_ns()
        if not ok or not self.sent:
            run.bad += 1
        if run.recording:
            run.rtts.append(now - self.sent)
            self.count += 1
        self.sent = 0
        if not run.stopping:
            self.sent = now
            self.transport.write(run.frame)  # type: ignore[union-attr]

    def _handshake(self, data: bytes) -> None:
        data = self.buf + data
        end = data.find(b"\r\n\r\n")
        if end < 0:
            self.buf = data
            return
        self.buf = data[end + 4 :]  # nothing should follow the 101 before the first echo
        self.open = is_101(data[:end], self.run.accept)
        if not self.opened.done():
            self.opened.set_result(self.open)
        if not self.open:
            self.transport.close()  # type: ignore[union-attr]


def make_run(port: int, size: int) -> ClientRun:
    key = base64.b64encode(os.urandom(16))
    mask = os.urandom(4)
    payload = os.urandom(size)
    return ClientRun(
        frame=frame_header(0x82, size, mask) + xor_mask(payload, mask),
        expect=frame_header(0x82, size) + payload,
        payload=payload,
        request=upgrade_request(port, key),
        accept=accept_value(key),
    )


async def open_clients(
    run: ClientRun, port: int, count: int, concurrency: int = 100
) -> tuple[list[WsClient], int]:
    """``count`` upgraded connections (at most ``concurrency`` handshakes at a time), and
    how many failed."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    failed = 0

    async def one() -> WsClient | None:
        nonlocal failed
        async with gate:
            opened: asyncio.Future[bool] = loop.create_future()
            try:
                _, proto = await loop.create_connection(
                    lambda: WsClient(run, opened), "127.0.0.1", port
                )
                if await asyncio.wait_for(opened, 15):
                    return proto  # type: ignore[return-value]
            except (OSError, TimeoutError):
                pass
            failed += 1
            return None

    clients = [c for c in await asyncio.gather(*(one() for _ in range(count))) if c]
    return clients, failed


async def _wait_echoes(clients: list[WsClient], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(c.sent and not c.closed for c in clients):
        await asyncio.sleep(0.02)


def _close_all(clients: list[WsClient]) -> None:
    close = frame_header(0x88, 2, b"\0\0\0\0") + (1000).to_bytes(2, "big")
    for c in clients:
        if not c.closed and c.transport is not None:
            c.transport.write(close)
            c.transport.close()


async def _echo_client(args: argparse.Namespace) -> dict[str, object]:
    run = make_run(args.port, args.size)
    clients, failed = await open_clients(run, args.port, args.connections)
    now = time.perf_counter_ns()
    for c in clients:
        c.send(now)
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    run.recording = True
    t0 = time.perf_counter()
    await asyncio.sleep(args.duration)
    run.recording = False
    elapsed = time.perf_counter() - t0
    run.stopping = True
    await _wait_echoes(clients, 3.0)
    missing = sum(1 for c in clients if c.sent and not c.closed)
    stalled = sum(1 for c in clients if not c.count)
    _close_all(clients)
    await asyncio.sleep(0.1)
    Path(args.rtt_file).write_bytes(run.rtts.tobytes())
    return {
        "messages": len(run.rtts),
        "elapsed": elapsed,
        "connections": len(clients),
        "failed": failed,
        "lost": run.lost,
        "bad": run.bad,
        "missing": missing,
        "stalled": stalled,
    }


def _say(obj: dict[str, object]) -> None:
    print(json.dumps(obj), flush=True)


async def _idle_client(args: argparse.Namespace) -> None:
    """Open ``--count`` WebSockets, report, then follow commands read from stdin:
    ``check`` (one message on each, report how many echoed), ``close`` (close, exit)."""
    loop = asyncio.get_running_loop()
    run = make_run(args.port, 64)
    run.stopping = True  # one message per check, none after it
    t0 = time.perf_counter()
    clients, failed = await open_clients(run, args.port, args.count)
    _say({"open": len(clients), "failed": failed, "seconds": time.perf_counter() - t0})
    while True:
        command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if command == "check":
            now = time.perf_counter_ns()
            for c in clients:
                if not c.closed:
                    c.send(now)
            await _wait_echoes(clients, 30.0)
            echoed = sum(1 for c in clients if not c.sent and not c.closed)
            _say({"echoed": echoed, "bad": run.bad, "closed": sum(c.closed for c in clients)})
        else:
            _close_all(clients)
            await asyncio.sleep(0.5)
            _say({"closed": len(clients)})
            return


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def role_main(role: str, argv: list[str]) -> int:
    """The child processes: ``_backend``, ``_client`` and ``_idle``."""
    raise_nofile()
    ap = argparse.ArgumentParser(prog=f"load_ws.py {role}")
    ap.add_argument("--port", type=int, required=True)
    if role == "_client":
        ap.add_argument("--size", type=int, required=True)
        ap.add_argument("--connections", type=int, required=True)
        ap.add_argument("--start-at", type=float, required=True)
        ap.add_argument("--duration", type=float, required=True)
        ap.add_argument("--rtt-file", required=True)
    elif role == "_idle":
        ap.add_argument("--count", type=int, required=True)
    args = ap.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if role == "_backend":
            runner.run(_serve_backend(args.port))
        elif role == "_client":
            _say(runner.run(_echo_client(args)))
        else:
            runner.run(_idle_client(args))
    return 0


# -- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path | None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 30) -> str:
        if self.log is None:
            return "(output not kept)"
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise HarnessError(
                f"{self.name} exited with code {self.proc.returncode}; last output:\n{self.tail()}"
            )


class Procs:
    """Every process started, each in its own session: stopping it stops its group."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(self, name: str, cmd: list[str], log: Path | None, **kw: object) -> Proc:
        if log is not None:
            with log.open("wb") as out:
                popen = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    **kw,  # type: ignore[arg-type]
                )
        else:
            popen = subprocess.Popen(cmd, start_new_session=True, **kw)  # type: ignore[arg-type]
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        _signal_group(proc.proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.proc.wait(5)
        _signal_group(proc.proc, signal.SIGKILL)  # whatever is left in its group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.proc.wait(2)
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            _signal_group(proc.proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.proc.wait(max(0.1, deadline - time.monotonic()))
            _signal_group(proc.proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.proc.wait(2)
        self.procs.clear()


def group_stats(pgids: list[int]) -> tuple[float, int]:
    """CPU seconds (user + system) and RSS bytes summed over these process groups."""
    wanted = set(pgids)
    cpu, rss = 0, 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[2]) in wanted:  # pgrp
            cpu += int(fields[11]) + int(fields[12])  # utime, stime
            rss += int(fields[21]) * PAGE
    return cpu / TICK, rss


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / TICK


def ws_probe(port: int, timeout: float = 2.0) -> None:
    """One handshake and one echoed message, blocking; raises OSError if either fails."""
    key = base64.b64encode(os.urandom(16))
    mask = os.urandom(4)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(upgrade_request(port, key))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise OSError("closed during the handshake")
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        if not is_101(head, accept_value(key)):
            raise OSError(f"no valid 101: {head[:80]!r}")
        s.sendall(frame_header(0x82, 5, mask) + xor_mask(b"probe", mask))
        want = frame_header(0x82, 5) + b"probe"
        while len(data) < len(want):
            chunk = s.recv(4096)
            if not chunk:
                raise OSError("closed before the echo")
            data += chunk
        if data != want:
            raise OSError(f"wrong echo {data!r}")


def wait_ready(proc: Proc, port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            ws_probe(port)
            return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise HarnessError(
        f"{proc.name} on port {port} echoed no WebSocket message within {timeout:.0f}s "
        f"({last}); last output:\n{proc.tail()}"
    )


# -- configs -------------------------------------------------------------------------------


def guard_files(d: Path, port: int, backend: int, frames: bool) -> Path:
    (d / "routes").mkdir(parents=True)
    ws = ", websocket: {max_message: 1MiB}" if frames else ""
    (d / "routes" / "ws.yaml").write_text(
        f"""routes:
  - {{name: ws, listener: web, service: echo{ws}}}
services:
  echo: {{servers: ["127.0.0.1:{backend}"]}}
"""
    )
    (d / "guard.yaml").write_text(
        f"""workers: 1
routes: routes
listeners:
  web: {{protocol: http, address: "127.0.0.1:{port}"}}
http:
  parser: httptools
  limits: {{max_connections: 20000, max_connections_per_ip: 10000}}
"""
    )
    return d / "guard.yaml"


def haproxy_conf(port: int, backend: int, maxconn: int) -> str:
    return f"""global
    nbthread 1
    maxconn {maxconn}

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h

frontend fe
    bind 127.0.0.1:{port}
    maxconn {maxconn}
    default_backend be

backend be
    server s1 127.0.0.1:{backend}
"""


def nginx_conf(nginx: str, d: Path, port: int, backend: int, nofile: int) -> str:
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    temp = "\n".join(
        f"    {kind}_temp_path {d}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        if f"--http-{kind.replace('_', '-')}-temp-path" in built
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
worker_rlimit_nofile {nofile};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {nofile - 100}; }}
http {{
    access_log off;
{temp}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{backend};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


@dataclass
class Env:
    args: argparse.Namespace
    tmp: Path
    procs: Procs
    paths: dict[str, str]
    backend_port: int = 0
    backends: list[Proc] = field(default_factory=list)
    serial: int = 0

    def start_backend(self) -> None:
        self.backend_port = port = free_port()
        py = sys.executable
        if self.args.backend == "demo":
            cmds = [[py, "-m", "guard.demo", "http", "--port", str(port)]]
        else:
            cmds = [
                [py, str(Path(__file__).resolve()), "_backend", "--port", str(port)]
            ] * self.args.backend_procs
        for i, cmd in enumerate(cmds):
            self.backends.append(
                self.procs.start(f"backend{i}", cmd, self.tmp / f"backend{i}.log", cwd=REPO)
            )
        for proc in self.backends:
            wait_ready(proc, port)

    def start_target(self, name: str) -> tuple[Proc | None, int]:
        """A fresh process of this target in front of the backend, once it echoes."""
        if name == "direct":
            return None, self.backend_port
        self.serial += 1
        d = self.tmp / f"{name}-{self.serial}"
        d.mkdir()
        port = free_port()
        backend = self.backend_port
        if name in ("guard", "guard-frames"):
            config = guard_files(d, port, backend, frames=name == "guard-frames")
            env = dict(os.environ, PYTHONPATH=str(REPO))
            cmd = [sys.executable, "-m", "guard", "run", "--config", str(config)]
            proc = self.procs.start(name, cmd, d / "guard.log", cwd=d, env=env)
        elif name == "haproxy":
            (d / "haproxy.cfg").write_text(haproxy_conf(port, backend, self.args.idle + 1000))
            cmd = [self.paths["haproxy"], "-db", "-f", str(d / "haproxy.cfg")]
            proc = self.procs.start(name, cmd, d / "haproxy.log")
        else:
            conf = d / "nginx.conf"
            conf.write_text(nginx_conf(self.paths["nginx"], d, port, backend, self.args.nofile))
            cmd = [self.paths["nginx"], "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]
            proc = self.procs.start(name, cmd, d / "output.log")
        wait_ready(proc, port)
        return proc, port


# -- the echo test --------------------------------------------------------------------------


@dataclass
class EchoRow:
    target: str
    size: int
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_client: float  # % of one core over the window
    cpu_proxy: float | None
    cpu_backend: float
    cpu_others: float  # the rest of the machine (other users, softirq), % of one core
    errors: dict[str, int]

    @property
    def proxy_us(self) -> float | None:
        """The proxy's CPU time per message (both relays of a round trip), in us."""
        if self.cpu_proxy is None or not self.rate:
            return None
        return self.cpu_proxy * 1e4 / self.rate


def percentile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return float("nan")
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


def run_echo(env: Env, name: str, proxy: Proc | None, port: int, size: int) -> EchoRow:
    args = env.args
    start_at = time.time() + 1.5 + WARMUP
    clients: list[tuple[Proc, Path]] = []
    share = [args.connections // args.client_procs] * args.client_procs
    share[0] += args.connections - sum(share)
    for i, n in enumerate(share):
        rtt_file = env.tmp / f"rtt-{name}-{size}-{i}.bin"
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "_client", "--port", str(port),
            "--size", str(size), "--connections", str(n), "--start-at", f"{start_at:.3f}",
            "--duration", str(args.duration), "--rtt-file", str(rtt_file),
        ]  # fmt: skip
        proc = env.procs.start(f"client{i}", cmd, None, stdout=subprocess.PIPE, cwd=REPO)
        clients.append((proc, rtt_file))
    groups = {
        "client": [p.pid for p, _ in clients],
        "proxy": [proxy.pid] if proxy else [],
        "backend": [b.pid for b in env.backends],
    }
    time.sleep(max(0.0, start_at - time.time()))
    before = {k: group_stats(v)[0] for k, v in groups.items()}
    busy0 = machine_busy()
    t0 = time.perf_counter()
    time.sleep(args.duration)
    busy1 = machine_busy()
    after = {k: group_stats(v)[0] for k, v in groups.items()}
    window = time.perf_counter() - t0
    cpu = {k: 100 * (after[k] - before[k]) / window for k in groups}
    others = 100 * (busy1 - busy0) / window - sum(cpu.values())
    errors = {"failed": 0, "lost": 0, "bad": 0, "missing": 0, "stalled": 0}
    messages, elapsed = 0, 0.0
    rtts = array("q")
    for proc, rtt_file in clients:
        try:
            out, _ = proc.proc.communicate(timeout=args.duration + 60)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"{proc.name} for {name} did not finish") from exc
        env.procs.stop(proc)
        if proc.proc.returncode != 0 or not out:
            raise HarnessError(f"{proc.name} for {name} failed ({proc.proc.returncode})")
        result = json.loads(out.decode().strip().splitlines()[-1])
        messages += result["messages"]
        elapsed = max(elapsed, result["elapsed"])
        for k in errors:
            errors[k] += result[k]
        rtts.frombytes(rtt_file.read_bytes())
    if proxy is not None:
        proxy.check_alive()
    ordered = sorted(rtts)
    return EchoRow(
        target=name,
        size=size,
        rate=messages / elapsed if elapsed else 0.0,
        p50_ms=percentile(ordered, 0.50),
        p99_ms=percentile(ordered, 0.99),
        cpu_client=cpu["client"],
        cpu_proxy=cpu["proxy"] if proxy else None,
        cpu_backend=cpu["backend"],
        cpu_others=max(0.0, others),
        errors={k: v for k, v in errors.items() if v},
    )


# -- the memory test ------------------------------------------------------------------------


@dataclass
class MemRow:
    target: str
    count: int
    base: int  # RSS bytes before the round's connections
    open: int  # with them open and idle
    after_msg: int  # after one message on each, idle again
    closed: int  # after closing them
    open2: int  # second round, open
    closed2: int  # second round, closed
    opened: int
    echoed: int
    failed: int
    open_seconds: float


class IdleClients:
    """A ``_idle`` child: opens N WebSockets, then obeys ``check`` / ``close`` on stdin."""

    def __init__(self, env: Env, port: int, count: int) -> None:
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "_idle",
            "--port", str(port), "--count", str(count),
        ]  # fmt: skip
        self.proc = env.procs.start(
            "idle-client", cmd, None, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO
        )
        self.env = env

    def read(self, timeout: float) -> dict[str, int | float]:
        stdout = self.proc.proc.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if ready else b""
        if not line:
            self.proc.check_alive()
            raise HarnessError(f"the idle client said nothing within {timeout:.0f}s")
        return json.loads(line)  # type: ignore[no-any-return]

    def command(self, text: str, timeout: float) -> dict[str, int | float]:
        stdin = self.proc.proc.stdin
        assert stdin is not None
        stdin.write(text.encode() + b"\n")
        stdin.flush()
        return self.read(timeout)

    def close(self) -> None:
        self.command("close", 60)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.proc.wait(10)
        self.env.procs.stop(self.proc)


def settled_rss(pgid: int, seconds: float = 2.0) -> int:
    time.sleep(seconds)
    return group_stats([pgid])[1]


def run_memory(env: Env, name: str) -> MemRow:
    count = env.args.idle
    proxy, port = env.start_target(name)
    assert proxy is not None
    try:
        # Warm-up: a few hundred upgrades and messages, so first-use allocations (imports,
        # caches, pools) are not counted as the connections' cost.
        warm = IdleClients(env, port, 200)
        warm.read(60)
        warm.command("check", 60)
        warm.close()
        base = settled_rss(proxy.pid)
        idle = IdleClients(env, port, count)
        opened = idle.read(300)
        open_rss = settled_rss(proxy.pid)
        check = idle.command("check", 60)
        after_msg = settled_rss(proxy.pid)
        idle.close()
        closed = settled_rss(proxy.pid)
        again = IdleClients(env, port, count)
        again.read(300)
        open2 = settled_rss(proxy.pid)
        again.close()
        closed2 = settled_rss(proxy.pid)
        proxy.check_alive()
    finally:
        env.procs.stop(proxy)
    return MemRow(
        target=name,
        count=count,
        base=base,
        open=open_rss,
        after_msg=after_msg,
        closed=closed,
        open2=open2,
        closed2=closed2,
        opened=int(opened["open"]),
        echoed=int(check["echoed"]) - int(check["bad"]),
        failed=int(opened["failed"]),
        open_seconds=float(opened["seconds"]),
    )


# -- report ---------------------------------------------------------------------------------


def _fmt_size(n: int) -> str:
    return f"{n} B" if n < KiB else f"{n // KiB} KiB"


def echo_table(rows: list[EchoRow]) -> str:
    lines = [
        "| size | target | msg/s | p50 | p99 | msg/s vs HAProxy | proxy CPU / msg "
        "| CPU client | CPU proxy | CPU backend | CPU rest of machine | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    hap = {r.size: r.rate for r in rows if r.target == "haproxy"}
    for r in rows:
        ratio = f"{r.rate / hap[r.size]:.2f}" if hap.get(r.size) else "n/a"
        proxy = f"{r.cpu_proxy:.0f} %" if r.cpu_proxy is not None else "-"
        per_msg = f"{r.proxy_us:.1f} us" if r.proxy_us is not None else "-"
        errors = ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "0"
        lines.append(
            f"| {_fmt_size(r.size)} | {r.target} | {r.rate:,.0f} | {r.p50_ms:.2f} ms "
            f"| {r.p99_ms:.2f} ms | {ratio} | {per_msg} | {r.cpu_client:.0f} % | {proxy} "
            f"| {r.cpu_backend:.0f} % | {r.cpu_others:.0f} % | {errors} |"
        )
    return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / (KiB * KiB):.1f} MiB"


def memory_table(rows: list[MemRow]) -> str:
    lines = [
        "| target | RSS before | with N idle | KiB / idle conn | after 1 msg each (KiB/conn) "
        "| closed | 2nd round open (KiB/conn) | 2nd round closed | opened / echoed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per = (r.open - r.base) / r.count / KiB
        per_msg = (r.after_msg - r.base) / r.count / KiB
        per2 = (r.open2 - r.closed) / r.count / KiB
        failed = f" ({r.failed} failed)" if r.failed else ""
        lines.append(
            f"| {r.target} | {_mib(r.base)} | {_mib(r.open)} | **{per:.1f}** "
            f"| {_mib(r.after_msg)} ({per_msg:.1f}) | {_mib(r.closed)} "
            f"| {_mib(r.open2)} ({per2:.1f}) | {_mib(r.closed2)} "
            f"| {r.opened}{failed} / {r.echoed} |"
        )
    return "\n".join(lines)


def checkout_state() -> str:
    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", *cmd], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--", "guard")
    return git("rev-parse", "--short", "HEAD") + (
        " (guard/ has uncommitted changes)" if dirty else ""
    )


def report(
    args: argparse.Namespace,
    echo: list[EchoRow],
    memory: list[MemRow],
    versions: dict[str, str],
    machine: dict[str, str],
) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "benchmarks/load_ws.py", *sys.argv[1:]])
    tools = ", ".join(f"{k} {v}" for k, v in versions.items())
    backend = (
        "`python -m guard.demo http` /ws (wsproto)"
        if args.backend == "demo"
        else f"the raw asyncio echo in load_ws.py ({args.backend_procs} process"
        f"{'es' if args.backend_procs > 1 else ''}, uvloop, hand-parsed frames)"
    )
    targets = "; ".join(f"{t} = {DESCRIPTIONS[t]}" for t in args.targets)
    parts = [
        f"\n## WebSocket run {when}\n",
        f"- Command: `{command}`",
        f"- Machine: {machine['nproc']} CPUs (nproc), {machine['cpu']}, Linux {machine['kernel']}",
        f"- Tools: {tools}; checkout {checkout_state()}",
        f"- Backend: {backend}. Client: hand-rolled framer, uvloop, "
        f"{args.client_procs} process{'es' if args.client_procs > 1 else ''}, every echo "
        "compared with what was sent. No CPU pinning.",
        f"- Targets: {targets}",
    ]
    if echo:
        parts += [
            "",
            f"Echo: {args.connections} connections, one binary message in flight each, "
            f"{WARMUP:g} s warm-up then {args.duration:g} s measured. CPU = % of one core "
            "over the measured window, from /proc (the client's, the proxy's process "
            "group, the backend's; rest of machine = /proc/stat busy minus those three: "
            "other users of the box, and softirq time charged to no process). Proxy CPU / "
            "msg = the proxy's CPU time per echoed message (both directions), the figure "
            "least moved by other load.",
            "",
            echo_table(echo),
        ]
    if memory:
        parts += [
            "",
            f"Memory: N = {args.idle} idle WebSockets through a fresh proxy process "
            "(after a warm-up of 200), RSS of its process group from /proc, read 2 s after "
            "each step. KiB / idle conn = (with N idle - before) / N; after 1 msg = one "
            "64 B message echoed on each, then idle again; 2nd round = the same again after "
            "closing (KiB/conn from the closed level).",
            "",
            memory_table(memory),
        ]
    return "\n".join(parts) + "\n"


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per echo run")
    ap.add_argument("--connections", type=int, default=100, help="echo clients")
    ap.add_argument("--sizes", default="64,1024", help="message sizes in bytes, comma-separated")
    ap.add_argument("--idle", type=int, default=5000, help="idle WebSockets in the memory test")
    ap.add_argument("--tests", default=",".join(TESTS))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--backend", choices=["raw", "demo"], default="raw")
    ap.add_argument("--backend-procs", type=int, default=1, help="raw backend processes")
    ap.add_argument("--client-procs", type=int, default=1, help="echo client processes")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    ap.add_argument("--max-seconds", type=float, default=900, help="stop (cleanly) after this")
    args = ap.parse_args(argv)
    args.tests = [t for t in TESTS if t in args.tests.split(",")]
    args.targets = [t for t in TARGETS if t in args.targets.split(",")]
    if not args.tests or not args.targets:
        ap.error(f"--tests takes {','.join(TESTS)}; --targets takes {','.join(TARGETS)}")
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if args.backend == "demo":
        args.backend_procs = 1
    args.nofile = raise_nofile()
    # Each proxy holds two sockets per idle WebSocket.
    if "memory" in args.tests and 2 * args.idle + 500 > args.nofile:
        ap.error(f"--idle {args.idle} needs {2 * args.idle + 500} descriptors; the limit here "
                 f"is {args.nofile}")  # fmt: skip
    return args


@contextlib.contextmanager
def stop_on_signals(max_seconds: float) -> Iterator[None]:
    def bail(signum: int, _frame: object) -> None:
        why = "out of time (--max-seconds)" if signum == signal.SIGALRM else f"signal {signum}"
        print(f"load_ws.py: {why}: stopping everything it started", file=sys.stderr)
        raise SystemExit(128 + signum)

    sigs = (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)
    old = {s: signal.signal(s, bail) for s in sigs}
    signal.setitimer(signal.ITIMER_REAL, max_seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, handler in old.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = [t for t in ("haproxy", "nginx") if t in args.targets]
    procs = Procs()
    echo: list[EchoRow] = []
    memory: list[MemRow] = []
    try:
        with (
            stop_on_signals(args.max_seconds),
            tempfile.TemporaryDirectory(prefix="guard-ws-") as t,
        ):
            try:
                paths = ensure_tools(tools) if tools else {}
                versions = tool_versions(paths)
                machine = machine_info()
                env = Env(args, Path(t), procs, paths)
                env.start_backend()
                if "echo" in args.tests:
                    running = {name: env.start_target(name) for name in args.targets}
                    for size in args.sizes:
                        for name in args.targets:
                            proxy, port = running[name]
                            print(f"echo {size} B, {name} ...", flush=True)
                            row = run_echo(env, name, proxy, port, size)
                            print(echo_table([row]).splitlines()[-1], flush=True)
                            echo.append(row)
                    for proxy, _ in running.values():
                        if proxy is not None:
                            procs.stop(proxy)
                if "memory" in args.tests:
                    for name in args.targets:
                        if name == "direct":
                            continue
                        print(f"memory, {args.idle} idle, {name} ...", flush=True)
                        memory.append(run_memory(env, name))
                        print(memory_table(memory[-1:]).splitlines()[-1], flush=True)
            finally:
                procs.stop_all()
    except HarnessError as exc:
        print(f"load_ws.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("load_ws.py: interrupted", file=sys.stderr)
        return 130
    text = report(args, echo, memory, versions, machine)
    print(text)
    with args.results.open("a") as f:
        f.write(text)
    print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_backend", "_client", "_idle"):
        sys.exit(role_main(sys.argv[1], sys.argv[2:]))
    sys.exit(main())
