"""TCP and UDP listeners, side by side: Guard vs HAProxy ``mode tcp`` vs nginx ``stream``.

    python benchmarks/load_l4.py [--duration 5] [--bulk-mib 256] [--only tcp,bulk,udp]
                                 [--results benchmarks/RESULTS.md]

One run starts the demo echo backends (``python -m guard.demo tcp`` / ``udp``), Guard
(workers: 1) with a tcp and a udp listener in front of them, HAProxy (nbthread 1,
``mode tcp``) in front of the tcp echo and nginx (1 worker, ``stream`` module, udp) in
front of the udp echo, then measures, one target after the other:

* TCP request/response: 50 connections, each writing 1 KiB and waiting for the 1 KiB
  echo before the next, for ``--duration`` seconds (a uvloop callback client).
* TCP bulk: ``--bulk-mib`` MiB over one connection, echoed back (so 2x through the proxy),
  sent and received by two threads with 1 MiB socket calls; 1 GiB if 256 MiB took < 15 s.
* UDP: 20 client sockets, 64-byte datagrams, 8 in flight per socket, replies/s.

Next to the rate, each tcp-echo and udp row has the CPU time the target's processes (its
process group, from ``/proc``) spent per message during the measured window: on a shared
2-core box the rate moves with whatever else runs, the CPU per message much less.

"direct" is the echo backend without a proxy. Every process runs in its own process group
and is killed on the way out. CPUs are not pinned: on the 2-core reference machine the
client, the proxy and the Python echo backend share them, so absolute numbers are lower
than on a bigger box and the ratios are what to read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvloop

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path=os.pathsep.join(EXTRA_PATH))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pgid: dict[str, int] = {}  # log name -> process group (its own session)

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
            )
        self.procs.append(proc)
        self.pgid[log.stem] = proc.pid
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


_TICK = os.sysconf("SC_CLK_TCK")


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in process group ``pgid``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid:  # fields from "state": pgrp is the 3rd, utime the 12th
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def wait_tcp(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"x")
                if s.recv(1) == b"x":
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing echoes on tcp port {port}")


def wait_udp(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        while time.monotonic() < deadline:
            s.sendto(b"ready?", ("127.0.0.1", port))
            with contextlib.suppress(OSError):
                if s.recvfrom(100)[0] == b"ready?":
                    return
    raise RuntimeError(f"nothing echoes on udp port {port}")


# -- clients ---------------------------------------------------------------------------


class _EchoClient(asyncio.Protocol):
    def __init__(self, msg: bytes, counter: list[int], stop: list[bool]) -> None:
        self.msg = msg
        self.n = len(msg)
        self.got = 0
        self.counter = counter
        self.stop = stop
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.msg)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= self.n:
            self.got -= self.n
            self.counter[0] += 1
            if not self.stop[0]:
                self.transport.write(self.msg)  # type: ignore[union-attr]


async def _tcp_rr(port: int, conns: int, duration: float, pgid: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    counter, stop = [0], [False]
    msg = os.urandom(1024)
    transports = []
    for _ in range(conns):
        t, _ = await loop.create_connection(
            lambda: _EchoClient(msg, counter, stop), "127.0.0.1", port
        )
        transports.append(t)
    await asyncio.sleep(0.5)  # warm-up
    cpu0, start_count, start = group_cpu(pgid), counter[0], time.perf_counter()
    await asyncio.sleep(duration)
    count, cpu = counter[0] - start_count, group_cpu(pgid) - cpu0
    rate = count / (time.perf_counter() - start)
    stop[0] = True
    for t in transports:
        t.close()
    return rate, cpu / count * 1e6 if count else 0.0


def tcp_rr(port: int, conns: int, duration: float, pgid: int) -> tuple[float, float]:
    """(round trips/s, the target's CPU µs per round trip)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_tcp_rr(port, conns, duration, pgid))


def tcp_bulk(port: int, total: int) -> float:
    """MiB/s of payload (each byte crosses the proxy twice: out and echoed back)."""
    block = os.urandom(MiB)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MiB)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
        received = [0]

        def reader() -> None:
            buf = bytearray(MiB)
            while n := sock.recv_into(buf):
                received[0] += n

        start = time.perf_counter()
        t = threading.Thread(target=reader)
        t.start()
        for _ in range(total // MiB):
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        t.join()
        elapsed = time.perf_counter() - start
    if received[0] != total:
        raise RuntimeError(f"bulk: got {received[0]} of {total} bytes back")
    return total / MiB / elapsed


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self, counter: list[int], window: int) -> None:
        self.counter = counter
        self.window = window
        self.transport: asyncio.DatagramTransport | None = None
        self.last = 0
        self.msg = os.urandom(64)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.refill()

    def refill(self) -> None:
        for _ in range(self.window):
            self.transport.sendto(self.msg)  # type: ignore[union-attr]

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.counter[0] += 1
        self.last += 1
        self.transport.sendto(self.msg)  # type: ignore[union-attr]


async def _udp(
    port: int, clients: int, duration: float, pgid: int, window: int = 8
) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    counter = [0]
    protos = []
    for _ in range(clients):
        _, proto = await loop.create_datagram_endpoint(
            lambda: _UdpClient(counter, window), remote_addr=("127.0.0.1", port)
        )
        protos.append(proto)

    async def keep_windows_full() -> None:
        # A lost datagram shrinks a client's window for good: refill a silent client.
        while True:
            await asyncio.sleep(0.05)
            for p in protos:
                if p.last == 0:
                    p.refill()
                p.last = 0

    refiller = asyncio.ensure_future(keep_windows_full())
    await asyncio.sleep(0.5)
    cpu0, start_count, start = group_cpu(pgid), counter[0], time.perf_counter()
    await asyncio.sleep(duration)
    count, cpu = counter[0] - start_count, group_cpu(pgid) - cpu0
    rate = count / (time.perf_counter() - start)
    refiller.cancel()
    for p in protos:
        p.transport.close()  # type: ignore[union-attr]
    return rate, cpu / count * 1e6 if count else 0.0


def udp_rate(port: int, clients: int, duration: float, pgid: int) -> tuple[float, float]:
    """(echoed datagrams/s, the target's CPU µs per echoed datagram)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_udp(port, clients, duration, pgid))


# -- servers ---------------------------------------------------------------------------


def start_all(tmp: Path, procs: Procs, want_nginx: bool) -> dict[str, int]:
    ports = {k: free_port() for k in ("echo", "guard_tcp", "haproxy")}
    ports |= {k: free_port(socket.SOCK_DGRAM) for k in ("uecho", "guard_udp", "nginx_udp")}
    py = sys.executable
    procs.start([py, "-m", "guard.demo", "tcp", "--port", str(ports["echo"])], tmp / "echo.log")
    procs.start([py, "-m", "guard.demo", "udp", "--port", str(ports["uecho"])], tmp / "uecho.log")
    (tmp / "routes").mkdir()
    (tmp / "guard.yaml").write_text(f"""workers: 1
routes: routes
listeners:
  t: {{protocol: tcp, address: "127.0.0.1:{ports["guard_tcp"]}"}}
  u: {{protocol: udp, address: "127.0.0.1:{ports["guard_udp"]}"}}
""")
    (tmp / "routes" / "r.yaml").write_text(f"""routes:
  - {{name: t, listener: t, service: echo}}
  - {{name: u, listener: u, service: uecho}}
services:
  echo: {{servers: ["127.0.0.1:{ports["echo"]}"]}}
  uecho: {{servers: ["127.0.0.1:{ports["uecho"]}"]}}
""")
    procs.start([py, "-m", "guard", "run", "--config", str(tmp / "guard.yaml")], tmp / "guard.log")
    haproxy = which("haproxy")
    if haproxy:
        (tmp / "haproxy.cfg").write_text(f"""global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen echo
    bind 127.0.0.1:{ports["haproxy"]}
    server s1 127.0.0.1:{ports["echo"]}
""")
        procs.start([haproxy, "-db", "-f", str(tmp / "haproxy.cfg")], tmp / "haproxy.log")
    else:
        del ports["haproxy"]
    if want_nginx:
        (tmp / "nginx.conf").write_text(f"""load_module {STREAM_MODULE};
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
stream {{
    server {{
        listen 127.0.0.1:{ports["nginx_udp"]} udp;
        proxy_pass 127.0.0.1:{ports["uecho"]};
        proxy_responses 1;
        proxy_timeout 30s;
    }}
}}
""")
        nginx = which("nginx")
        assert nginx is not None
        procs.start([nginx, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], tmp / "nginx.log")
    else:
        del ports["nginx_udp"]
    wait_tcp(ports["echo"])
    wait_tcp(ports["guard_tcp"])
    if "haproxy" in ports:
        wait_tcp(ports["haproxy"])
    wait_udp(ports["uecho"])
    wait_udp(ports["guard_udp"])
    if "nginx_udp" in ports:
        wait_udp(ports["nginx_udp"])
    return ports


def nginx_has_stream() -> bool:
    nginx = which("nginx")
    return nginx is not None and STREAM_MODULE.exists()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--bulk-mib", type=int, default=256)
    ap.add_argument("--only", default="tcp,bulk,udp")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    args = ap.parse_args()
    only = set(args.only.split(","))
    want_nginx = nginx_has_stream()
    procs = Procs()
    rows: list[tuple[str, str, float, str]] = []  # (test, target, value, unit)
    cpu_us: dict[tuple[str, str], float] = {}  # (test, target) -> target's CPU µs per msg
    notes: list[str] = []
    if not want_nginx:
        notes.append("nginx stream module missing: UDP compared with direct only")
    with tempfile.TemporaryDirectory(prefix="guard-l4-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            ports = start_all(tmp, procs, want_nginx)
            pg = procs.pgid
            tcp_targets = [("direct", ports["echo"]), ("guard", ports["guard_tcp"])]
            tcp_pg = {"direct": pg["echo"], "guard": pg["guard"]}
            if "haproxy" in ports:
                tcp_targets.append(("haproxy", ports["haproxy"]))
                tcp_pg["haproxy"] = pg["haproxy"]
            udp_targets = [("direct", ports["uecho"]), ("guard", ports["guard_udp"])]
            udp_pg = {"direct": pg["uecho"], "guard": pg["guard"]}
            if "nginx_udp" in ports:
                udp_targets.append(("nginx", ports["nginx_udp"]))
                udp_pg["nginx"] = pg["nginx"]
            if "tcp" in only:
                for name, port in tcp_targets:
                    rate, us = tcp_rr(port, 50, args.duration, tcp_pg[name])
                    print(
                        f"tcp echo 1KiB x50  {name:8} {rate:12,.0f} msg/s  {us:6.2f} CPU us/msg",
                        flush=True,
                    )
                    rows.append(("tcp echo 1 KiB, 50 conns", name, rate, "msg/s"))
                    cpu_us[("tcp echo 1 KiB, 50 conns", name)] = us
            if "bulk" in only:
                size = args.bulk_mib * MiB
                # 1 GiB when the requested size is quick enough everywhere.
                trial = {name: tcp_bulk(port, size) for name, port in tcp_targets}
                if args.bulk_mib == 256 and all(256 / r < 15 for r in trial.values()):
                    size = 1024 * MiB
                    trial = {name: tcp_bulk(port, size) for name, port in tcp_targets}
                for name, rate in trial.items():
                    print(f"tcp bulk {size // MiB} MiB   {name:8} {rate:12,.0f} MiB/s", flush=True)
                    rows.append(
                        (f"tcp bulk {size // MiB} MiB, 1 conn (echoed)", name, rate, "MiB/s")
                    )
            if "udp" in only:
                for name, port in udp_targets:
                    rate, us = udp_rate(port, 20, args.duration, udp_pg[name])
                    print(
                        f"udp echo 64B x20   {name:8} {rate:12,.0f} dgram/s  {us:6.2f} CPU us/msg",
                        flush=True,
                    )
                    rows.append(("udp echo 64 B, 20 clients", name, rate, "dgram/s"))
                    cpu_us[("udp echo 64 B, 20 clients", name)] = us
        finally:
            procs.stop_all()
    table = render(rows, cpu_us, notes, args)
    print(table)
    with open(args.results, "a") as f:
        f.write(table)
    return 0


def render(
    rows: list[tuple[str, str, float, str]],
    cpu_us: dict[tuple[str, str], float],
    notes: list[str],
    args: argparse.Namespace,
) -> str:
    cmd = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/load_l4.py", *sys.argv[1:]])
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"\n## L4 (tcp/udp listeners), {when}\n",
        f"`{cmd}` on {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; backends: `python -m guard.demo tcp|udp`; "
        "Guard workers: 1, HAProxy nbthread 1, nginx 1 worker.\n",
        "| test | target | result | Guard ÷ target | target CPU µs/msg |",
        "|---|---|---:|---:|---:|",
    ]
    guard = {test: value for test, target, value, _ in rows if target == "guard"}
    for test, target, value, unit in rows:
        ratio = guard[test] / value if value and test in guard else 0.0
        rel = "1.00x" if target == "guard" else f"{ratio:.2f}x"
        us = cpu_us.get((test, target))
        cpu = f"{us:.2f}" if us is not None else "-"
        lines.append(f"| {test} | {target} | {value:,.0f} {unit} | {rel} | {cpu} |")
    lines.extend(f"\n{note}" for note in notes)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
