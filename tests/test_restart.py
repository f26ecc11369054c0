"""Binary restarts (SIGUSR2) and route reloads (SIGHUP) under a constant load: real Guard
processes, real sockets, keep-alive clients that count every failure and every reset."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import REPO, Closed, Conn, Demo, run_demo, wait_for
from l4_procs import Child, free_port, start_demo


def alive(pid: int) -> bool:
    """Running (a zombie, exited but not reaped by its new parent, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@dataclass
class Load:
    """``clients`` threads, each sending GETs one after another on a keep-alive connection
    (a new one when Guard answers ``Connection: close``) until stopped. Any answer but a
    200, any connection closed or reset under a request, is recorded."""

    port: int
    clients: int = 4
    ok: int = 0
    reconnects: int = 0
    failures: list[str] = field(default_factory=list)
    resets: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.clients):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)

    def _run(self, i: int) -> None:
        conn: Conn | None = None
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                if conn is None:
                    conn = Conn(self.port, timeout=10)
                conn.request("GET", f"/?client={i}&n={n}", host="load.test")
                resp = conn.read_response()
            except ConnectionResetError as e:
                self._fail(f"client {i} request {n}: reset: {e}", reset=True)
                conn = None
                continue
            except (OSError, Closed) as e:
                self._fail(f"client {i} request {n}: {type(e).__name__}: {e}")
                conn = None
                continue
            with self.lock:
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"client {i} request {n}: {resp.status} {resp.body!r}")
            if (resp.header("connection") or "").lower() == "close":
                conn.close()
                conn = None
                with self.lock:
                    self.reconnects += 1
        if conn is not None:
            conn.close()

    def _fail(self, what: str, *, reset: bool = False) -> None:
        with self.lock:
            self.failures.append(what)
            self.resets += reset

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def count(self) -> int:
        with self.lock:
            return self.ok


@contextlib.contextmanager
def guard_group(config: Path) -> Iterator[Child]:
    """``guard run`` in its own process group: the Guards it restarts into join that group,
    and all of them are stopped at the end."""
    child = Child(["-m", "guard", "run", "--config", str(config)])
    try:
        yield child
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(15)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.killpg(child.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
        child.stop()


def write_config(
    tmp: Path,
    backend: str,
    *,
    workers: int,
    listeners: dict[str, object] | None = None,
    extra: dict[str, object] | None = None,
) -> tuple[Path, int, Path]:
    """guard.yaml (JSON is YAML) with an http listener ``web`` and ``listeners``, an admin
    address, a pid file and ``extra``; one route to ``backend``."""
    port = free_port()
    (tmp / "routes").mkdir(exist_ok=True)
    cfg = tmp / "guard.yaml"
    doc = {
        "workers": workers,
        "routes": "routes",
        "pid_file": "guard.pid",
        "listeners": {
            "web": {"protocol": "http", "address": f"127.0.0.1:{port}"},
            **(listeners or {}),
        },
        "admin": {"address": f"127.0.0.1:{free_port()}"},
        "http": {"timeouts": {"drain": "10s"}},
        **(extra or {}),
    }
    cfg.write_text(json.dumps(doc, indent=1))
    write_routes(tmp, backend, hosts=["load.test"])
    return cfg, port, tmp / "guard.pid"


def write_routes(tmp: Path, backend: str, *, hosts: list[str]) -> None:
    routes = "".join(
        f"  - {{name: r{i}, listener: web, service: demo, match: {{host: {h}}}}}\n"
        for i, h in enumerate(hosts)
    )
    (tmp / "routes" / "main.yaml").write_text(
        f'routes:\n{routes}services:\n  demo: {{servers: ["{backend}"]}}\n'
    )


def wait_pid(pid_file: Path, *, other_than: int | None, child: Child, timeout: float = 20) -> int:
    """The pid in ``pid_file`` once it names a running Guard (other than ``other_than``)."""
    found: list[int] = []

    def ready() -> bool:
        pid = read_pid(pid_file)
        if pid is not None and pid != other_than and alive(pid):
            found.append(pid)
            return True
        if other_than is None and child.proc.poll() is not None:
            raise AssertionError(f"guard exited with {child.proc.returncode}")
        return False

    try:
        wait_for(ready, timeout, f"a pid in {pid_file}")
    except AssertionError:
        raise AssertionError(child.output) from None
    return found[-1]


def workers_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    with run_demo(tmp_path) as d:
        yield d


@pytest.mark.parametrize("workers", [1, 2])
def test_restart_and_reload_under_load_lose_nothing(
    tmp_path: Path, demo: Demo, workers: int
) -> None:
    cfg, port, pid_file = write_config(tmp_path, demo.address, workers=workers)
    with guard_group(cfg) as g:
        first = wait_pid(pid_file, other_than=None, child=g)
        assert first == g.proc.pid
        if workers > 1:
            wait_for(lambda: len(workers_of(first)) == workers, 10, "the workers")
        old_workers = workers_of(first)
        load = Load(port)
        load.start()
        try:
            wait_for(lambda: load.count() > 50, 10, "load flowing")
            # A route reload under load: a second host name starts to route.
            write_routes(tmp_path, demo.address, hosts=["load.test", "two.test"])
            os.kill(first, signal.SIGHUP)
            time.sleep(0.5)
            # The binary restart: a new Guard takes the sockets, the old one drains.
            before = load.count()
            os.kill(first, signal.SIGUSR2)
            second = wait_pid(pid_file, other_than=first, child=g)
            assert g.proc.wait(20) == 0, g.output  # drained and exited cleanly
            assert all(not alive(w) for w in old_workers)
            handed_over_at = load.count()
            assert handed_over_at > before
            wait_for(lambda: load.count() > handed_over_at + 100, 10, "load on the new Guard")
            # And a route reload on the new Guard, under load again.
            write_routes(tmp_path, demo.address, hosts=["load.test", "three.test"])
            os.kill(second, signal.SIGHUP)
            time.sleep(0.5)
        finally:
            load.finish()
        assert load.failures == [], (load.failures[:10], g.output[-3000:])
        assert load.resets == 0
        assert load.ok > handed_over_at + 100
        assert load.reconnects >= load.clients  # every client was told to go, once at least
        assert alive(second) and second != first
        if workers > 1:
            assert len(workers_of(second)) == workers
        with Conn(port) as c:
            c.request(host="three.test")
            assert c.read_response().status == 200
            c.request(host="two.test")
            assert c.read_response().status == 404  # the reload on the new Guard applied
        out = g.output
        assert f"pid {second} takes over from pid {first}" in out
        assert "inherited: web stream 127.0.0.1" in out
        assert f"restart: pid {second} serves (adopted 0 instances); pid {first} stops" in out


@pytest.mark.parametrize("workers", [1, 2])
def test_a_broken_successor_leaves_the_old_guard_serving(
    tmp_path: Path, demo: Demo, workers: int
) -> None:
    cfg, port, pid_file = write_config(tmp_path, demo.address, workers=workers)
    with guard_group(cfg) as g:
        first = wait_pid(pid_file, other_than=None, child=g)
        good = cfg.read_text()
        cfg.write_text(good.replace('"routes": "routes"', '"routes": "routes", "bogus_key": 1'))
        load = Load(port, clients=2)
        load.start()
        try:
            wait_for(lambda: load.count() > 20, 10, "load flowing")
            os.kill(first, signal.SIGUSR2)
            m = wait_for_line(g, r"restart failed: new Guard \(pid (\d+)\) exited with status 2")
            failed_pid = int(m)
            assert not alive(failed_pid)
            assert "guard.yaml: unknown key 'bogus_key'" in g.output, g.output
            before = load.count()
            wait_for(lambda: load.count() > before + 50, 10, "the old Guard still serving")
            assert g.proc.poll() is None and read_pid(pid_file) == first
            # Fixed, the next restart goes through.
            cfg.write_text(good)
            os.kill(first, signal.SIGUSR2)
            second = wait_pid(pid_file, other_than=first, child=g)
            assert g.proc.wait(20) == 0
            after = load.count()
            wait_for(lambda: load.count() > after + 50, 10, "the new Guard serving")
        finally:
            load.finish()
        assert load.failures == [] and load.resets == 0, load.failures[:10]
        assert alive(second)


def wait_for_line(child: Child, pattern: str, timeout: float = 20) -> str:
    return child.wait_line(pattern, timeout).group(1)


def test_a_tcp_connection_outlives_the_handover(tmp_path: Path) -> None:
    echo, echo_port = start_demo("tcp")
    try:
        tcp_port = free_port()
        cfg, _, pid_file = write_config(
            tmp_path,
            f"127.0.0.1:{echo_port}",
            workers=1,
            listeners={"pipe": {"protocol": "tcp", "address": f"127.0.0.1:{tcp_port}"}},
        )
        (tmp_path / "routes" / "tcp.yaml").write_text(
            "routes:\n  - {name: pipe, listener: pipe, service: echo}\n"
            f'services:\n  echo: {{servers: ["127.0.0.1:{echo_port}"]}}\n'
        )
        with guard_group(cfg) as g:
            first = wait_pid(pid_file, other_than=None, child=g)
            old_conn = socket.create_connection(("127.0.0.1", tcp_port), timeout=5)
            try:
                old_conn.sendall(b"before\n")
                assert recv_line(old_conn) == b"before\n"
                os.kill(first, signal.SIGUSR2)
                second = wait_pid(pid_file, other_than=first, child=g)
                # The old Guard drains: it keeps relaying the connection it has...
                for i in range(5):
                    old_conn.sendall(b"during %d\n" % i)
                    assert recv_line(old_conn) == b"during %d\n" % i
                    time.sleep(0.1)
                assert g.proc.poll() is None  # ...and waits for it
                # ...while new connections go to the new one.
                with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as new_conn:
                    new_conn.sendall(b"new\n")
                    assert recv_line(new_conn) == b"new\n"
            finally:
                old_conn.close()
            assert g.proc.wait(10) == 0  # its last connection closed: it exits
            with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as conn:
                conn.sendall(b"after\n")
                assert recv_line(conn) == b"after\n"
            assert alive(second)
    finally:
        echo.stop()


def recv_line(sock: socket.socket) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {bytes(data)!r}")
        data += chunk
    return bytes(data)


def test_guard_reload_cli_signals_the_pid_file(tmp_path: Path, demo: Demo) -> None:
    cfg, port, pid_file = write_config(tmp_path, demo.address, workers=1)
    with guard_group(cfg) as g:
        first = wait_pid(pid_file, other_than=None, child=g)
        write_routes(tmp_path, demo.address, hosts=["load.test", "two.test"])
        out = guard_cli("reload", "--config", str(cfg))
        assert out.returncode == 0, out.stderr
        wait_for(lambda: get_status(port, "two.test") == 200, 5, "the route reload")
        out = guard_cli("reload", "--binary", "--pid-file", str(pid_file))
        assert out.returncode == 0, out.stderr + g.output
        second = read_pid(pid_file)
        assert second != first and second is not None and alive(second)
        assert f"pid {first} -> {second}" in out.stdout
        assert g.proc.wait(20) == 0
        assert get_status(port, "two.test") == 200


def guard_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "guard", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)


def get_status(port: int, host: str) -> int:
    with Conn(port) as c:
        c.request(host=host)
        return c.read_response().status


@pytest.mark.parametrize("workers", [1, 2])
def test_a_container_service_serves_across_a_restart(tmp_path: Path, workers: int) -> None:
    """The new Guard's control plane wakes its own instance (the request held meanwhile);
    the old one's instance serves its last requests and is stopped after its drain."""
    extra: dict[str, object] = {"drivers": {"process": {}}}
    cfg, port, pid_file = write_config(tmp_path, "127.0.0.1:9", workers=workers, extra=extra)
    app = {
        "container": {
            "driver": "process",
            "command": [sys.executable, "-m", "guard.demo", "http"],
            "env": {"PYTHONPATH": str(REPO)},
            "ready": {"http": "/healthz"},
            "stop_timeout": "2s",
        },
        "scale": {"min": 0, "max": 2, "sleep_after": "60s"},
    }
    route = {"name": "app", "listener": "web", "service": "app", "match": {"host": "load.test"}}
    (tmp_path / "routes" / "main.yaml").write_text(
        json.dumps({"routes": [route], "services": {"app": app}})
    )
    with guard_group(cfg) as g:
        first = wait_pid(pid_file, other_than=None, child=g)
        restart_under_load(g, port, pid_file, first)


def restart_under_load(g: Child, port: int, pid_file: Path, first: int) -> int:
    """SIGUSR2 to ``first`` while two clients keep requesting ``load.test``: the old Guard
    exits 0, the new one (returned) serves, and not one request failed or was reset."""
    load = Load(port, clients=2)
    load.start()
    try:
        wait_for(lambda: load.count() > 20, 20, "load flowing (the first wake)")
        os.kill(first, signal.SIGUSR2)
        second = wait_pid(pid_file, other_than=first, child=g)
        assert g.proc.wait(30) == 0, g.output[-3000:]
        after = load.count()
        wait_for(lambda: load.count() > after + 50, 20, "load on the new Guard")
    finally:
        load.finish()
    assert load.failures == [] and load.resets == 0, (load.failures[:10], g.output[-3000:])
    assert alive(second)
    return second


def test_keep_alive_connections_are_closed_between_requests(tmp_path: Path, demo: Demo) -> None:
    """On the draining Guard a request on a kept-alive connection is answered with
    ``Connection: close``; a connection left idle is closed cleanly (FIN, not RST) once
    the window for a last request has passed."""
    cfg, port, pid_file = write_config(tmp_path, demo.address, workers=1)
    with guard_group(cfg) as g:
        first = wait_pid(pid_file, other_than=None, child=g)
        busy, idle = Conn(port), Conn(port)
        try:
            for c in (busy, idle):
                c.request(host="load.test")
                resp = c.read_response()
                assert resp.status == 200 and resp.header("connection") != "close"
            os.kill(first, signal.SIGUSR2)
            wait_pid(pid_file, other_than=first, child=g)
            busy.request(host="load.test")
            resp = busy.read_response()
            assert resp.status == 200 and resp.header("connection") == "close"
            assert busy.read_until_close(2) == b""
            idle.sock.settimeout(5)
            start = time.monotonic()
            assert idle.sock.recv(1) == b""  # EOF: a reset would raise here
            assert time.monotonic() - start < 2.5
        finally:
            busy.close()
            idle.close()
        assert g.proc.wait(10) == 0


def test_a_websocket_runs_on_the_old_guard_until_the_grace(tmp_path: Path, demo: Demo) -> None:
    from test_websocket import WsClient

    extra: dict[str, object] = {"http": {"timeouts": {"drain": "5s"}}}
    cfg, port, pid_file = write_config(tmp_path, demo.address, workers=1, extra=extra)
    with guard_group(cfg) as g:
        first = wait_pid(pid_file, other_than=None, child=g)
        with WsClient(port, host="load.test") as old:
            old.text("before")
            assert old.message() == "before"
            os.kill(first, signal.SIGUSR2)
            wait_pid(pid_file, other_than=first, child=g)
            handed_over = time.monotonic()
            for i in range(5):  # the old Guard keeps relaying it...
                old.text(f"during {i}")
                assert old.message() == f"during {i}"
                time.sleep(0.2)
            with WsClient(port, host="load.test") as new:  # ...new ones go to the new one
                new.text("new")
                assert new.message() == "new"
                # ...until the grace (5 s) is nearly over: then a clean 1001.
                assert old.close_received(timeout=8).code == 1001
                assert time.monotonic() - handed_over > 1.5
                new.text("still")
                assert new.message() == "still"
        assert g.proc.wait(10) == 0


def test_a_restart_applies_a_changed_guard_yaml(tmp_path: Path, demo: Demo) -> None:
    """guard.yaml is read again: another worker count and a new listener take effect, the
    sockets of the listeners kept are the same ones (their queues never closed), and a
    listener taken out stops listening once the old Guard is gone."""
    cfg, port, pid_file = write_config(tmp_path, demo.address, workers=1)
    extra_port = free_port()
    with guard_group(cfg) as g:
        first = wait_pid(pid_file, other_than=None, child=g)
        load = Load(port, clients=2)
        load.start()
        try:
            wait_for(lambda: load.count() > 20, 10, "load flowing")
            doc = json.loads(cfg.read_text())
            doc["workers"] = 2
            doc["listeners"]["more"] = {"protocol": "http", "address": f"127.0.0.1:{extra_port}"}
            cfg.write_text(json.dumps(doc))
            write_routes(tmp_path, demo.address, hosts=["load.test"])
            (tmp_path / "routes" / "more.yaml").write_text(
                "routes:\n  - {name: more, listener: more, service: demo}\n"
            )
            os.kill(first, signal.SIGUSR2)
            second = wait_pid(pid_file, other_than=first, child=g)
            assert g.proc.wait(20) == 0
            wait_for(lambda: len(workers_of(second)) == 2, 10, "two workers")
            assert get_status(extra_port, "any.test") == 200
            # Back to one worker, without the new listener.
            (tmp_path / "routes" / "more.yaml").unlink()
            del doc["listeners"]["more"]
            doc["workers"] = 1
            cfg.write_text(json.dumps(doc))
            os.kill(second, signal.SIGUSR2)
            third = wait_pid(pid_file, other_than=second, child=g)
            wait_for(lambda: not alive(second), 20, "the second Guard to exit")
            after = load.count()
            wait_for(lambda: load.count() > after + 50, 10, "load on the third Guard")
        finally:
            load.finish()
        assert load.failures == [] and load.resets == 0, (load.failures[:10], g.output[-3000:])
        assert workers_of(third) == []  # one process again
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", extra_port), timeout=2)
        out = g.output
        assert f"pid {second} takes over from pid {first}: inherited: web" in out
        assert f"bound: more stream 127.0.0.1:{extra_port}" in out
        assert f"closed: more stream 127.0.0.1:{extra_port}" in out


def test_guard_reload_refusals(tmp_path: Path) -> None:
    cfg, _, pid_file = write_config(tmp_path, "127.0.0.1:9", workers=1)
    # No Guard wrote the pid file yet.
    out = guard_cli("reload", "--config", str(cfg))
    assert out.returncode == 1 and "cannot read pid file" in out.stderr
    # A stale pid file: the pid of a process that has exited.
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file.write_text(f"{dead.pid}\n")
    out = guard_cli("reload", "--binary", "--config", str(cfg))
    assert out.returncode == 1 and f"no process {dead.pid}" in out.stderr
    # A config with errors is not restarted into.
    good = cfg.read_text()
    cfg.write_text(good.replace('"workers": 1', '"workers": 0'))
    out = guard_cli("reload", "--binary", "--config", str(cfg))
    assert out.returncode == 2 and "not reloading: the config has errors" in out.stderr
    # Without pid_file, the pid has to come from somewhere else.
    doc = json.loads(good)
    del doc["pid_file"]
    cfg.write_text(json.dumps(doc))
    out = guard_cli("reload", "--config", str(cfg))
    assert out.returncode == 2 and "pid_file: not set" in out.stderr


def test_a_udp_listener_is_handed_over(tmp_path: Path) -> None:
    echo, echo_port = start_demo("udp")
    try:
        udp_port = free_port(socket.SOCK_DGRAM)
        listeners = {"dns": {"protocol": "udp", "address": f"127.0.0.1:{udp_port}"}}
        cfg, _, pid_file = write_config(
            tmp_path, f"127.0.0.1:{echo_port}", workers=1, listeners=listeners
        )
        (tmp_path / "routes" / "udp.yaml").write_text(
            "routes:\n  - {name: dns, listener: dns, service: echo}\n"
            f'services:\n  echo: {{servers: ["127.0.0.1:{echo_port}"]}}\n'
        )
        with guard_group(cfg) as g, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            first = wait_pid(pid_file, other_than=None, child=g)
            c.settimeout(5)
            c.sendto(b"before", ("127.0.0.1", udp_port))
            assert c.recvfrom(100)[0] == b"before"
            os.kill(first, signal.SIGUSR2)
            wait_pid(pid_file, other_than=first, child=g)
            assert g.proc.wait(15) == 0
            # The same client address, now a session on the new Guard, on the same socket.
            c.sendto(b"after", ("127.0.0.1", udp_port))
            assert c.recvfrom(100)[0] == b"after"
            assert f"dns dgram 127.0.0.1:{udp_port} (fd" in g.output
    finally:
        echo.stop()
