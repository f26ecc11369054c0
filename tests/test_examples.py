"""The example configs serve under ``guard run``, not only pass ``guard check``.

``../shared/examples`` is run unchanged (copied, so its usage ledger lands in the test's
directory); ``configs/`` + ``routes/`` (the README's quick start) with its ports moved to
free ones. Every route is exercised with a real client, then Guard is stopped with SIGTERM
and must exit 0 having stopped its instances.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, fetch, free_port, stop_process, wait_for

SHARED_EXAMPLES = REPO.parent / "shared" / "examples"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process driver")


def run(config: Path, port: int, stderr: Path) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "guard", "run", "--config", str(config)],
            cwd=REPO,
            stdout=err,
            stderr=subprocess.STDOUT,
        )

    def listening() -> bool:
        assert proc.poll() is None, stderr.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_for(listening, 15, f"guard on {port}")
    return proc


def lifecycle(stderr: Path, event: str) -> list[dict[str, object]]:
    out = []
    for line in stderr.read_text().splitlines():
        if "guard.lifecycle" in line and "{" in line:
            record = json.loads(line[line.index("{") :])
            if record["event"] == event:
                out.append(record)
    return out


@pytest.mark.skipif(not SHARED_EXAMPLES.exists(), reason="shared examples not present")
def test_shared_examples_serve(tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    shutil.copytree(SHARED_EXAMPLES, examples, ignore=shutil.ignore_patterns("data"))
    stderr = tmp_path / "guard.log"
    proc = run(examples / "guard.yaml", 18080, stderr)
    try:
        r = fetch(18080, target="/x", host="hello.localhost", timeout=15)
        assert r.status == 200 and r.json()["path"] == "/x"
        r = fetch(18080, target="/api/v1/users", host="hello.localhost", timeout=15)
        assert r.status == 200 and r.json()["path"] == "/users"  # strip_prefix
        a = fetch(18080, host="a.sandbox.localhost", timeout=15)
        b = fetch(18080, host="b.sandbox.localhost", timeout=15)
        assert a.status == b.status == 200
        assert a.header("x-demo-port") != b.header("x-demo-port")
        with socket.create_connection(("127.0.0.1", 18081), timeout=15) as s:
            s.sendall(b"tcp echo\n")
            got = b""
            while not got.endswith(b"\n"):
                got += s.recv(64)
            assert got == b"tcp echo\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(15)
            u.sendto(b"udp echo", ("127.0.0.1", 18053))
            assert u.recvfrom(64)[0] == b"udp echo"
        health = fetch(19901, target="/healthz", host="admin")
        assert health.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, stderr.read_text()[-2000:]
    finally:
        stop_process(proc)
    started = {e["instance"] for e in lifecycle(stderr, "ready")}
    stopped = {e["instance"] for e in lifecycle(stderr, "stopped")}
    assert len(started) == 5 and started == stopped  # hello, 2 sandboxes, tcp, udp
    assert (examples / "data" / "usage.sqlite").exists()


def test_quick_start_config_serves(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    shutil.copytree(REPO / "routes", project / "routes")
    web, admin = free_port(), free_port()
    text = (REPO / "configs" / "guard.yaml").read_text()
    assert "127.0.0.1:8080" in text and "127.0.0.1:9901" in text
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{web}")
    text = text.replace("127.0.0.1:9901", f"127.0.0.1:{admin}")
    (project / "configs" / "guard.yaml").write_text(text)
    stderr = tmp_path / "guard.log"
    proc = run(project / "configs" / "guard.yaml", web, stderr)
    try:
        r = fetch(web, target="/api/users", host="hello.localhost", timeout=15)
        assert r.status == 200 and r.json()["path"] == "/users"
        assert r.header("x-guard-cold-start") is not None
        r = fetch(web, host="alice.sandbox.localhost", timeout=15)
        assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        stop_process(proc)
    out = subprocess.run(
        [sys.executable, "-m", "guard", "usage", "--config", str(project / "configs/guard.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "hello" in out.stdout and "sandbox" in out.stdout
