"""The gateway's single log writer: rows are buffered on the event loop, written in batches.

`record` never blocks; `run` group-commits the buffer to SQLite in a worker thread.
Its timing is anchored to events, not to when `run` gets around to them: a batch is
due `flush_interval` after the first of its rows was recorded, and prunes are due
every `prune_interval` from start-up, however long a write or a prune took in its
thread. So a test on a fake clock knows when each write is due from what it did.
The age cut of retention reads the injected `wall_clock`.
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

__all__ = ["LogSink", "LogSinkStatistics"]

logger = logging.getLogger("catsock.logsink")

# How long a cancelled run() may spend writing what is still buffered before giving up.
SHUTDOWN_FLUSH_SECONDS = 5.0


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
        if prune_interval <= 0:
            raise ValueError("prune_interval must be > 0")
        self._db = db
        self._policy = LogPolicy(policy)
        self._redact_fields = frozenset(redact_fields)
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._retention_max_age = retention_max_age
        self._retention_max_rows = retention_max_rows
        self._prune_interval = prune_interval
        self._wall_clock = wall_clock
        self._pending: list[LogRow] = []
        # trio time at which the oldest pending row was recorded (inf: none pending).
        self._pending_since = math.inf
        self._wakeup = trio.Event()
        # Held across every use of the connection, so writes and prunes never overlap and
        # batches commit in the order their rows were recorded. The event log
        # (catsock/delivery.py) shares the connection and this lock.
        self._db_lock = trio.Lock() if lock is None else lock
        # Rows ever accepted into the buffer, and rows whose write has finished (committed or
        # failed): flush() waits for the second to reach the first as it was on entry.
        self._accepted = 0
        self._settled = 0
        self._failing = False
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.batches = 0
        self.last_batch_size = 0
        self.last_commit_seconds = 0.0

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
        self._pending.append(row)
        self._accepted += 1
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until cancelled, then flush what is left (bounded by a timeout)."""
        retention = self._retention_max_age is not None or self._retention_max_rows is not None
        # Prune once at start-up: a gateway that was down may have a backlog of expired rows.
        next_prune = trio.current_time() if retention else math.inf
        task_status.started()
        try:
            while True:
                if trio.current_time() >= next_prune:
                    await self._prune()
                    # Due every interval from the last due time, not from when this prune
                    # ended: a slow thread does not push the schedule back. After a stall
                    # longer than the interval, the schedule starts again from now.
                    next_prune += self._prune_interval
                    if next_prune <= trio.current_time():
                        next_prune = trio.current_time() + self._prune_interval
                    continue
                if not self._pending:
                    # A fresh Event per wait: trio Events cannot be cleared, and nothing can
                    # record() between the emptiness check and this line.
                    self._wakeup = trio.Event()
                    with trio.move_on_at(next_prune):
                        await self._wakeup.wait()
                    continue
                if len(self._pending) < self._max_batch:
                    # Group commit: one transaction for everything that arrives within
                    # flush_interval of the first row costs far less than one per row.
                    with trio.move_on_at(next_prune):
                        await trio.sleep_until(self._pending_since + self._flush_interval)
                    if trio.current_time() >= next_prune:
                        continue  # the prune is due first; these rows keep their due time
                await self._write_next_batch()
        finally:
            with trio.move_on_after(SHUTDOWN_FLUSH_SECONDS, shield=True):
                await self.flush()

    async def flush(self) -> None:
        """Write every row recorded so far, including any batch already being written."""
        target = self._accepted
        while self._settled < target:
            if not await self._write_next_batch():
                break  # nothing left to take: the rows counted in target are all settled

    def statistics(self) -> LogSinkStatistics:
        """Return the counters as they are now."""
        return LogSinkStatistics(
            pending=len(self._pending),
            written=self.written,
            dropped=self.dropped,
            errors=self.errors,
            batches=self.batches,
            last_batch_size=self.last_batch_size,
            last_commit_seconds=self.last_commit_seconds,
        )

    def _take(self) -> list[LogRow]:
        if len(self._pending) <= self._max_batch:
            batch, self._pending = self._pending, []
            self._pending_since = math.inf
        else:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            # What is left is a backlog: write it without waiting.
            self._pending_since = -math.inf
        return batch

    async def _write_next_batch(self) -> bool:
        """Write up to max_batch pending rows; False if there were none."""
        async with self._db_lock:
            # Shielded from taking the rows until their write returns: a cancellation in
            # between would lose rows that are no longer in the buffer for the final flush.
            # The thread itself cannot be interrupted anyway (it holds a transaction).
            with trio.CancelScope(shield=True):
                batch = self._take()
                if not batch:
                    return False
                write = functools.partial(
                    write_batch,
                    self._db,
                    batch,
                    policy=self._policy,
                    redact_fields=self._redact_fields,
                )
                started = time.perf_counter()
                try:
                    await trio.to_thread.run_sync(write)
                except Exception as exc:
                    # sqlite3.Error (disk full, locked) above all; anything else is a
                    # bug in a row, and a log must still never take the gateway down.
                    self.dropped += len(batch)
                    self._failed(f"writing a batch of {len(batch)} log rows (dropped)", exc)
                    return True
                finally:
                    # Whatever happened, these rows are no longer waiting: flush() must not
                    # wait for them forever.
                    self._settled += len(batch)
                self.last_commit_seconds = time.perf_counter() - started
                self.last_batch_size = len(batch)
                self.written += len(batch)
                self.batches += 1
                self._recovered()
        return True

    async def _prune(self) -> None:
        do_prune = functools.partial(
            prune,
            self._db,
            max_age=self._retention_max_age,
            max_rows=self._retention_max_rows,
            now=self._wall_clock(),
        )
        async with self._db_lock:
            try:
                deleted = await trio.to_thread.run_sync(do_prune)
            except Exception as exc:
                self._failed("pruning old log rows", exc)
                return
        logger.debug("pruned %d log rows", deleted)
        self._recovered()

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        # One warning per outage, not per batch: a broken disk would otherwise log twenty
        # lines a second. The counters in statistics() keep the full tally.
        if not self._failing:
            self._failing = True
            logger.warning("log sink: %s failed: %s", what, exc)
        else:
            logger.debug("log sink: %s failed again: %s", what, exc)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("log sink: database writes work again (%d errors so far)", self.errors)
