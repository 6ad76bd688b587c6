"""Opening catsock's SQLite database and keeping its schema current.

Every process (gateway, CLI) goes through `open_db`, so pragmas and migrations live in one place.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlite_utils

__all__ = [
    "SCHEMA_VERSION",
    "SchemaVersionError",
    "checkpoint",
    "immediate",
    "insert_rows",
    "iso",
    "keep_newest",
    "key_ends",
    "last_key_before",
    "migrate",
    "nth_newest_key",
    "open_db",
]

Step = str | Callable[[sqlite3.Connection], None]


def _add_column(table: str, column: str, declaration: str) -> Step:
    """ALTER TABLE ADD COLUMN, skipped when the column is there (SQLite has no IF NOT EXISTS
    for it), so a re-run migration still converges."""

    def step(conn: sqlite3.Connection) -> None:
        existing = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in existing:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    return step


# One entry per schema version; entry N moves a database from user_version N to N + 1.
# Statements use IF NOT EXISTS so a half-applied or hand-created schema still converges.
_BUMP = "UPDATE credentials_version SET version = version + 1 WHERE id = 1;"

_MIGRATIONS: tuple[tuple[Step, ...], ...] = (
    (
        """
        CREATE TABLE IF NOT EXISTS credentials (
            name TEXT PRIMARY KEY,
            client_type TEXT NOT NULL,
            user_id TEXT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            revoked_at TEXT NULL
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS connections (
            id TEXT PRIMARY KEY,
            client_type TEXT,
            identity TEXT,
            remote_addr TEXT,
            connected_at TEXT NOT NULL,
            last_heartbeat_at TEXT,
            disconnected_at TEXT,
            close_code INTEGER,
            close_reason TEXT
        )
        """,
        "CREATE INDEX IF NOT EXISTS idx_connections_connected_at ON connections (connected_at)",
        "CREATE INDEX IF NOT EXISTS idx_connections_identity ON connections (identity)",
        """
        CREATE TABLE IF NOT EXISTS messages (
            id INTEGER PRIMARY KEY,
            direction TEXT NOT NULL,
            type TEXT NOT NULL,
            message_id TEXT,
            connection_id TEXT,
            size INTEGER NOT NULL,
            payload TEXT NULL,
            created_at TEXT NOT NULL
        )
        """,
        "CREATE INDEX IF NOT EXISTS idx_messages_created_at ON messages (created_at)",
        "CREATE INDEX IF NOT EXISTS idx_messages_type_created_at ON messages (type, created_at)",
        "CREATE INDEX IF NOT EXISTS idx_messages_connection_id ON messages (connection_id)",
        "CREATE INDEX IF NOT EXISTS idx_messages_message_id ON messages (message_id)",
    ),
    # 2: the event log, durable cursors and the delivery ledger (storage/events.py).
    (
        """
        CREATE TABLE IF NOT EXISTS events (
            seq INTEGER PRIMARY KEY,
            message_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            connection_id TEXT,
            type TEXT NOT NULL,
            channels TEXT NOT NULL,
            priority INTEGER NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL,
            body TEXT NOT NULL
        )
        """,
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_events_publish ON events (sender, message_id)",
        "CREATE INDEX IF NOT EXISTS idx_events_message_id ON events (message_id)",
        "CREATE INDEX IF NOT EXISTS idx_events_created_at ON events (created_at)",
        """
        CREATE TABLE IF NOT EXISTS cursors (
            identity TEXT NOT NULL,
            channel TEXT NOT NULL,
            seq INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (identity, channel)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX IF NOT EXISTS idx_cursors_channel ON cursors (channel)",
        """
        CREATE TABLE IF NOT EXISTS ledger (
            id INTEGER PRIMARY KEY,
            identity TEXT NOT NULL,
            kind TEXT NOT NULL,
            first_seq INTEGER NOT NULL,
            last_seq INTEGER NOT NULL,
            connection_id TEXT,
            at REAL NOT NULL,
            detail TEXT
        )
        """,
        "CREATE INDEX IF NOT EXISTS idx_ledger_identity ON ledger (identity, last_seq)",
        "CREATE INDEX IF NOT EXISTS idx_ledger_last_seq ON ledger (last_seq)",
    ),
    # 3: publish-only tokens (they receive nothing; docs/delivery.md §7).
    (_add_column("credentials", "publish_only", "INTEGER NOT NULL DEFAULT 0"),),
    # 4: published events are no longer copied into the message log (the event log
    # holds them; storage/logs.py reads them from there): drop the old copies.
    (
        """
        DELETE FROM messages WHERE direction = 'in' AND EXISTS (
            SELECT 1 FROM events e
            WHERE e.message_id = messages.message_id AND e.connection_id = messages.connection_id
        )
        """,
    ),
    # 5: one index on events instead of three. Each index is a B-tree insert per event
    # (with UUID message_ids a random one); (message_id, sender) serves both the
    # duplicate check and lookups by message_id, and age pruning walks seq instead
    # of an index on created_at (storage/events.py).
    (
        "DROP INDEX IF EXISTS idx_events_publish",
        "DROP INDEX IF EXISTS idx_events_message_id",
        "DROP INDEX IF EXISTS idx_events_created_at",
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_events_message ON events (message_id, sender)",
    ),
    # 6: the refused-event store (storage/refused.py).
    (
        """
        CREATE TABLE IF NOT EXISTS refused (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            identity TEXT,
            client_type TEXT,
            user_id TEXT,
            connection_id TEXT,
            transport TEXT NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            type TEXT,
            message_id TEXT,
            size INTEGER NOT NULL,
            body TEXT,
            retried_at TEXT,
            retry_result TEXT,
            retry_seq INTEGER
        )
        """,
        "CREATE INDEX IF NOT EXISTS idx_refused_message_id ON refused (message_id)",
    ),
    # 7: the admin audit trail (storage/audit.py): every write made from the console.
    (
        """
        CREATE TABLE IF NOT EXISTS audit (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            remote TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL,
            result TEXT NOT NULL
        )
        """,
    ),
    # 8: opaque tokens that expire, and the JWT ``jti`` deny-list (storage/credentials.py).
    (
        _add_column("credentials", "expires_at", "REAL NULL"),
        """
        CREATE TABLE IF NOT EXISTS revoked_jtis (
            jti TEXT PRIMARY KEY,
            revoked_at TEXT NOT NULL
        ) WITHOUT ROWID
        """,
    ),
    # 9: a counter that only changes with the tokens, so a gateway can tell "the
    # tokens changed" from "something was written" (PRAGMA data_version moves with
    # every commit of the log writers) without reloading the tokens (issue 10).
    (
        """
        CREATE TABLE IF NOT EXISTS credentials_version (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL
        )
        """,
        "INSERT OR IGNORE INTO credentials_version (id, version) VALUES (1, 0)",
        *(
            f"CREATE TRIGGER IF NOT EXISTS {table}_{when.lower()}_bumps_version"
            f" AFTER {when} ON {table} BEGIN {_BUMP} END"
            for table in ("credentials", "revoked_jtis")
            for when in ("INSERT", "UPDATE", "DELETE")
        ),
    ),
)

SCHEMA_VERSION = len(_MIGRATIONS)


class SchemaVersionError(Exception):
    """The database was written by a newer catsock than this one."""


def iso(ts: float) -> str:
    """Format a unix time as ISO-8601 UTC with milliseconds, e.g. ``2026-11-23T12:34:56.789Z``."""
    # Fixed width and a literal Z keep stored times sortable as plain text.
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _user_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(db: sqlite_utils.Database) -> None:
    """Bring the schema up to `SCHEMA_VERSION`; a no-op when it is already there."""
    conn = db.conn
    if _user_version(conn) == SCHEMA_VERSION:
        return
    # BEGIN IMMEDIATE takes the write lock before re-reading the version, so a gateway and
    # a CLI starting together cannot both apply the same step. executescript() is avoided
    # because it commits any open transaction first.
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _user_version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"database schema version {version} is newer than this catsock "
                f"supports ({SCHEMA_VERSION})"
            )
        for step in _MIGRATIONS[version:]:
            for statement in step:
                if callable(statement):
                    statement(conn)
                else:
                    conn.execute(statement)
        # PRAGMA cannot take a bound parameter; SCHEMA_VERSION is our own int.
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_db(path: str | os.PathLike[str], *, checkpoints: bool = True) -> sqlite_utils.Database:
    """Open (creating if needed) the database at `path`, tuned for one writer and many readers.

    ``checkpoints=False``: this connection's commits never checkpoint the WAL (SQLite
    does it by default in the commit that crosses 1,000 pages, a copy and an fsync
    that then delay that commit by milliseconds). Its owner must call ``checkpoint``
    from another connection, or the WAL grows without bound."""
    # check_same_thread=False: the log writer runs its transactions in trio worker threads,
    # one at a time, and its callers serialize access to the connection.
    conn = sqlite3.connect(os.fspath(path), check_same_thread=False)
    try:
        # busy_timeout first, so the pragmas and migration below wait for another process's
        # lock instead of failing straight away.
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable across application crashes in WAL mode; only an OS crash or power
        # loss can drop the last commits, which is an acceptable trade for log throughput.
        conn.execute("PRAGMA synchronous = NORMAL")
        if not checkpoints:
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        db = sqlite_utils.Database(conn)
        migrate(db)
    except BaseException:
        conn.close()
        raise
    return db


# -- retention, shared by the message log and the event log ---------------------------


#: Rows per INSERT statement: largest first, so a batch takes a few statements. At
#: most 64 rows of 10 values stays under SQLite's oldest limit of 999 parameters, and
#: five fixed shapes per table stay in the sqlite3 module's statement cache.
CHUNKS = (64, 16, 4, 1)


def insert_rows(
    conn: sqlite3.Connection, into: str, columns: int, rows: Sequence[Sequence[Any]], tail: str = ""
) -> None:
    """``INSERT INTO <into> VALUES (…), (…), …``: ``rows`` in a few statements of up
    to 64 rows each (``tail``: an ``ON CONFLICT`` clause, say).

    ``executemany`` takes one step per row and lets go of the GIL around each. A
    writer thread taking it back while the event loop is busy waits up to the
    interpreter's switch interval each time. ``python -m bench.convoy`` on this
    machine's two cores, 200 rows beside a busy thread, medians: 288 ms that way,
    37 ms in statements of many rows; with the 1 ms switch interval ``catsock
    serve`` sets, 36 and 0.3 ms (idle: 0.35 and 0.28 ms). Publishers' acks and
    durable deliveries wait for that commit; in a soak at twice the capacity
    commits took 0.06–0.7 s (issue 19)."""
    one = "(" + ", ".join("?" * columns) + ")"
    done, n = 0, len(rows)
    for size in CHUNKS:
        if n - done < size:
            continue
        sql = f"INSERT INTO {into} VALUES {', '.join([one] * size)}{tail}"
        while n - done >= size:
            conn.execute(sql, [value for row in rows[done : done + size] for value in row])
            done += size


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A transaction that holds the write lock from its start (waiting for it as long
    as the busy timeout allows). One that began with a read could not take the lock
    once another connection had written meanwhile (SQLITE_BUSY at once, whatever the
    busy timeout): retention pruning failed now and then that way."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def key_ends(conn: sqlite3.Connection, table: str, key: str) -> tuple[int, int] | None:
    """The lowest and highest ``key`` of ``table`` (None: it is empty), each read from
    its end of the index (one ``SELECT MIN(k), MAX(k)`` walks the table: SQLite's
    shortcut is for a lone MIN or MAX)."""
    low, high = conn.execute(
        f"SELECT (SELECT MIN({key}) FROM {table}), (SELECT MAX({key}) FROM {table})"
    ).fetchone()
    return None if low is None else (int(low), int(high))


def last_key_before(
    conn: sqlite3.Connection, table: str, key: str, column: str, cut: float | str
) -> int | None:
    """The highest ``key`` of ``table`` whose ``column`` (a time: seconds, or ISO text
    as ``iso`` writes it) is below ``cut``, found by bisecting the key (None: there is
    none). For tables whose rows are numbered in the order they are dated: a clock
    stepped back, or a row dated a little before it was inserted, blurs the edge by
    that much. A few primary-key lookups, where an index on the time would cost every
    insert and a ``WHERE column < ?`` walks the whole table (the ledger's age prune:
    a third of a second at 3 million rows, once a minute under the write lock, in
    issue 19's soak)."""
    ends = key_ends(conn, table, key)
    if ends is None:
        return None
    low, high = ends
    found = None
    while low <= high:
        middle = (low + high) // 2
        row = conn.execute(
            f"SELECT {key}, {column} FROM {table} WHERE {key} >= ? ORDER BY {key} LIMIT 1",
            (middle,),
        ).fetchone()
        if row is None or row[0] > high:
            high = middle - 1
        elif row[1] < cut:
            found, low = row[0], row[0] + 1
        else:
            high = middle - 1
    return found


def nth_newest_key(conn: sqlite3.Connection, table: str, key: str, n: int) -> int | None:
    """The ``key`` ``n - 1`` below the highest: deleting up to it keeps at most ``n - 1``
    rows (exactly that many unless the keys have gaps). None when the keys span fewer
    than ``n``, so the table holds fewer than ``n`` rows.

    Read at the ends of the key, not by counting: ``ORDER BY key DESC OFFSET n - 1``
    walks the whole table while it holds fewer than ``n`` rows, and a retention prune
    runs once a minute under the write lock (0.4 s at 800,000 events in issue 19's
    soak, every commit and every AFAD waiting)."""
    ends = key_ends(conn, table, key)
    if ends is None or ends[1] - (n - 1) < ends[0]:
        return None
    return ends[1] - (n - 1)


def keep_newest(conn: sqlite3.Connection, table: str, key: str, rows: int) -> int:
    """Delete all but the ``rows`` rows of ``table`` with the highest ``key`` (which
    grows with insertion); returns how many went. Fewer rows than that: none. Where
    the keys have gaps, fewer are kept."""
    if rows < 0:
        raise ValueError("rows must be >= 0")
    cut = nth_newest_key(conn, table, key, rows + 1)
    if cut is None:
        return 0
    return conn.execute(f"DELETE FROM {table} WHERE {key} <= ?", (cut,)).rowcount


def checkpoint(db: sqlite_utils.Database) -> int:
    """Copy what the WAL holds into the database file without waiting for or
    blocking anyone (``PASSIVE``); returns the frames the WAL holds."""
    row = db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(row[1])

