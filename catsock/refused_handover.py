"""Cluster mode: refusals a node kept in its own file go to Redis once it answers.

While Redis does not answer, a node keeps the events it refuses in its SQLite
file (catsock/refused_sink.py). ``Handover`` moves them into the cluster's
store (``RedisRefusedStore.move``, catsock/refused_store.py) at start-up (rows an
earlier run left) and whenever the node kept one, trying again every ``RETRY``
seconds until Redis takes them. A row leaves the file only after Redis has it;
Redis marks each row it took (its node-local id and the columns that never
change), so a row moved but not yet deleted when the node stopped, or moved by
two workers sharing the file, is stored once. One log line says how many moved.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlite_utils
import trio

from .eventlog import LogUnavailable
from .lag import read_aside
from .refused_store import RedisRefusedStore

__all__ = ["RETRY", "Handover"]

logger = logging.getLogger("catsock.refused")

#: Seconds between attempts while Redis (or the file) does not answer.
RETRY = 1.0
#: Rows read from the file and sent to Redis at a time.
PAGE = 500


class Handover:
    """Moves the ``refused`` rows of ``database`` into ``store``. ``flush_local``
    commits what the node's log writer holds, so a row just kept is seen."""

    def __init__(
        self,
        database: str,
        store: RedisRefusedStore,
        flush_local: Callable[[], Awaitable[None]],
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._database = database
        self._store = store
        self._flush_local = flush_local
        self._wall_clock = wall_clock
        self._wake = trio.Event()
        self._wake.set()  # at start-up: rows an earlier run left
        self.handed_over = 0

    def poke(self) -> None:
        """A refusal was kept in the file: hand it over once Redis answers."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hand rows over whenever poked, until cancelled (cancelling between Redis
        and the file loses nothing: the next run finds the rows and skips them)."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            moved, failing = 0, False
            while True:
                try:
                    moved += await self.hand_over()
                    break
                except (LogUnavailable, sqlite3.Error) as exc:
                    if isinstance(exc, sqlite3.Error) and not failing:
                        logger.warning("refused events: cannot read %s: %s", self._database, exc)
                    failing = True
                await trio.sleep(RETRY)
            if moved:
                logger.warning(
                    "refused events: %d kept in this node's file %s while Redis was"
                    " unreachable are now in Redis at %s",
                    moved,
                    self._database,
                    self._store.where,
                )

    async def hand_over(self) -> int:
        """Move every row the file holds; returns how many Redis stored (rows it
        had already are deleted from the file and not counted). Raises
        LogUnavailable or sqlite3.Error, having moved what it could."""
        await self._flush_local()
        moved = 0
        after = 0
        while rows := await read_aside(self._database, _page, after):
            stored = await self._store.move(rows, now=self._wall_clock())
            await read_aside(self._database, _delete, [row["id"] for row in rows])
            moved += stored
            self.handed_over += stored
            after = rows[-1]["id"]
        return moved


def _page(db: sqlite_utils.Database, after: int) -> list[dict[str, Any]]:
    return list(db.query("SELECT * FROM refused WHERE id > ? ORDER BY id LIMIT ?", [after, PAGE]))


def _delete(db: sqlite_utils.Database, ids: list[int]) -> None:
    with db.conn:
        db.conn.executemany("DELETE FROM refused WHERE id = ?", [(i,) for i in ids])
