"""The usage ledger: what every instance and route used, kept in SQLite so a crash loses little.

The control plane hands in *slices*: one ``[start, end)`` interval of one running instance
(``InstanceSlice``) or of one route's traffic counters (``TrafficSlice``). ``record`` only
appends to an in-memory buffer, so the event loop never waits on disk; ``run`` writes the
buffer every ``flush_interval`` in one transaction, on a worker thread.

Crash safety comes from three choices:

- WAL journal with ``synchronous=FULL``: a committed flush is fsynced before ``flush``
  returns, so a SIGKILLed Guard loses at most the slices recorded since the last flush.
- Every slice has a unique id and the tables key on it (``INSERT OR IGNORE``): writing the
  same slice twice, e.g. replayed after a restart, counts it once.
- A failed write puts its batch back at the head of the buffer for the next flush; only when
  the buffer passes ``max_buffer`` items are the oldest dropped, counted and logged.

Several processes may open one ledger (a second Guard, ``guard usage`` while Guard runs):
WAL lets readers work beside the writer and ``busy_timeout`` makes writers queue.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from guard.usage.report import UsageRow, aggregate

log = logging.getLogger("guard.usage")

SCHEMA_VERSION = 1  # PRAGMA user_version; bumped with a migration when the tables change

MAX_BUFFER = 1_000_000  # ~ a few hundred MB of slices; past it the oldest are dropped

# Statements, not one script: comments in a script would hide a misplaced ";".
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS instance_slices (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    service TEXT NOT NULL,
    tenant TEXT,
    driver TEXT NOT NULL,
    t_start REAL NOT NULL,          -- unix seconds, inclusive
    t_end REAL NOT NULL,            -- unix seconds, exclusive
    cpu_limit REAL,                 -- cores; NULL = unlimited
    memory_limit INTEGER,           -- bytes; NULL = unlimited
    cpu_seconds REAL NOT NULL,      -- measured CPU time inside the slice
    memory_bytes_avg REAL NOT NULL, -- measured average RSS over the slice
    started_at REAL,                -- set on the instance's first slice
    stopped_at REAL,                -- set on its last slice
    exit_reason TEXT                -- set on its last slice
)
""",
    "CREATE INDEX IF NOT EXISTS instance_slices_end ON instance_slices (t_end)",
    "CREATE INDEX IF NOT EXISTS instance_slices_instance ON instance_slices (instance, t_end)",
    """
CREATE TABLE IF NOT EXISTS traffic_slices (
    id TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    service TEXT NOT NULL,
    tenant TEXT,
    t_start REAL NOT NULL,
    t_end REAL NOT NULL,
    requests INTEGER NOT NULL,      -- HTTP requests; TCP connections / UDP sessions on l4
    bytes_in INTEGER NOT NULL,      -- client -> backend
    bytes_out INTEGER NOT NULL      -- backend -> client (egress)
)
""",
    "CREATE INDEX IF NOT EXISTS traffic_slices_end ON traffic_slices (t_end)",
)

_INSERT_INSTANCE = (
    "INSERT OR IGNORE INTO instance_slices (id, instance, service, tenant, driver, t_start,"
    " t_end, cpu_limit, memory_limit, cpu_seconds, memory_bytes_avg, started_at, stopped_at,"
    " exit_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_TRAFFIC = (
    "INSERT OR IGNORE INTO traffic_slices (id, route, service, tenant, t_start, t_end,"
    " requests, bytes_in, bytes_out) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class LedgerError(Exception):
    """The ledger cannot be used: not open, unreadable, or written by a newer Guard."""


def _check_interval(kind: str, start: float, end: float) -> None:
    # Checked when the slice is made, not in SQL: one bad row in a batch would otherwise make
    # every retry of that batch fail and hold good slices back forever.
    if not (math.isfinite(start) and math.isfinite(end) and end > start):
        raise ValueError(f"{kind}: needs finite start < end, got [{start}, {end})")


def _check_non_negative(kind: str, **values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{kind}: {name} must be a finite number >= 0, got {value}")


@dataclass(frozen=True, slots=True)
class InstanceSlice:
    """One ``[start, end)`` interval of one running instance."""

    id: str  # unique; recording the same id again is ignored
    instance: str  # unique per instance lifetime (e.g. the container id)
    service: str
    tenant: str | None
    driver: str
    start: float  # unix seconds
    end: float
    cpu_limit: float | None  # cores; None = unlimited, which reserves 0 core-ms
    memory_limit: int | None  # bytes; None = unlimited, which reserves 0 GB-s
    cpu_seconds: float  # measured CPU used inside the slice (delta of driver counters)
    memory_bytes_avg: float  # measured average RSS over the slice
    started_at: float | None = None  # instance start; set on its first slice
    stopped_at: float | None = None  # set on its last slice
    exit_reason: str | None = None  # set on its last slice ("stopped: idle", ...)

    def __post_init__(self) -> None:
        _check_interval("InstanceSlice", self.start, self.end)
        _check_non_negative(
            "InstanceSlice",
            cpu_limit=self.cpu_limit,
            memory_limit=self.memory_limit,
            cpu_seconds=self.cpu_seconds,
            memory_bytes_avg=self.memory_bytes_avg,
        )


@dataclass(frozen=True, slots=True)
class TrafficSlice:
    """The counters of one route over ``[start, end)``.

    ``requests`` counts HTTP requests on http routes, and connections (TCP) or sessions (UDP)
    on l4 routes. ``bytes_in`` flows client -> backend, ``bytes_out`` backend -> client and is
    what rate cards call egress.
    """

    id: str
    route: str
    service: str
    tenant: str | None
    start: float
    end: float
    requests: int
    bytes_in: int
    bytes_out: int

    def __post_init__(self) -> None:
        _check_interval("TrafficSlice", self.start, self.end)
        _check_non_negative(
            "TrafficSlice",
            requests=self.requests,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
        )


Slice = InstanceSlice | TrafficSlice


class UsageLedger:
    """Buffered, batched, crash-safe writer of usage slices, and the query over them.

    Thread model: ``record`` runs on the event loop, ``flush`` on a worker thread (via
    ``run``) or anywhere else; ``_lock`` guards only the in-memory buffer, so ``record`` never
    waits for disk, and ``_db_lock`` serialises use of the one SQLite connection.
    """

    def __init__(
        self,
        path: Path,
        *,
        flush_interval: float = 1.0,
        busy_timeout: float = 5.0,
        max_buffer: int = MAX_BUFFER,
    ) -> None:
        if flush_interval <= 0:
            raise ValueError("flush_interval must be > 0")
        if max_buffer < 1:
            raise ValueError("max_buffer must be >= 1")
        self.path = Path(path)
        self.flush_interval = flush_interval
        self._busy_timeout = busy_timeout
        self._max_buffer = max_buffer
        self._buffer: deque[Slice] = deque()
        self._lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._dropped = 0
        self._dropped_logged = 0
        self.rows_written = 0  # rows inserted, for metrics
        self.write_errors = 0  # failed flushes (disk full, locked): their batch was kept

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create the directory and database if needed, switch to WAL, create the schema."""
        if self._conn is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # explicit BEGIN/COMMIT below, nothing implicit
                check_same_thread=False,  # flushes run on worker threads, under _db_lock
            )
        except sqlite3.Error as e:
            raise LedgerError(f"{self.path}: cannot open usage ledger: {e}") from e
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                # e.g. a filesystem without shared memory: the crash guarantees would not hold.
                raise LedgerError(f"{self.path}: cannot use WAL journal (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                return  # nothing to write: a reader beside a running Guard never waits here
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Read again inside the write lock: another process may have just created it.
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise LedgerError(
                        f"{self.path}: ledger schema {version} was written by a newer Guard;"
                        f" this one reads schema {SCHEMA_VERSION}"
                    )
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise LedgerError(f"{self.path}: cannot open usage ledger: {e}") from e

    def close(self) -> None:
        """Flush what is buffered and close; cancel ``run`` first. Slices that a failing final
        flush could not write are lost, and logged as such."""
        if self._conn is None:
            return
        self.flush()
        left = self.pending
        if left:
            log.error("usage ledger %s: closing with %d unwritten slices, lost", self.path, left)
        with self._db_lock:
            self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ write path

    def record(self, item: Slice) -> None:
        """Buffer one slice for the next flush. Never touches the disk."""
        with self._lock:
            if len(self._buffer) >= self._max_buffer:
                self._buffer.popleft()
                self._dropped += 1
            self._buffer.append(item)

    @property
    def pending(self) -> int:
        """Slices buffered and not yet written."""
        return len(self._buffer)

    @property
    def dropped(self) -> int:
        """Slices dropped because the buffer was full, since this ledger was made."""
        return self._dropped

    def flush(self) -> int:
        """Write the buffer in one transaction; return the rows inserted (duplicates excluded).

        On a database error the batch goes back to the head of the buffer for the next flush
        and 0 is returned; the error is logged, not raised, so a full disk does not stop Guard.
        """
        with self._db_lock:
            conn = self._conn
            if conn is None:
                raise LedgerError(f"{self.path}: usage ledger is not open")
            with self._lock:
                batch = list(self._buffer)
                self._buffer.clear()
            self._report_drops()
            if not batch:
                return 0
            try:
                written = _write(conn, batch)
            except sqlite3.Error as e:
                self.write_errors += 1
                self._requeue(batch)
                log.error(
                    "usage ledger %s: writing %d slices failed, kept for the next flush: %s",
                    self.path,
                    len(batch),
                    e,
                )
                return 0
            self.rows_written += written
            return written

    def _requeue(self, batch: list[Slice]) -> None:
        with self._lock:
            # The failed batch is older than anything recorded meanwhile: it goes first.
            self._buffer.extendleft(reversed(batch))
            while len(self._buffer) > self._max_buffer:
                self._buffer.popleft()
                self._dropped += 1

    def _report_drops(self) -> None:
        dropped = self._dropped
        if dropped > self._dropped_logged:
            log.error(
                "usage ledger %s: buffer full (%d slices): dropped the %d oldest (%d in total)",
                self.path,
                self._max_buffer,
                dropped - self._dropped_logged,
                dropped,
            )
            self._dropped_logged = dropped

    async def run(self) -> None:
        """Flush every ``flush_interval`` on a worker thread until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(self.flush_interval)
                await asyncio.to_thread(self.flush)
        finally:
            # Synchronous on purpose: this runs at shutdown, and a second cancellation cannot
            # interrupt a plain call halfway, so what was recorded before the cancel is written.
            if self._conn is not None:  # already closed: close() did the final flush
                self.flush()

    # ------------------------------------------------------------------ read path

    def query(
        self,
        since: float | None,
        until: float | None,
        by: str,
        tenant: str | None = None,
    ) -> list[UsageRow]:
        """Usage in ``[since, until)`` grouped by tenant, service or instance.

        Reads what has been flushed (call ``flush`` first to include the buffer). Slices that
        straddle a bound count in proportion to their part inside; see ``report.aggregate``.
        """
        with self._db_lock:
            if self._conn is None:
                raise LedgerError(f"{self.path}: usage ledger is not open")
            return aggregate(self._conn, since, until, by, tenant)

    def last_end(self, instance: str) -> float | None:
        """End of the last flushed slice of ``instance``: where a restarted Guard resumes."""
        with self._db_lock:
            if self._conn is None:
                raise LedgerError(f"{self.path}: usage ledger is not open")
            row = self._conn.execute(
                "SELECT MAX(t_end) FROM instance_slices WHERE instance = ?", (instance,)
            ).fetchone()
        return None if row[0] is None else float(row[0])


def _write(conn: sqlite3.Connection, batch: list[Slice]) -> int:
    instances = []
    traffic = []
    for s in batch:
        if isinstance(s, InstanceSlice):
            instances.append(
                (
                    s.id,
                    s.instance,
                    s.service,
                    s.tenant,
                    s.driver,
                    s.start,
                    s.end,
                    s.cpu_limit,
                    s.memory_limit,
                    s.cpu_seconds,
                    s.memory_bytes_avg,
                    s.started_at,
                    s.stopped_at,
                    s.exit_reason,
                )
            )
        else:
            traffic.append(
                (
                    s.id,
                    s.route,
                    s.service,
                    s.tenant,
                    s.start,
                    s.end,
                    s.requests,
                    s.bytes_in,
                    s.bytes_out,
                )
            )
    before = conn.total_changes
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INSERT_INSTANCE, instances)
        conn.executemany(_INSERT_TRAFFIC, traffic)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return conn.total_changes - before
