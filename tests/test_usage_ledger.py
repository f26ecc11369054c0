"""The usage ledger on a real SQLite file: batching, idempotent ids, failed writes, the
buffer bound, two writers, the run loop, and a writer SIGKILLed mid-load then restarted."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from guard.usage import SCHEMA_VERSION, InstanceSlice, LedgerError, TrafficSlice, UsageLedger

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import REPO


def inst(i: int, *, instance: str = "inst", cpu_seconds: float = 0.5) -> InstanceSlice:
    return InstanceSlice(
        id=f"i{i}",
        instance=instance,
        service="svc",
        tenant="t",
        driver="process",
        start=float(i),
        end=float(i + 1),
        cpu_limit=1.0,
        memory_limit=10**9,
        cpu_seconds=cpu_seconds,
        memory_bytes_avg=1e8,
    )


def traffic(i: int) -> TrafficSlice:
    return TrafficSlice(f"t{i}", "route", "svc", "t", float(i), float(i + 1), 1, 10, 100)


def counts(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as conn:
        n_inst = conn.execute("SELECT COUNT(*) FROM instance_slices").fetchone()[0]
        n_traffic = conn.execute("SELECT COUNT(*) FROM traffic_slices").fetchone()[0]
    conn.close()
    return n_inst, n_traffic


@pytest.fixture
def ledger(tmp_path: Path):  # type: ignore[no-untyped-def]
    led = UsageLedger(tmp_path / "data" / "usage.sqlite", flush_interval=0.05)
    led.open()
    yield led
    led.close()


def test_open_creates_wal_database_with_schema_version(ledger: UsageLedger) -> None:
    assert ledger.path.exists()
    conn = sqlite3.connect(ledger.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(LedgerError, match="newer Guard"):
        UsageLedger(path).open()


def test_flush_writes_one_batch_and_same_ids_count_once(ledger: UsageLedger) -> None:
    for i in range(10):
        ledger.record(inst(i))
        ledger.record(traffic(i))
    assert counts(ledger.path) == (0, 0)  # record only buffers
    assert ledger.flush() == 20
    assert ledger.flush() == 0
    for i in range(5, 15):  # 5..9 replayed, 10..14 new
        ledger.record(inst(i))
        ledger.record(traffic(i))
    assert ledger.flush() == 10
    assert counts(ledger.path) == (15, 15)
    [row] = ledger.query(None, None, "service")
    assert row.measured_core_ms == pytest.approx(15 * 500)
    assert row.requests == 15 and row.bytes_out == 1500


def test_slices_are_validated_when_made() -> None:
    with pytest.raises(ValueError, match="start < end"):
        TrafficSlice("x", "r", "s", None, 5.0, 5.0, 0, 0, 0)
    with pytest.raises(ValueError, match="cpu_seconds"):
        inst(1, cpu_seconds=-1.0)


def test_failed_flush_keeps_the_batch_for_the_next_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    led = UsageLedger(tmp_path / "usage.sqlite", busy_timeout=0.05)
    led.open()
    blocker = sqlite3.connect(led.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock past busy_timeout
    for i in range(3):
        led.record(inst(i))
    with caplog.at_level(logging.ERROR, logger="guard.usage"):
        assert led.flush() == 0
    assert "writing 3 slices failed, kept for the next flush" in caplog.text
    assert led.pending == 3
    led.record(inst(3))
    blocker.execute("ROLLBACK")
    blocker.close()
    assert led.flush() == 4
    assert led.pending == 0
    assert counts(led.path) == (4, 0)
    led.close()


def test_disk_full_keeps_usage_and_retries(tmp_path: Path) -> None:
    """SQLITE_FULL ("database or disk is full") as on a full disk: max_page_count caps the
    file, so the failure is the real one, from SQLite's own write path."""
    led = UsageLedger(tmp_path / "usage.sqlite")
    led.open()
    assert led._conn is not None
    pages = led._conn.execute("PRAGMA page_count").fetchone()[0]
    led._conn.execute(f"PRAGMA max_page_count = {pages}")  # no room for one more page
    for i in range(500):
        led.record(inst(i))
    assert led.flush() == 0
    assert led.write_errors == 1 and led.pending == 500 and led.rows_written == 0
    for i in range(500, 600):  # traffic keeps being recorded meanwhile
        led.record(inst(i))
    led._conn.execute("PRAGMA max_page_count = 1073741823")  # space again
    assert led.flush() == 600
    assert led.pending == 0 and led.rows_written == 600 and led.dropped == 0
    assert counts(led.path) == (600, 0)
    led.close()


def test_full_buffer_drops_the_oldest_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    led = UsageLedger(tmp_path / "usage.sqlite", max_buffer=3)
    led.open()
    for i in range(5):
        led.record(inst(i))
    assert led.pending == 3 and led.dropped == 2
    with caplog.at_level(logging.ERROR, logger="guard.usage"):
        assert led.flush() == 3
    assert "dropped the 2 oldest" in caplog.text
    with sqlite3.connect(led.path) as conn:
        ids = sorted(r[0] for r in conn.execute("SELECT id FROM instance_slices"))
    conn.close()
    assert ids == ["i2", "i3", "i4"]
    led.close()


def test_two_ledgers_on_one_file_both_write(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite"
    a, b = UsageLedger(path), UsageLedger(path)
    a.open()
    b.open()

    def write(led: UsageLedger, base: int) -> None:
        for batch in range(20):
            for j in range(50):
                led.record(inst(base + batch * 50 + j))
            led.flush()

    threads = [
        threading.Thread(target=write, args=(a, 0)),
        threading.Thread(target=write, args=(b, 100_000)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a.close()
    b.close()
    assert counts(path) == (2000, 0)


def test_run_flushes_every_interval_and_once_more_when_cancelled(ledger: UsageLedger) -> None:
    async def scenario() -> None:
        task = asyncio.create_task(ledger.run())
        ledger.record(inst(1))
        deadline = time.monotonic() + 5
        while counts(ledger.path)[0] < 1:  # written by the periodic flush, no call from here
            assert time.monotonic() < deadline, "run() did not flush"
            await asyncio.sleep(0.01)
        ledger.record(inst(2))
        task.cancel()  # before the next interval: only the final flush can write it
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert counts(ledger.path) == (2, 0)


def test_last_end_is_where_a_restart_resumes(ledger: UsageLedger) -> None:
    assert ledger.last_end("inst") is None
    for i in range(3):
        ledger.record(inst(i))
    ledger.flush()
    assert ledger.last_end("inst") == 3.0


# ------------------------------------------------------------------------ SIGKILL

# A Guard stand-in: records an instance slice and a traffic slice per step under load, with
# UsageLedger.run() flushing every 20 ms. After each flush it prints the rows written so far;
# the print comes after COMMIT (fsynced, synchronous=FULL), so the file holds at least that.
CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from guard.usage import InstanceSlice, TrafficSlice, UsageLedger

    class Probe(UsageLedger):
        written = 0

        def flush(self):
            n = super().flush()
            self.written += n
            print("flushed", self.written, flush=True)
            return n

    async def main(path, first, last):
        ledger = Probe(Path(path), flush_interval=0.02)
        ledger.open()
        task = asyncio.create_task(ledger.run())
        for i in range(first, last):
            ledger.record(InstanceSlice(
                f"i{i}", "inst", "svc", "t", "process", float(i), float(i + 1),
                1.0, 10**9, 0.5, 1e8))
            ledger.record(TrafficSlice(
                f"t{i}", "route", "svc", "t", float(i), float(i + 1), 1, 10, 100))
            if i % 50 == 0:
                await asyncio.sleep(0.001)  # steady load, and the loop stays responsive
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        ledger.close()
        print("done", flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    """
)


def spawn(path: Path, first: int, last: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(first), str(last)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def prefix_length(conn: sqlite3.Connection, table: str) -> int:
    """Rows in table, after checking they are ids 0..n-1: flushes write in record order,
    so a crash may cut the tail but never leaves a hole."""
    ids = sorted(int(r[0][1:]) for r in conn.execute(f"SELECT id FROM {table}"))
    assert ids == list(range(len(ids))), f"{table} has gaps"
    return len(ids)


def test_sigkill_mid_load_loses_only_the_unflushed_tail_and_restart_does_not_double_count(
    tmp_path: Path,
) -> None:
    path = tmp_path / "usage.sqlite"
    child = spawn(path, 0, 10**9)  # endless: it is killed mid-load
    assert child.stdout is not None
    flushed, flush_lines = 0, 0
    deadline = time.monotonic() + 60
    try:
        while flush_lines < 5 or flushed < 2000:
            assert time.monotonic() < deadline, "child wrote too little in 60 s"
            line = child.stdout.readline()
            assert line, f"child exited early: {child.stderr.read() if child.stderr else ''}"
            if line.startswith("flushed"):
                flushed = int(line.split()[1])
                flush_lines += 1
        time.sleep(0.01)  # half an interval on: the kill lands while it records or writes
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # It may have flushed again between our read and the kill; it was still recording, so
    # the file is a prefix of what it recorded, holding at least every reported flush.
    conn = sqlite3.connect(path)
    n_inst = prefix_length(conn, "instance_slices")
    n_traffic = prefix_length(conn, "traffic_slices")
    conn.close()
    assert n_inst + n_traffic >= flushed
    assert n_traffic in (n_inst, n_inst - 1)  # a flush may fall between a step's two records

    # Restart: replay every step already written plus 500 new ones, as a Guard resuming
    # from slices it cannot tell were flushed would; ids make the replay count once.
    total = n_inst + 500
    again = spawn(path, 0, total)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert out.splitlines()[-1] == "done"
    led = UsageLedger(path)
    led.open()
    [row] = led.query(None, None, "service")
    led.close()
    assert row.wall_seconds == pytest.approx(total)  # one 1 s slice per step
    assert row.measured_core_ms == pytest.approx(total * 500)  # 0.5 CPU-s each
    assert row.requests == total and row.bytes_in == total * 10 and row.bytes_out == total * 100
    assert row.instances == 1
