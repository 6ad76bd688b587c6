"""A publishing client's durable outbox: its own SQLite file (seed 000 §3.3 ``socket_events``).

The client stores each event it publishes here as ``PENDING`` before sending
it, marks it ``SENT`` when the gateway's ``accepted`` arrives (or ``FAILED``
when the gateway refuses it), and on start-up resends whatever is still
``PENDING``. Killing the publisher therefore loses nothing that was stored;
the gateway drops the copies it already has (it deduplicates by identity and
``message_id``).

The table follows the seed's ``socket_events`` with the columns a client needs:
``payload`` holds the complete envelope text exactly as sent, ``seq`` the
gateway's sequence number from ``accepted``. The file is the client's, not the
gateway's: ``open`` refuses a database that holds anything else.

Plain synchronous sqlite3 (no trio import); every method is thread-safe, so an
async caller may run them in worker threads. WAL mode with ``synchronous =
NORMAL`` survives a killed process; pass ``synchronous="FULL"`` to survive
power loss as well, at one fsync per write.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final, Literal

import attrs

from storage.db import iso

__all__ = ["Outbox", "OutboxEntry", "OutboxError", "OutboxStatus", "Settlement"]

#: ``PRAGMA application_id`` of an outbox file ("csob"), so no other database is mistaken for one.
APPLICATION_ID: Final = 0x63736F62
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS socket_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('PENDING', 'SENT', 'FAILED')),
        retry_count INTEGER NOT NULL DEFAULT 0,
        last_error TEXT NULL,
        seq INTEGER NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_socket_events_status_id ON socket_events (status, id)",
)
_COLUMNS: Final = (
    "id, message_id, type, payload, status, retry_count, last_error, seq, created_at, updated_at"
)


class OutboxError(Exception):
    """The file is not an outbox (or was written by a newer catsock)."""


class OutboxStatus(enum.StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    FAILED = "FAILED"


@attrs.frozen
class OutboxEntry:
    """One row of ``socket_events``."""

    id: int
    message_id: str
    type: str
    payload: str
    status: OutboxStatus
    retry_count: int
    last_error: str | None
    seq: int | None
    created_at: str
    updated_at: str


@attrs.frozen
class Settlement:
    """The gateway's answer to one publish: ``error`` None means SENT, else FAILED."""

    message_id: str
    seq: int | None = None
    error: str | None = None


def _entry(row: tuple[Any, ...]) -> OutboxEntry:
    id_, message_id, type_, payload, status, retries, error, seq, created, updated = row
    return OutboxEntry(
        int(id_),
        str(message_id),
        str(type_),
        str(payload),
        OutboxStatus(status),
        int(retries),
        None if error is None else str(error),
        None if seq is None else int(seq),
        str(created),
        str(updated),
    )


class Outbox:
    """``Outbox(path)`` opens (creating if needed) the outbox file at ``path``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._now = clock
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'FULL' else 'NORMAL'}")
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                name
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%'"
                )
            }
            if app_id == 0 and tables:
                raise OutboxError(f"{self.path} is another database, not a catsock outbox")
            if app_id not in (0, APPLICATION_ID):
                raise OutboxError(f"{self.path} is not a catsock outbox")
            if version > SCHEMA_VERSION:
                raise OutboxError(
                    f"outbox schema version {version} is newer than this catsock "
                    f"supports ({SCHEMA_VERSION})"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- writes ------------------------------------------------------------------------

    def add(self, message_id: str, type: str, payload: str) -> OutboxEntry:
        """Store an event as PENDING and return its row.

        Adding a ``message_id`` that is already stored publishes it again: the row
        becomes PENDING with the new text (the gateway answers ``duplicate`` if it
        had accepted the first one)."""
        now = iso(self._now())
        with self._write() as conn:
            conn.execute(
                "INSERT INTO socket_events"
                " (message_id, type, payload, status, retry_count, created_at, updated_at)"
                " VALUES (?, ?, ?, 'PENDING', 0, ?, ?)"
                " ON CONFLICT (message_id) DO UPDATE SET type = excluded.type,"
                " payload = excluded.payload, status = 'PENDING', last_error = NULL,"
                " updated_at = excluded.updated_at",
                (message_id, type, payload, now, now),
            )
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM socket_events WHERE message_id = ?", (message_id,)
            ).fetchone()
        return _entry(row)

    def settle(self, settlements: Iterable[Settlement]) -> None:
        """Record the gateway's answers in one transaction (SENT with ``seq``, or FAILED)."""
        now = iso(self._now())
        with self._write() as conn:
            self._settle(conn, settlements, now)

    @staticmethod
    def _settle(conn: sqlite3.Connection, settlements: Iterable[Settlement], now: str) -> None:
        for s in settlements:
            if s.error is None:
                conn.execute(
                    "UPDATE socket_events SET status = 'SENT', seq = ?, last_error = NULL,"
                    " updated_at = ? WHERE message_id = ?",
                    (s.seq, now, s.message_id),
                )
            else:
                conn.execute(
                    "UPDATE socket_events SET status = 'FAILED', last_error = ?,"
                    " updated_at = ? WHERE message_id = ?",
                    (s.error, now, s.message_id),
                )

    def record(self, settlements: Iterable[Settlement], retried: Iterable[str] = ()) -> None:
        """A client's batch in one transaction: ``retry_count += 1`` for each of ``retried``
        still PENDING (sent again), then the answers (as ``settle``)."""
        now = iso(self._now())
        with self._write() as conn:
            self._count_retries(conn, retried, now)
            self._settle(conn, settlements, now)

    def count_retries(self, message_ids: Iterable[str]) -> None:
        """``retry_count += 1`` for each still PENDING event (it is being sent again)."""
        now = iso(self._now())
        with self._write() as conn:
            self._count_retries(conn, message_ids, now)

    @staticmethod
    def _count_retries(conn: sqlite3.Connection, message_ids: Iterable[str], now: str) -> None:
        conn.executemany(
            "UPDATE socket_events SET retry_count = retry_count + 1, updated_at = ?"
            " WHERE message_id = ? AND status = 'PENDING'",
            [(now, message_id) for message_id in message_ids],
        )

    def prune(self, *, keep: int = 10_000) -> int:
        """Delete all but the newest ``keep`` SENT rows; the number deleted."""
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM socket_events WHERE status = 'SENT' AND id NOT IN"
                " (SELECT id FROM socket_events WHERE status = 'SENT' ORDER BY id DESC LIMIT ?)",
                (keep,),
            )
            return cursor.rowcount

    # -- reads -------------------------------------------------------------------------

    def get(self, message_id: str) -> OutboxEntry | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM socket_events WHERE message_id = ?", (message_id,)
            ).fetchone()
        return None if row is None else _entry(row)

    def pending(
        self, *, after_id: int = 0, upto_id: int | None = None, limit: int = 100
    ) -> list[OutboxEntry]:
        """PENDING rows with ``after_id < id <= upto_id``, oldest first, at most ``limit``."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM socket_events WHERE status = 'PENDING'"
                " AND id > ? AND id <= ? ORDER BY id LIMIT ?",
                (after_id, (1 << 63) - 1 if upto_id is None else upto_id, limit),
            ).fetchall()
        return [_entry(row) for row in rows]

    def last_id(self) -> int:
        """The highest row id so far (0 for an empty outbox)."""
        with self._lock:
            row = self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM socket_events").fetchone()
        return int(row[0])

    def entries(
        self, status: OutboxStatus | None = None, *, limit: int = 1000
    ) -> list[OutboxEntry]:
        """Rows (of one status, if given), oldest first."""
        where, args = ("", ()) if status is None else (" WHERE status = ?", (str(status),))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM socket_events{where} ORDER BY id LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [_entry(row) for row in rows]

    def counts(self) -> dict[OutboxStatus, int]:
        """How many rows each status has."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT status, COUNT(*) FROM socket_events GROUP BY status"
            ).fetchall()
        out = dict.fromkeys(OutboxStatus, 0)
        out.update({OutboxStatus(status): int(n) for status, n in rows})
        return out
