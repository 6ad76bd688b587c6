"""Tests for storage.db: pragmas, idempotent migrations and the ISO time format.

Every test opens a real SQLite file under pytest's tmp_path.
"""

from __future__ import annotations

import calendar
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from storage.db import SCHEMA_VERSION, SchemaVersionError, iso, migrate, open_db


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite_utils.Database]:
    database = open_db(tmp_path / "catsock.db")
    yield database
    database.close()


def _pragma(db: sqlite_utils.Database, name: str) -> object:
    return db.conn.execute(f"PRAGMA {name}").fetchone()[0]


def _schema(db: sqlite_utils.Database) -> list[tuple[str, str, str]]:
    rows = db.conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
    return [tuple(row) for row in rows]


def test_open_db_sets_pragmas(db: sqlite_utils.Database) -> None:
    assert _pragma(db, "journal_mode") == "wal"
    assert _pragma(db, "synchronous") == 1  # NORMAL
    assert _pragma(db, "busy_timeout") == 5000
    assert _pragma(db, "user_version") == SCHEMA_VERSION >= 1


def test_open_db_creates_tables_and_indexes(db: sqlite_utils.Database) -> None:
    assert set(db.table_names()) >= {"credentials", "connections", "messages"}
    assert db["credentials"].columns_dict == {
        "name": str,
        "client_type": str,
        "user_id": str,
        "token_hash": str,
        "created_at": str,
        "revoked_at": str,
        "publish_only": int,
        "expires_at": float,
    }
    assert db["revoked_jtis"].columns_dict == {"jti": str, "revoked_at": str}
    assert list(db["connections"].columns_dict) == [
        "id",
        "client_type",
        "identity",
        "remote_addr",
        "connected_at",
        "last_heartbeat_at",
        "disconnected_at",
        "close_code",
        "close_reason",
    ]
    assert list(db["messages"].columns_dict) == [
        "id",
        "direction",
        "type",
        "message_id",
        "connection_id",
        "size",
        "payload",
        "created_at",
    ]
    indexed = {
        table: {tuple(index.columns) for index in db[table].indexes}
        for table in ("connections", "messages")
    }
    assert {("connected_at",), ("identity",)} <= indexed["connections"]
    assert {("created_at",), ("type", "created_at"), ("connection_id",), ("message_id",)} <= (
        indexed["messages"]
    )


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "catsock.db"
    db = open_db(path)
    db.conn.execute(
        "INSERT INTO messages (direction, type, size, created_at) VALUES ('in', 'ping', 2, 'x')"
    )
    db.conn.commit()
    before = _schema(db)
    migrate(db)
    migrate(db)
    assert _schema(db) == before
    db.close()

    reopened = open_db(path)
    assert _schema(reopened) == before
    assert reopened.conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    reopened.close()


def test_migrate_converges_on_existing_tables_without_version(db: sqlite_utils.Database) -> None:
    # A schema created by hand (or a crash between DDL and the version bump) must not break.
    db.conn.execute("PRAGMA user_version = 0")
    migrate(db)
    assert _pragma(db, "user_version") == SCHEMA_VERSION


def test_open_db_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "catsock.db"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(SchemaVersionError):
        open_db(path)


def test_connection_is_usable_from_another_thread(db: sqlite_utils.Database) -> None:
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with db.atomic():
                db.conn.execute(
                    "INSERT INTO messages (direction, type, size, created_at)"
                    " VALUES ('out', 'pong', 2, 'x')"
                )
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    worker = threading.Thread(target=write)
    worker.start()
    worker.join()
    assert errors == []
    assert db.conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 1


def test_iso_formats_utc_with_milliseconds() -> None:
    ts = calendar.timegm((2026, 11, 23, 12, 34, 56)) + 0.789
    assert iso(ts) == "2026-11-23T12:34:56.789Z"
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    # Below a millisecond is truncated, never rounded up into the next second.
    assert iso(59.9999) == "1970-01-01T00:00:59.999Z"


def test_iso_sorts_like_time() -> None:
    stamps = [0.0, 0.001, 9.999, 10.0, 100.5, 1e9, 1e9 + 0.25, 2e9]
    formatted = [iso(ts) for ts in stamps]
    assert sorted(formatted) == formatted
    assert len(set(formatted)) == len(formatted)


def test_version_4_drops_message_rows_that_copy_a_published_event(
    db: sqlite_utils.Database,
) -> None:
    conn = db.conn
    conn.execute(
        "INSERT INTO events (seq, message_id, sender, connection_id, type, channels, priority,"
        " created_at, body) VALUES (1, 'e1', 'cats', 'c1', 'click', 'type:AFAD', 3, 0, '{}')"
    )
    copy = "INSERT INTO messages (direction, type, message_id, connection_id, size, created_at)"
    conn.execute(copy + " VALUES ('in', 'click', 'e1', 'c1', 2, 'x')")  # the old copy
    conn.execute(copy + " VALUES ('in', 'click', 'e1', 'c9', 2, 'x')")  # refused elsewhere
    conn.execute(copy + " VALUES ('out', 'error', 'e1', 'c1', 2, 'x')")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    migrate(db)
    rows = db.conn.execute("SELECT direction, connection_id FROM messages ORDER BY id").fetchall()
    assert rows == [("in", "c9"), ("out", "c1")]
