"""Group commit: one way to write a buffer to the database in batches.

The event log (catsock/delivery.py) and the message log (catsock/logsink.py) both
buffer rows on the event loop and write them off it. Each owns its buffer and says
when its next batch is due; `GroupCommit` runs the writer task: it waits until a
batch or a retention prune is due, writes in a worker thread under the lock the
two buffers share (so they take turns on one connection instead of fighting over
SQLite's lock), keeps the statistics and reports failures once per outage. On
cancellation it writes what is left, bounded by `SHUTDOWN_FLUSH_SECONDS`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import sqlite_utils
import trio

__all__ = ["SHUTDOWN_FLUSH_SECONDS", "GroupCommit"]

T = TypeVar("T")

#: How long a cancelled writer may spend writing what is still buffered.
SHUTDOWN_FLUSH_SECONDS = 5.0
#: After a write that must be retried (the rows were kept), wait this long.
RETRY_AFTER_FAILURE = 1.0


class GroupCommit:
    """The writer task of one buffer, and what it counts.

    ``due`` returns the trio time at which the buffer's next batch is due (``inf``:
    nothing buffered); ``write_next`` writes one batch (inside ``turn()``, through
    ``write``) and returns False when nothing was written and the rows were kept,
    to be retried after ``RETRY_AFTER_FAILURE``. ``prune(db, now)`` applies
    retention every ``prune_interval`` seconds, the first time at start-up.
    Call ``poke`` whenever ``due`` may have moved earlier.
    """

    def __init__(
        self,
        name: str,
        db: sqlite_utils.Database | None,
        lock: trio.Lock,
        *,
        due: Callable[[], float],
        write_next: Callable[[], Awaitable[bool]],
        prune: Callable[[sqlite_utils.Database, float], int] | None = None,
        prune_interval: float = 60.0,
        wall_clock: Callable[[], float] = time.time,
        logger: logging.Logger,
    ) -> None:
        if prune_interval <= 0:
            raise ValueError("prune_interval must be > 0")
        self.name = name
        self._db = db
        self.lock = lock
        self._due = due
        self._write_next = write_next
        self._prune = None if db is None or prune is None else functools.partial(prune, db)
        self._prune_interval = prune_interval
        self._wall_clock = wall_clock
        self._logger = logger
        self._wakeup = trio.Event()
        self._retry_at = -math.inf
        self._failing = False
        self.batches = 0
        self.prunes = 0  # retention runs that completed
        self._pruned = trio.Event()
        self.errors = 0
        self.last_batch_size = 0
        self.last_commit_seconds = 0.0
        self._last_ok = -math.inf  # trio time of the last write that worked

    async def wait_pruned(self, count: int) -> None:
        """Return once ``count`` retention runs have completed."""
        while self.prunes < count:
            await self._pruned.wait()

    def poke(self) -> None:
        """Something was buffered: look at ``due`` again."""
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until cancelled, then what is left (bounded)."""
        # Prune once at start-up: a gateway that was down may have a backlog of
        # expired rows. Without retention there is nothing ever due (waiting until
        # a prune that is always due would spin: an idle relay once used a core).
        next_prune = trio.current_time() if self._prune is not None else math.inf
        task_status.started()
        try:
            while True:
                now = trio.current_time()
                if now >= next_prune:
                    await self._prune_now()
                    # Due every interval from the last due time, not from when this
                    # prune ended: a slow thread does not push the schedule back.
                    # After a stall longer than the interval it starts again from now.
                    next_prune += self._prune_interval
                    if next_prune <= trio.current_time():
                        next_prune = trio.current_time() + self._prune_interval
                    continue
                due = max(self._due(), self._retry_at)
                if due > now:
                    # A fresh Event per wait: trio Events cannot be cleared, and
                    # nothing can poke() between reading due() and this line.
                    self._wakeup = trio.Event()
                    with trio.move_on_at(min(due, next_prune)):
                        await self._wakeup.wait()
                    continue
                if not await self._write_next():
                    self._retry_at = trio.current_time() + RETRY_AFTER_FAILURE
        finally:
            with trio.move_on_after(SHUTDOWN_FLUSH_SECONDS, shield=True):
                await self.flush()

    async def flush(self) -> None:
        """Write everything buffered so far (stops at a write that failed)."""
        async with self.lock:
            pass  # a batch being written right now is part of "so far"
        while self._due() < math.inf:
            if not await self._write_next():
                return

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """This buffer's turn on the connection. Shielded: rows taken out of the
        buffer inside it must be written, or put back, never vanish with a
        cancellation (the thread cannot be interrupted anyway: it holds a transaction)."""
        async with self.lock:
            with trio.CancelScope(shield=True):
                yield

    async def write(self, func: Callable[..., T], *args: object, rows: int, what: str) -> T:
        """Run ``func(db, *args)`` in a worker thread, within ``turn()``; counted as
        a batch of ``rows``. A failure is reported (as ``what`` failed) and raised again."""
        assert self._db is not None
        started = time.perf_counter()
        try:
            result = await trio.to_thread.run_sync(func, self._db, *args)
        except Exception as exc:
            self.failed(what, exc)
            raise
        self._wrote(started, rows)
        return result

    async def write_async(
        self, func: Callable[..., Awaitable[T]], *args: object, rows: int, what: str
    ) -> T:
        """``write`` for a store reached over the network (cluster mode's Redis):
        ``await func(*args)`` on the event loop, counted and reported the same way."""
        started = time.perf_counter()
        try:
            result = await func(*args)
        except Exception as exc:
            self.failed(what, exc)
            raise
        self._wrote(started, rows)
        return result

    def _wrote(self, started: float, rows: int) -> None:
        self.last_commit_seconds = time.perf_counter() - started
        self.last_batch_size = rows
        self.batches += 1
        self._last_ok = trio.current_time()
        self._recovered()

    def wrote_within(self, seconds: float) -> bool:
        """A write worked within the last ``seconds`` and none has failed since."""
        return not self._failing and trio.current_time() - self._last_ok < seconds

    def failed(self, what: str, exc: Exception) -> None:
        """Count a failure; one warning per outage, not per batch: a broken disk
        would otherwise log twenty lines a second (the count keeps the tally)."""
        self.errors += 1
        if not self._failing:
            self._failing = True
            self._logger.warning("%s: %s failed: %s", self.name, what, exc)
        else:
            self._logger.debug("%s: %s failed again: %s", self.name, what, exc)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            self._logger.info(
                "%s: database writes work again (%d errors so far)", self.name, self.errors
            )

    async def _prune_now(self) -> None:
        assert self._prune is not None
        async with self.lock:
            try:
                deleted = await trio.to_thread.run_sync(self._prune, self._wall_clock())
            except Exception as exc:
                self.failed("pruning", exc)
                return
        self.prunes += 1
        self._pruned.set()
        self._pruned = trio.Event()
        self._logger.debug("%s: pruned %d rows", self.name, deleted)
        self._recovered()
