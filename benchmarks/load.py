"""Side-by-side load harness: Guard vs HAProxy vs nginx, all in front of the same backend.

    python benchmarks/load.py [--duration 6] [--connections 50] [--guard-parser httptools|h11]
                              [--only guard,guard-compiled,relay,haproxy,nginx,direct]
                              [--results benchmarks/RESULTS.md] [--guard-metrics]

One run starts a fast backend (nginx, 1 worker, 12-byte `return 200`), the three proxies in
front of it (one worker / thread each), waits for each to answer 200, then drives them one
after the other with `wrk -t1 -c50 --latency` (plus the backend directly, "direct") and
prints and appends a table. Every process it starts runs in its own process group and is
killed on the way out, whatever happens; every temp dir is removed.

``guard`` runs this checkout's sources as they are (pure Python); ``guard-compiled`` the same
sources with the hot path compiled by setup.py (``GUARD_COMPILE=1``, mypyc), built into the
temp dir first (mypy is pip-installed if missing): the two builds side by side.

``--guard-metrics`` gives Guard an admin address and scrapes its /metrics once a second
while wrk runs, to price what exporting costs. Recording (the per-request counters and
histograms) is always on in Guard: there is no switch for it to compare against.

CPUs are deliberately not pinned: the reference machine has 2 cores, and wrk and the server
under test share them, as they would in field-notes' "Measured here" numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS = ("guard", "guard-compiled", "relay", "haproxy", "nginx", "direct")
# What each target is, for the results file.
DESCRIPTIONS = {
    "guard": "Guard, workers: 1, pure Python",
    "guard-compiled": "Guard, workers: 1, hot path compiled with mypyc (GUARD_COMPILE=1)",
    "relay": "benchmarks/baseline_relay.py, a featureless uvloop+httptools relay (Python's floor)",
    "haproxy": "HAProxy, nbthread 1, http-reuse always",
    "nginx": "nginx proxy, 1 worker, upstream keepalive 64",
    "direct": "backend nginx without a proxy",
}
APT_PACKAGES = {"nginx": "nginx-light", "haproxy": "haproxy", "wrk": "wrk"}
# nginx and haproxy live in /usr/sbin, which a non-login PATH may not include.
EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")
# A high per-connection request limit everywhere we control it, so nobody pays for
# reconnects in the middle of the run (nginx closes keep-alive after 1000 by default).
KEEPALIVE_REQUESTS = 1_000_000


class HarnessError(Exception):
    """A failure worth a clear one-paragraph message rather than a traceback."""


# -- tools --------------------------------------------------------------------------------


def which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    return shutil.which(tool, path=os.pathsep.join(EXTRA_PATH))


def ensure_tools(tools: list[str]) -> dict[str, str]:
    """Find each tool; install the missing ones with apt-get when running as root."""
    missing = [t for t in tools if which(t) is None]
    if missing:
        packages = [APT_PACKAGES[t] for t in missing]
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise HarnessError(
                f"missing {', '.join(missing)}; install them with: "
                f"sudo apt-get install -y {' '.join(packages)}"
            )
        print(f"installing {' '.join(packages)} with apt-get ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", *packages], check=True, env=env)
    paths: dict[str, str] = {}
    for tool in tools:
        path = which(tool)
        if path is None:
            raise HarnessError(f"{tool} is still missing after apt-get install")
        paths[tool] = path
    return paths


def _first_line(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    # nginx -v prints to stderr; wrk -v prints its banner and exits 1. Take what there is.
    out = (proc.stdout + proc.stderr).strip().splitlines()
    return out[0].strip() if out else "unknown"


def tool_versions(paths: dict[str, str]) -> dict[str, str]:
    versions: dict[str, str] = {}
    if "nginx" in paths:
        versions["nginx"] = _first_line([paths["nginx"], "-v"]).removeprefix(
            "nginx version: nginx/"
        )
    if "haproxy" in paths:
        line = _first_line([paths["haproxy"], "-v"])
        versions["haproxy"] = line.removeprefix("HAProxy version ").split(" ")[0]
    if "wrk" in paths:
        versions["wrk"] = _first_line([paths["wrk"], "-v"]).removeprefix("wrk ").split(" [")[0]
    versions["python"] = platform.python_version()
    for mod in ("uvloop", "httptools", "h11"):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            versions[mod] = "not installed"
    return versions


def machine_info() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "kernel": platform.release(),
    }


# -- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise HarnessError(
                f"{self.name} exited early with code {self.proc.returncode}; "
                f"last output:\n{self.tail()}"
            )


class Processes:
    """Every process the harness starts, each in its own session (process group), so
    stopping one also stops whatever it forked (nginx workers, guard workers)."""

    def __init__(self) -> None:
        self.servers: list[Server] = []

    def start(self, name: str, cmd: list[str], port: int, log: Path, **kw: object) -> Server:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kw,  # type: ignore[arg-type]
            )
        server = Server(name, proc, port, log)
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            _signal_group(server.proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for server in reversed(self.servers):
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.proc.wait(max(0.1, deadline - time.monotonic()))
            # Whatever is left in the group (a stuck worker) gets SIGKILL.
            _signal_group(server.proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.proc.wait(2)
        self.servers.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The group id is the pid we started (start_new_session=True), never a guess by name.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def wait_ready(server: Server, timeout: float = 20) -> None:
    """Until GET / answers 200 (the process dying meanwhile is reported with its output)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        server.check_alive()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return
            last = f"status {resp.status}"
        except OSError as exc:
            last = str(exc)
        finally:
            conn.close()
        time.sleep(0.1)
    raise HarnessError(
        f"{server.name} on port {server.port} did not answer 200 within {timeout:.0f}s "
        f"({last}); last output:\n{server.tail()}"
    )


# -- configs ------------------------------------------------------------------------------


def _nginx_temp_paths(nginx: str, tmp: Path) -> str:
    """Point every temp path this nginx build has at our temp dir, so it needs nothing
    under /var/lib/nginx (a directive for a module that isn't built would be an error)."""
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    lines = []
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        flag = "client-body" if kind == "client_body" else kind
        if f"--http-{flag}-temp-path" in built:
            lines.append(f"    {kind}_temp_path {tmp}/{kind};")
    return "\n".join(lines)


def nginx_conf(nginx: str, tmp: Path, port: int, server_body: str, http_extra: str = "") -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{_nginx_temp_paths(nginx, tmp)}
    keepalive_requests {KEEPALIVE_REQUESTS};
    keepalive_timeout 75s;
{http_extra}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
{server_body}
    }}
}}
"""


def backend_conf(nginx: str, tmp: Path, port: int) -> str:
    return nginx_conf(
        nginx,
        tmp,
        port,
        '        location / { default_type text/plain; return 200 "hello world\\n"; }',
    )


def nginx_proxy_conf(nginx: str, tmp: Path, port: int, backend: int) -> str:
    upstream = f"""    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 64;
        keepalive_requests {KEEPALIVE_REQUESTS};
    }}"""
    body = """        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }"""
    return nginx_conf(nginx, tmp, port, body, upstream)


def haproxy_conf(port: int, backend: int) -> str:
    return f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    http-reuse always
    server s1 127.0.0.1:{backend}
"""


def guard_files(tmp: Path, port: int, backend: int, parser: str, admin: int | None = None) -> Path:
    """guard.yaml + routes/bench.yaml per docs/spec config.md: one listener, one route that
    matches everything, one static service pointing at the backend (and, with ``admin``,
    the admin address serving /metrics)."""
    routes = tmp / "routes"
    routes.mkdir()
    (routes / "bench.yaml").write_text(
        f"""routes:
  - name: bench
    listener: web
    service: backend

services:
  backend:
    servers: ["127.0.0.1:{backend}"]
"""
    )
    config = tmp / "guard.yaml"
    config.write_text(
        f"""workers: 1
routes: routes
listeners:
  web: {{protocol: http, address: "127.0.0.1:{port}"}}
http:
  parser: {parser}
"""
        + (f'admin: {{address: "127.0.0.1:{admin}"}}\n' if admin else "")
    )
    return config


class Scraper:
    """GET /metrics once a second in a thread, as Prometheus would, while wrk runs."""

    def __init__(self, port: int, interval: float = 1.0) -> None:
        self.port = port
        self.interval = interval
        self.scrapes = 0
        self.failures: list[str] = []
        self.last_size = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/metrics")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    self.failures.append(f"status {resp.status}")
                self.last_size = len(body)
                self.scrapes += 1
            except OSError as e:
                self.failures.append(str(e))
            finally:
                conn.close()
            self._stop.wait(self.interval)


# -- wrk ----------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def to_ms(text: str) -> float:
    """wrk latency like '512.00us', '1.23ms', '2.01s', '1.50m' -> milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unrecognised wrk latency {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(name: str, out: str) -> Result:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and p50 and p99):
        raise HarnessError(f"could not parse wrk output for {name}:\n{out}")
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return Result(name, float(rps.group(1)), to_ms(p50.group(1)), to_ms(p99.group(1)), errors)


def run_wrk(wrk: str, port: int, duration: float, connections: int) -> str:
    cmd = [
        wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency",
        f"http://127.0.0.1:{port}/",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if proc.returncode != 0:
        raise HarnessError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


# -- report -------------------------------------------------------------------------------


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}" if base else "n/a"


def table(results: list[Result]) -> str:
    by_name = {r.name: r for r in results}
    hap = by_name.get("haproxy")
    rows = [
        "| target | req/s | p50 | p99 | req/s vs HAProxy | p99 vs HAProxy | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.name} | {r.rps:,.0f} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms "
            f"| {_ratio(r.rps, hap.rps if hap else None)} "
            f"| {_ratio(r.p99_ms, hap.p99_ms if hap else None)} | {r.errors} |"
        )
    return "\n".join(rows)


def report(
    results: list[Result],
    args: argparse.Namespace,
    versions: dict[str, str],
    machine: dict[str, str],
) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    command = shlex.join(["python", *sys.argv])
    tools = ", ".join(f"{k} {v}" for k, v in versions.items())
    targets = "; ".join(f"{r.name} = {DESCRIPTIONS[r.name]}" for r in results)
    builds = "; ".join(f"{name}: `{text}`" for name, text in args.guard_builds.items())
    guard_note = f" Guard's parser: {args.guard_parser}; {builds}." if builds else ""
    if "guard" in args.only and args.guard_metrics:
        guard_note += " Guard with `admin:`, /metrics scraped every 1 s during the run."
    return f"""
## Load run {when}

- Command: `{command}`
- Machine: {machine["nproc"]} CPUs (nproc), {machine["cpu"]}, Linux {machine["kernel"]}
- Tools: {tools}
- Load: `wrk -t1 -c{args.connections} -d{args.duration:g}s --latency`, keep-alive GET /,
  backend nginx 1 worker `return 200 "hello world\\n"` (12-byte body), 1 s warm-up each,
  no CPU pinning.{guard_note}
- Targets: {targets}

{table(results)}
"""


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--guard-parser", choices=["httptools", "h11"], default="httptools")
    parser.add_argument(
        "--only",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)} (run in that order)",
    )
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument(
        "--guard-metrics",
        action="store_true",
        help="give Guard an admin address and scrape its /metrics every second during the run",
    )
    args = parser.parse_args(argv)
    chosen = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = sorted(set(chosen) - set(TARGETS))
    if unknown or not chosen:
        parser.error(f"--only takes a subset of {','.join(TARGETS)}; got {args.only!r}")
    args.only = [t for t in TARGETS if t in chosen]
    args.guard_builds = {}  # target -> what `guard --version` said
    return args


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    # SIGTERM/SIGHUP to the harness become SystemExit, so the finally blocks below still run
    # and no nginx or haproxy is left behind listening.
    def bail(signum: int, _frame: object) -> None:
        print(f"load.py: got signal {signum}, stopping everything it started", file=sys.stderr)
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, bail) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def compiled_copy(dest: Path) -> Path:
    """This checkout's guard/ with its hot path compiled in place by setup.py
    (GUARD_COMPILE=1, mypyc): the directory to put on PYTHONPATH."""
    try:
        import mypyc  # noqa: F401
    except ImportError:
        print("guard-compiled: installing mypy (mypyc) first", flush=True)
        pip = [sys.executable, "-m", "pip", "install", "-q", "mypy~=2.4.1"]
        subprocess.run(pip, check=True)
    dest.mkdir()
    shutil.copytree(REPO / "guard", dest / "guard", ignore=shutil.ignore_patterns("*.so"))
    shutil.copy2(REPO / "setup.py", dest / "setup.py")
    print("guard-compiled: compiling the hot path (~30 s)", flush=True)
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=dest,
        env=dict(os.environ, GUARD_COMPILE="1"),
        capture_output=True,
        text=True,
    )
    if build.returncode != 0:
        raise HarnessError(f"compiling the hot path failed:\n{build.stderr[-3000:]}")
    return dest


def start_all(
    args: argparse.Namespace, paths: dict[str, str], tmp: Path, procs: Processes
) -> dict[str, Server]:
    nginx = paths["nginx"]
    servers: dict[str, Server] = {}

    def nginx_server(name: str, conf_text: str, port: int) -> Server:
        d = tmp / name
        d.mkdir()
        conf = d / "nginx.conf"
        conf.write_text(conf_text)
        # -e: early errors (before the config is read) go to our dir, not /var/log/nginx.
        cmd = [nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]
        return procs.start(name, cmd, port, d / "output.log")

    backend_port = free_port()
    backend = nginx_server(
        "backend", backend_conf(nginx, tmp / "backend", backend_port), backend_port
    )
    wait_ready(backend)
    if "direct" in args.only:
        servers["direct"] = backend

    if "haproxy" in args.only:
        port = free_port()
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(haproxy_conf(port, backend_port))
        # -db: stay in the foreground, so the process we started is the one serving.
        servers["haproxy"] = procs.start(
            "haproxy", [paths["haproxy"], "-db", "-f", str(cfg)], port, tmp / "haproxy.log"
        )

    if "nginx" in args.only:
        port = free_port()
        servers["nginx"] = nginx_server(
            "nginx", nginx_proxy_conf(nginx, tmp / "nginx", port, backend_port), port
        )

    args.guard_admin = None
    for name in ("guard", "guard-compiled"):
        if name not in args.only:
            continue
        port = free_port()
        gdir = tmp / name
        gdir.mkdir()
        admin = free_port() if args.guard_metrics and name == "guard" else None
        if admin:
            args.guard_admin = admin
        config = guard_files(gdir, port, backend_port, args.guard_parser, admin)
        # `python -m guard` is the `guard` console script (guard.cli:main) run from this
        # checkout (or its compiled copy), so the code measured is the code in the tree,
        # not a stale install.
        code = REPO if name == "guard" else compiled_copy(tmp / "compiled")
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]).rstrip(
                os.pathsep
            ),
        )
        cmd = [sys.executable, "-m", "guard"]
        build = subprocess.run(
            [*cmd, "--version"], cwd=gdir, env=env, capture_output=True, text=True
        )
        args.guard_builds[name] = build.stdout.strip()
        servers[name] = procs.start(
            name,
            [*cmd, "run", "--config", str(config)],
            port,
            gdir / "guard.log",
            cwd=str(gdir),
            env=env,
        )

    if "relay" in args.only:
        # The featureless Python relay: the ceiling for any Python proxy on this machine.
        port = free_port()
        servers["relay"] = procs.start(
            "relay",
            [
                sys.executable,
                str(REPO / "benchmarks" / "baseline_relay.py"),
                str(port),
                str(backend_port),
            ],
            port,
            tmp / "relay.log",
        )

    for name in args.only:
        wait_ready(servers[name])
    return servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    needed = ["wrk", "nginx"] + (["haproxy"] if "haproxy" in args.only else [])
    procs = Processes()
    results: list[Result] = []
    try:
        with _terminate_cleanly(), tempfile.TemporaryDirectory(prefix="guard-load-") as t:
            tmp = Path(t)
            try:
                paths = ensure_tools(needed)
                versions = tool_versions(paths)
                machine = machine_info()
                servers = start_all(args, paths, tmp, procs)
                for name in args.only:
                    server = servers[name]
                    print(f"{name}: warm-up 1 s, then {args.duration:g} s ...", flush=True)
                    run_wrk(paths["wrk"], server.port, 1, args.connections)
                    server.check_alive()
                    admin = getattr(args, "guard_admin", None) if name == "guard" else None
                    with Scraper(admin) if admin else contextlib.nullcontext() as scraper:
                        out = run_wrk(paths["wrk"], server.port, args.duration, args.connections)
                    if scraper is not None:
                        if scraper.failures or not scraper.scrapes:
                            raise HarnessError(f"/metrics scrapes failed: {scraper.failures}")
                        print(
                            f"guard: {scraper.scrapes} scrapes of /metrics, "
                            f"{scraper.last_size} bytes each",
                            flush=True,
                        )
                    # A proxy that crashed mid-run would show as a pile of socket errors;
                    # say so plainly instead.
                    server.check_alive()
                    results.append(parse_wrk(name, out))
            finally:
                procs.stop_all()
    except HarnessError as exc:
        print(f"load.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # The finally blocks above have already stopped the servers and removed the temp dir.
        print("load.py: interrupted", file=sys.stderr)
        return 130

    text = report(results, args, versions, machine)
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    new_file = not args.results.exists()
    with args.results.open("a") as f:
        if new_file:
            f.write("# Load results\n\nAppended by `benchmarks/load.py`; newest last.\n")
        f.write(text)
    print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
