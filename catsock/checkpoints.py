"""WAL checkpoints off the commit path (issue 10).

SQLite checkpoints the write-ahead log in the commit that takes it past 1,000
pages: a copy of the WAL into the database file and an fsync, in the log
writer's thread, so that one commit (and every event waiting on it) was late by
milliseconds every few seconds. That was catsock's p99 at 1,000 and 5,000
events a second: 6.7–6.9 and 8.3–9.0 ms with it, 4.0–4.2 and 4.2 ms with this
task (``python -m bench --peers catsock --scenarios latency``, two runs each;
docs/benchmarks.md, "The evening of 2026-12-05"). The gateway's writing
connection therefore never checkpoints (``storage.open_db(checkpoints=False)``),
and this task does it from a connection of its own, ``PASSIVE``: it waits for
nobody and nobody waits for it.
"""

from __future__ import annotations

import logging
import os
import sqlite3

import trio

import storage

__all__ = ["CHECKPOINT_EVERY", "run_checkpoints"]

logger = logging.getLogger("catsock.checkpoints")

#: Seconds between two checkpoints: the WAL holds about this much of the writes.
CHECKPOINT_EVERY = 1.0


async def run_checkpoints(
    path: str | os.PathLike[str],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Checkpoint ``path``'s WAL every ``CHECKPOINT_EVERY`` seconds until cancelled."""
    db = await trio.to_thread.run_sync(storage.open_db, path)
    failing = False
    try:
        task_status.started()
        while True:
            await trio.sleep(CHECKPOINT_EVERY)
            try:
                await trio.to_thread.run_sync(storage.checkpoint, db)
            except sqlite3.Error as exc:
                # A full disk, say: the WAL keeps the writes meanwhile.
                if not failing:
                    logger.warning("cannot checkpoint the database (%s); trying again", exc)
                failing = True
            else:
                failing = False
    finally:
        db.close()
