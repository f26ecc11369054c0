"""Readiness probes for starting instances (``container.ready``).

An instance is probed from the moment the driver started it until it answers: first after
1, 2, 4 and 8 ms (an app that listens within a few ms, like a static binary, is not made
to wait out a whole interval), then every ``PROBE_INTERVAL`` (10 ms, the low end of the
10-20 ms the contract asks for). Knative's activator probes every 200 ms and Cloudflare
polls every 300 ms, and that interval is most of their cold-start overhead. The probe also
watches the instance's exit: a process that dies while starting fails the wake at once
with its exit reason instead of waiting out the timeout.

- ``http: PATH`` — ``GET PATH`` answered with a status below 400 (as Kubernetes' httpGet).
- ``tcp: true`` — a TCP connection is accepted.
- ``udp: PAYLOAD`` — the payload is sent (again every interval); any reply means ready.
- ``delay: D`` — ready D after start (for apps no probe fits); combined with another
  probe, the delay is waited first.
- ``ports`` (API containers with several ports) — then each named extra tcp/http port
  must accept a TCP connection too: the app's listeners may come up in any order, and a
  request that woke the instance through its second port must not find it closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from guard.config.model import ReadyProbe
from guard.drivers.base import InstanceHandle

PROBE_INTERVAL = 0.010
FIRST_PAUSES = (0.001, 0.002, 0.004, 0.008)  # then PROBE_INTERVAL
_ATTEMPT_TIMEOUT = 1.0  # one probe attempt; the overall deadline bounds it further


class InstanceExited(Exception):
    """The instance exited before it was ready; the message is the driver's reason."""


class NotReadyInTime(Exception):
    """The probe did not pass before the deadline."""


async def wait_ready(
    handle: InstanceHandle,
    probe: ReadyProbe,
    *,
    timeout: float,
    exited: asyncio.Future[str],
    interval: float = PROBE_INTERVAL,
) -> None:
    """Return once ``handle`` passes ``probe``; raise ``InstanceExited`` as soon as
    ``exited`` resolves (with the reason), ``NotReadyInTime`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def pause(seconds: float) -> None:
        # Sleep, but wake at once when the instance exits.
        seconds = min(seconds, deadline - loop.time())
        if seconds > 0:
            await asyncio.wait((exited,), timeout=seconds)
        check()

    def check() -> None:
        if exited.done():
            raise InstanceExited(exited.result())
        if loop.time() >= deadline:
            raise NotReadyInTime(f"not ready within {timeout:g}s")

    async def until_accepts(port: int, http_path: str | None) -> None:
        attempt = 0
        while True:
            remaining = deadline - loop.time()
            timeout = min(_ATTEMPT_TIMEOUT, max(remaining, 0.001))
            if await check_once(handle.host, port, http_path, timeout):
                return
            await pause(FIRST_PAUSES[attempt] if attempt < len(FIRST_PAUSES) else interval)
            attempt += 1

    check()
    if probe.delay:
        await pause(probe.delay)
    if probe.udp is not None:
        await _udp_probe(handle, probe.udp, interval, exited, check)
    elif probe.http is not None or probe.tcp or not probe.delay:  # nothing set: tcp
        await until_accepts(handle.port, probe.http)
    if probe.ports:
        extra = dict(handle.ports)
        for name in probe.ports:
            await until_accepts(extra[name], None)


async def check_once(host: str, port: int, http_path: str | None, timeout: float) -> bool:
    """One probe: ``GET http_path`` answered below 400, or (no path) a TCP connect."""
    try:
        return await asyncio.wait_for(_attempt(host, port, http_path), timeout)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        return False


async def _attempt(host: str, port: int, path: str | None) -> bool:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if path is None:
            return True
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: guard-probe\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        line = await reader.readline()  # b"HTTP/1.1 200 OK\r\n"
        parts = line.split(None, 2)
        return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and 200 <= int(parts[1]) < 400
    finally:
        writer.close()


class _UdpReplies(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answered = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.answered.done():
            self.answered.set_result(None)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the app is not listening yet: keep probing


async def _udp_probe(
    handle: InstanceHandle,
    payload: bytes,
    interval: float,
    exited: asyncio.Future[str],
    check: Callable[[], None],
) -> None:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _UdpReplies, remote_addr=(handle.host, handle.port)
    )
    try:
        while True:
            with contextlib.suppress(OSError):
                transport.sendto(payload)
            await asyncio.wait(
                (proto.answered, exited), timeout=interval, return_when=asyncio.FIRST_COMPLETED
            )
            if proto.answered.done():
                return
            check()
    finally:
        transport.close()
