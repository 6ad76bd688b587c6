"""The embedded event log: the gateway's own SQLite file (storage/events.py).

A thin adapter: commits run ``storage.commit_events`` in a worker thread under the
writers' shared lock (``GroupCommit.write``), reads run on delivery's reader
connection (``read``, which serialises them and opens the connection lazily).
Nothing here adds work to the hot path beyond one call per batch.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlite_utils
import trio

import storage

from . import Committed

if TYPE_CHECKING:
    from catsock.groupcommit import GroupCommit

__all__ = ["SqliteEventLog"]


class SqliteEventLog:
    """``db``: the writer's connection; ``read(func, *args)`` runs ``func(reader, *args)``."""

    shared = False
    unavailable: str | None = None  # a failing disk shows in /health's write probe

    def __init__(self, db: sqlite_utils.Database, read: Callable[..., Awaitable[Any]]) -> None:
        self._db = db
        self._read = read

    def open(self) -> contextlib.AbstractAsyncContextManager[object]:
        return contextlib.nullcontext()

    async def head(self) -> int:
        return await trio.to_thread.run_sync(storage.log_head, self._db)

    async def commit(
        self,
        commits: GroupCommit,
        rows: Sequence[storage.EventRow],
        cursors: Mapping[tuple[str, str], int],
        ledger: Sequence[storage.LedgerRow],
        floor: int,
    ) -> Committed:
        duplicates = await commits.write(
            _commit_events, rows, cursors, ledger,
            rows=len(rows), what=f"commit of {len(rows)} events",
        )  # fmt: skip
        return Committed(duplicates)

    async def load_cursors(self, identity: str) -> dict[str, int]:
        cursors: dict[str, int] = await self._read(storage.load_cursors, identity)
        return cursors

    async def first_seq(self) -> int | None:
        first: int | None = await self._read(storage.first_seq)
        return first

    async def read_after(
        self,
        positions: Mapping[str, int],
        *,
        upto: int,
        exclude_sender: str | None,
        limit: int,
    ) -> tuple[list[storage.StoredEvent], int]:
        found: tuple[list[storage.StoredEvent], int] = await self._read(
            functools.partial(
                storage.read_after,
                positions=positions,
                upto=upto,
                exclude_sender=exclude_sender,
                limit=limit,
            )
        )
        return found


def _commit_events(
    db: sqlite_utils.Database,
    rows: Sequence[storage.EventRow],
    cursors: Mapping[tuple[str, str], int],
    ledger: Sequence[storage.LedgerRow],
) -> dict[int, int]:
    # Looked up at each call, not bound at import: tests replace it to inject faults.
    return storage.commit_events(db, rows, cursors, ledger)
