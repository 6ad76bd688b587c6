"""The gateway's single log writer: rows are buffered on the event loop, written in batches.

`record` never blocks; `run` group-commits the buffer to SQLite in a worker thread
(catsock/groupcommit.py, the mechanism the event log uses too). A batch is due
`flush_interval` after the first of its rows was recorded, at once when `max_batch`
rows wait; retention prunes are due every `prune_interval` from start-up, however
long a write or a prune took in its thread. So a test on a fake clock knows when
each write is due from what it did. The age cut of retention reads the injected
`wall_clock`.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable

import attrs
import sqlite_utils
import trio

from storage.logs import LogPolicy, LogRow, MessageLogged, prune, write_batch

from .groupcommit import GroupCommit

__all__ = ["LogSink", "LogSinkStatistics"]

logger = logging.getLogger("catsock.logsink")


@attrs.frozen
class LogSinkStatistics:
    """A snapshot of the sink's counters, for metrics and the admin view."""

    pending: int  # rows buffered, not yet handed to a write
    written: int  # rows committed
    dropped: int  # rows that will never be written: refused when full, or in a failed batch
    errors: int  # failed database operations (batch writes and prunes)
    batches: int  # committed batches
    last_batch_size: int
    last_commit_seconds: float


class LogSink:
    """Buffers log rows from any task and writes them from one `run` task.

    All methods must be called from the trio thread. While `run` or `flush` is active the
    sink owns `db`: nothing else may use that connection, since its writes run in worker
    threads. Give credential reloads and queries their own connection.
    """

    def __init__(
        self,
        db: sqlite_utils.Database,
        *,
        policy: LogPolicy,
        redact_fields: frozenset[str] = frozenset(),
        flush_interval: float = 0.05,
        max_batch: int = 5000,
        max_pending: int = 100_000,
        retention_max_age: float | None = None,
        retention_max_rows: int | None = None,
        prune_interval: float = 60.0,
        lock: trio.Lock | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if flush_interval < 0:
            raise ValueError("flush_interval must be >= 0")
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be >= 1")
        self._policy = LogPolicy(policy)
        self._redact_fields = frozenset(redact_fields)
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._max_pending = max_pending
        retention = retention_max_age is not None or retention_max_rows is not None
        # The lock is held across every use of the connection, so writes and prunes
        # never overlap and batches commit in the order their rows were recorded.
        # The event log (catsock/delivery.py) shares the connection and this lock.
        self._commits = GroupCommit(
            "log sink",
            db,
            trio.Lock() if lock is None else lock,
            due=self._due,
            write_next=self._write_next,
            prune=functools.partial(_prune, retention_max_age, retention_max_rows)
            if retention
            else None,
            prune_interval=prune_interval,
            wall_clock=wall_clock,
            logger=logger,
        )
        self._pending: list[LogRow] = []
        # trio time at which the oldest pending row was recorded (inf: none pending;
        # -inf: a backlog past max_batch, to write without waiting).
        self._pending_since = math.inf
        self.written = 0
        self.dropped = 0

    def record(self, row: LogRow) -> None:
        """Queue `row` for writing. O(1); never blocks."""
        if self._policy is LogPolicy.OFF and isinstance(row, MessageLogged):
            return
        if len(self._pending) >= self._max_pending:
            # The log must never stall message delivery: when the writer falls this far behind
            # (slow disk, database locked by another process) new rows are dropped and counted
            # rather than queued without bound or made to wait.
            self.dropped += 1
            return
        if not self._pending:
            self._pending_since = trio.current_time()
            self._commits.poke()
        self._pending.append(row)
        if len(self._pending) == self._max_batch:
            self._commits.poke()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until cancelled, then flush what is left (bounded by a timeout)."""
        await self._commits.run(task_status=task_status)

    async def flush(self) -> None:
        """Write every row recorded so far, including any batch already being written."""
        await self._commits.flush()

    def statistics(self) -> LogSinkStatistics:
        """Return the counters as they are now."""
        commits = self._commits
        return LogSinkStatistics(
            pending=len(self._pending),
            written=self.written,
            dropped=self.dropped,
            errors=commits.errors,
            batches=commits.batches,
            last_batch_size=commits.last_batch_size,
            last_commit_seconds=commits.last_commit_seconds,
        )

    def _due(self) -> float:
        if len(self._pending) >= self._max_batch:
            return -math.inf
        # Group commit: one transaction for everything that arrives within
        # flush_interval of the first row costs far less than one per row.
        return self._pending_since + self._flush_interval

    def _take(self) -> list[LogRow]:
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        # What is left is a backlog: written without waiting.
        self._pending_since = -math.inf if self._pending else math.inf
        return batch

    async def _write_next(self) -> bool:
        async with self._commits.turn():
            batch = self._take()
            if not batch:
                return True
            try:
                await self._commits.write(
                    functools.partial(
                        write_batch, policy=self._policy, redact_fields=self._redact_fields
                    ),
                    batch,
                    rows=len(batch),
                    what=f"writing a batch of {len(batch)} log rows (dropped)",
                )
            except Exception:
                # sqlite3.Error (disk full, locked) above all; anything else is a bug
                # in a row, and a log must still never take the gateway down.
                self.dropped += len(batch)
                return True
            self.written += len(batch)
        return True


def _prune(
    max_age: float | None, max_rows: int | None, db: sqlite_utils.Database, now: float
) -> int:
    return prune(db, max_age=max_age, max_rows=max_rows, now=now)
