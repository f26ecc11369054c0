"""Process-level behaviour: CLI, SIGTERM drain, SIGHUP reload, worker restarts."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_EXAMPLES = REPO.parent / "shared" / "examples" / "guard.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening")


def guard_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "guard", *args]


class Proc:
    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )
        self.output = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output += line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)


@pytest.fixture
def demo_backend() -> Iterator[int]:
    port = free_port()
    p = Proc([sys.executable, "-m", "guard.demo", "http"], env=dict(os.environ, PORT=str(port)))
    try:
        wait_port(port, p.proc)
        yield port
    finally:
        p.stop()


def write_config(tmp: Path, port: int, backend: int, *, workers: int = 1, extra: str = "") -> Path:
    (tmp / "routes").mkdir(exist_ok=True)
    cfg = tmp / "guard.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            workers: {workers}
            routes: routes
            listeners:
              web: {{protocol: http, address: "127.0.0.1:{port}"}}
            http:
              timeouts: {{drain: 10s}}
            """
        )
        + extra
    )
    (tmp / "routes" / "main.yaml").write_text(
        textwrap.dedent(
            f"""\
            routes:
              - {{name: all, listener: web, service: demo}}
            services:
              demo: {{servers: ["127.0.0.1:{backend}"]}}
            """
        )
    )
    return cfg


def get(port: int, path: str, host: str = "localhost", timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ---------------------------------------------------------------------------------- CLI


def test_version_and_help() -> None:
    out = subprocess.run(guard_cmd("--version"), capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("guard ")
    out = subprocess.run(guard_cmd("--help"), capture_output=True, text=True, check=True)
    assert "run" in out.stdout and "check" in out.stdout


@pytest.mark.skipif(not SHARED_EXAMPLES.exists(), reason="shared examples not present")
def test_check_passes_on_shared_examples() -> None:
    out = subprocess.run(
        guard_cmd("check", "--config", str(SHARED_EXAMPLES)), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "ok:" in out.stdout


def test_check_passes_on_project_configs() -> None:
    out = subprocess.run(
        guard_cmd("check", "--config", "configs/guard.yaml"),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr


def test_check_reports_file_and_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 8080, 9000)
    (tmp_path / "routes" / "bad.yaml").write_text(
        "routes:\n  - {name: x, listener: nope, service: demo, match: {pathprefix: /}}\n"
    )
    out = subprocess.run(guard_cmd("check", "--config", str(cfg)), capture_output=True, text=True)
    assert out.returncode != 0
    assert "bad.yaml: routes[0].listener" in out.stderr
    assert "bad.yaml: routes[0].match: unknown key 'pathprefix'" in out.stderr


def test_run_refuses_features_not_built_yet(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, free_port(), 9000)
    # PROXY protocol headers are read on tcp listeners only, so far.
    cfg.write_text(
        cfg.read_text().replace(
            'address: "127.0.0.1:',
            'proxy_protocol: {accept: true, trusted: [127.0.0.1/32]}, address: "127.0.0.1:',
        )
    )
    out = subprocess.run(
        guard_cmd("run", "--config", str(cfg)), capture_output=True, text=True, timeout=20
    )
    assert out.returncode == 2, out.stderr
    assert "listeners.web.proxy_protocol: not supported yet" in out.stderr


# ------------------------------------------------------------------- signals & workers


def test_sigterm_drains_in_flight_request(tmp_path: Path, demo_backend: int) -> None:
    port = free_port()
    cfg = write_config(tmp_path, port, demo_backend)
    g = Proc(guard_cmd("run", "--config", str(cfg)))
    try:
        wait_port(port, g.proc)
        result: dict[str, object] = {}

        def slow() -> None:
            result["answer"] = get(port, "/slow?delay=1.5")

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.5)  # the request is in flight at the backend
        g.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # New connections are refused while the old request drains.
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        t.join(10)
        assert result["answer"][0] == 200  # type: ignore[index]
        assert g.proc.wait(10) == 0
    finally:
        g.stop()


def test_sighup_reloads_routes_and_keeps_old_table_on_error(
    tmp_path: Path, demo_backend: int
) -> None:
    port = free_port()
    cfg = write_config(tmp_path, port, demo_backend)
    routes = tmp_path / "routes" / "main.yaml"
    routes.write_text(
        f"routes:\n  - {{name: a, listener: web, service: demo, match: {{host: a.localhost}}}}\n"
        f'services:\n  demo: {{servers: ["127.0.0.1:{demo_backend}"]}}\n'
    )
    g = Proc(guard_cmd("run", "--config", str(cfg)))
    try:
        wait_port(port, g.proc)
        assert get(port, "/", host="a.localhost")[0] == 200
        assert get(port, "/", host="b.localhost")[0] == 404
        routes.write_text(routes.read_text().replace("a.localhost", "b.localhost"))
        g.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while get(port, "/", host="b.localhost")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert get(port, "/", host="b.localhost")[0] == 200
        assert get(port, "/", host="a.localhost")[0] == 404
        # A broken file is rejected and the last good table keeps serving.
        routes.write_text("routes:\n  - {name: b, listener: web, service: missing}\n")
        g.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert get(port, "/", host="b.localhost")[0] == 200
        assert b"main.yaml" in g.output and b"route reload rejected" in g.output
    finally:
        g.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_route_file_change_reloads_without_a_signal(
    tmp_path: Path, demo_backend: int, workers: int
) -> None:
    port = free_port()
    cfg = write_config(tmp_path, port, demo_backend, workers=workers)
    routes = tmp_path / "routes" / "main.yaml"
    routes.write_text(
        f"routes:\n  - {{name: a, listener: web, service: demo, match: {{host: a.localhost}}}}\n"
        f'services:\n  demo: {{servers: ["127.0.0.1:{demo_backend}"]}}\n'
    )
    g = Proc(guard_cmd("run", "--config", str(cfg)))
    try:
        wait_port(port, g.proc)
        assert get(port, "/", host="a.localhost")[0] == 200
        # A new file in the route directory, as a deploy tool would add it.
        (tmp_path / "routes" / "more.yaml").write_text(
            "routes:\n  - {name: b, listener: web, service: demo, match: {host: b.localhost}}\n"
        )
        deadline = time.monotonic() + 8
        while get(port, "/", host="b.localhost")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get(port, "/", host="b.localhost")[0] == 200
        assert get(port, "/", host="a.localhost")[0] == 200
    finally:
        g.stop()


def _worker_pids(supervisor: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_workers_share_the_port_and_a_dead_worker_is_restarted(
    tmp_path: Path, demo_backend: int
) -> None:
    port = free_port()
    cfg = write_config(tmp_path, port, demo_backend, workers=2)
    g = Proc(guard_cmd("run", "--config", str(cfg)))
    try:
        wait_port(port, g.proc)
        deadline = time.monotonic() + 10
        while len(_worker_pids(g.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = _worker_pids(g.proc.pid)
        assert len(workers) == 2
        time.sleep(0.5)  # both bound
        assert all(get(port, "/")[0] == 200 for _ in range(20))
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = _worker_pids(g.proc.pid)
            if len(now) == 2 and workers[0] not in now:
                break
            time.sleep(0.05)
        now = _worker_pids(g.proc.pid)
        assert len(now) == 2 and workers[0] not in now
        time.sleep(0.5)
        assert all(get(port, "/")[0] == 200 for _ in range(20))
        g.proc.send_signal(signal.SIGTERM)
        assert g.proc.wait(15) == 0
        assert _worker_pids(g.proc.pid) == []
    finally:
        g.stop()
