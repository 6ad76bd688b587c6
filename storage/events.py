"""The event log, durable cursors and the delivery ledger (docs/delivery.md).

The gateway numbers events (``seq``) in memory and commits them here in batches,
together with the cursor moves and ledger rows gathered meanwhile, in one
transaction (`commit`). A retried publish is recognised by the unique
(sender, message_id) pair and is reported back instead of stored twice.
Reads (`read_after`, `load_cursors`, ledger queries) use their own connection.
Times are Unix seconds (REAL): compact, and cheap to write on the hot path.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import attrs
import sqlite_utils

from storage.db import immediate, insert_rows, last_key_before, nth_newest_key

__all__ = [
    "LOG_START",
    "RETENTION",
    "EventRow",
    "LedgerRow",
    "Pruned",
    "SeqTaken",
    "StoredEvent",
    "commit",
    "events_by_message_id",
    "first_seq",
    "head",
    "ledger_rows",
    "load_cursors",
    "prune_events",
    "read_after",
    "recipients_of",
]

#: The cursor "channel" that says where an identity starts on channels it has no
#: cursor for yet: set to the log's head when its token is created.
LOG_START = "*"


@attrs.frozen(slots=True)
class EventRow:
    seq: int
    message_id: str
    sender: str  # the publisher's identity
    connection_id: str | None
    type: str
    channels: tuple[str, ...]
    priority: int
    created_at: float
    expires_at: float | None
    body: str  # the envelope exactly as published


@attrs.frozen(slots=True)
class LedgerRow:
    """What happened to events ``first_seq..last_seq`` for one recipient identity.

    ``kind`` is written, acked, expired, dropped or duplicate. A range covers
    only the events routed to that identity within it (writes go in seq order).
    """

    identity: str
    kind: str
    first_seq: int
    last_seq: int
    connection_id: str | None
    at: float
    detail: str | None = None


@attrs.frozen(slots=True)
class StoredEvent:
    seq: int
    type: str
    sender: str
    channels: tuple[str, ...]
    priority: int
    expires_at: float | None
    body: str
    #: When it was accepted (wall clock), where the log keeps it: the shared log's
    #: stream does (catsock/eventlog/packing.py); None from this file's reads.
    created_at: float | None = None


def head(db: sqlite_utils.Database) -> int:
    """The highest committed seq (0 for an empty log)."""
    row = db.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
    return int(row[0])


class SeqTaken(Exception):
    """An event's ``seq`` is already in the log under another publish: something else
    wrote this log (a second gateway on the same file). ``head`` is the log's head now;
    nothing of the batch was stored."""

    def __init__(self, seq: int, head: int) -> None:
        super().__init__(f"seq {seq} is already taken (the log's head is {head})")
        self.seq = seq
        self.head = head


_EVENT_COLUMNS = (
    "events (seq, message_id, sender, connection_id, type, channels, priority, created_at,"
    " expires_at, body)"
)
_INSERT_EVENT = f"INSERT INTO {_EVENT_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _values(e: EventRow) -> tuple[Any, ...]:
    return (
        e.seq, e.message_id, e.sender, e.connection_id, e.type, " ".join(e.channels),
        e.priority, e.created_at, e.expires_at, e.body,
    )  # fmt: skip


def commit(
    db: sqlite_utils.Database,
    events: Sequence[EventRow],
    cursors: Mapping[tuple[str, str], int],
    ledger: Sequence[LedgerRow],
    *,
    now: float | None = None,
) -> dict[int, int]:
    """Write one batch in one transaction; meant for a worker thread.

    Returns ``{seq: earlier_seq}`` for every event that repeats an earlier
    (sender, message_id): those are not stored again. Raises ``SeqTaken`` (and
    stores nothing) if an event's seq is in the log already for another publish.
    """
    stamp = time.time() if now is None else now
    try:
        with db.atomic():
            duplicates = _insert_events(db, events)
            _move_cursors_and_note(db, cursors, ledger, stamp)
    except SeqTaken as taken:
        taken.head = head(db)  # rolled back: the head without any of this batch
        raise
    return duplicates


def _move_cursors_and_note(
    db: sqlite_utils.Database,
    cursors: Mapping[tuple[str, str], int],
    ledger: Sequence[LedgerRow],
    stamp: float,
) -> None:
    conn = db.conn
    if cursors:
        # Cursors only move forward, whatever order moves arrive in.
        insert_rows(
            conn,
            "cursors (identity, channel, seq, updated_at)",
            4,
            [(identity, channel, seq, stamp) for (identity, channel), seq in cursors.items()],
            " ON CONFLICT (identity, channel) DO UPDATE"
            " SET seq = MAX(seq, excluded.seq), updated_at = excluded.updated_at",
        )
    if ledger:
        insert_rows(
            conn,
            "ledger (identity, kind, first_seq, last_seq, connection_id, at, detail)",
            7,
            [attrs.astuple(row) for row in ledger],
        )


def _insert_events(db: sqlite_utils.Database, events: Sequence[EventRow]) -> dict[int, int]:
    if not events:
        return {}
    conn = db.conn
    try:
        # The common case, a batch of new events: one statement for all of them.
        with db.atomic():
            insert_rows(conn, _EVENT_COLUMNS, 10, [_values(e) for e in events])
        return {}
    except sqlite3.IntegrityError:
        pass  # a retried publish, most likely: sort it out row by row
    duplicates: dict[int, int] = {}
    for e in events:
        earlier = conn.execute(
            "SELECT seq FROM events WHERE sender = ? AND message_id = ?", (e.sender, e.message_id)
        ).fetchone()
        if earlier is not None:
            duplicates[e.seq] = int(earlier[0])
            continue
        try:
            conn.execute(_INSERT_EVENT, _values(e))
        except sqlite3.IntegrityError:
            # Not a duplicate publish, so the seq itself is taken.
            raise SeqTaken(e.seq, -1) from None  # commit() fills in the head
    return duplicates


def load_cursors(db: sqlite_utils.Database, identity: str) -> dict[str, int]:
    """``{channel: seq}`` for ``identity``, ``LOG_START`` included if set."""
    rows = db.conn.execute(
        "SELECT channel, seq FROM cursors WHERE identity = ?", (identity,)
    ).fetchall()
    return {channel: int(seq) for channel, seq in rows}


def read_after(
    db: sqlite_utils.Database,
    positions: Mapping[str, int],
    *,
    upto: int,
    exclude_sender: str | None,
    limit: int,
) -> tuple[list[StoredEvent], int]:
    """Events on ``positions``' channels after each channel's seq, up to ``upto``.

    Returns the events (at most ``limit``, in seq order) and the last seq
    examined: pass it back as the position to go on. Events from
    ``exclude_sender`` are skipped (nobody receives its own events).
    """
    start = min(positions.values(), default=upto)
    found: list[StoredEvent] = []
    scanned = start
    while scanned < upto and len(found) < limit:
        rows = db.conn.execute(
            "SELECT seq, type, sender, channels, priority, expires_at, body FROM events"
            " WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (scanned, upto, max(limit, 256)),
        ).fetchall()
        if not rows:
            scanned = upto
            break
        for seq, type_, sender, channels_text, priority, expires_at, body in rows:
            scanned = seq
            channels = tuple(channels_text.split())
            if sender != exclude_sender and any(
                c in positions and seq > positions[c] for c in channels
            ):
                found.append(StoredEvent(seq, type_, sender, channels, priority, expires_at, body))
                if len(found) >= limit:
                    break
    return found, scanned


@attrs.frozen
class Pruned:
    """What a prune did: rows deleted, and events it had to take that a durable
    recipient had not had yet (each such recipient got a ``dropped`` ledger row
    with detail ``RETENTION``)."""

    deleted: int
    lost: int


#: The ledger detail of events pruned before a durable recipient had them.
RETENTION = "retention"


def prune_events(
    db: sqlite_utils.Database,
    *,
    max_age: float | None,
    max_rows: int | None,
    hard_rows: int | None = None,
    wants: Mapping[str, Mapping[str, int]] | None = None,
    now: float | None = None,
) -> Pruned:
    """Apply retention to the log and the ledger.

    ``wants`` says where each durable recipient stands: ``{identity: {channel:
    seq}}``, every channel it listens on with the seq it has had. ``max_age`` and
    ``max_rows`` are soft: they prune only up to the first event some recipient
    there has not had yet, so an identity that is away keeps what it still needs.
    ``hard_rows`` protects the disk: past it the oldest events go whoever needs
    them, and each identity that had not had some of them gets a ``dropped``
    ledger row (detail ``RETENTION``) for the range. The newest event always
    stays, so the next seq after a restart is never one a cursor has passed.
    """
    now = time.time() if now is None else now
    wants = wants or {}
    deleted = lost = 0
    conn = db.conn
    with immediate(conn):
        cuts = []  # the highest seq each rule would delete
        if max_age is not None:
            cuts.append(_last_seq_before(db, now - max_age))
        if max_rows is not None:
            cuts.append(_nth_newest(conn, max(max_rows, 1) + 1))
        found = [c for c in cuts if c is not None]
        cut = max(found) if found else None
        if cut is not None:
            needed = _first_needed(conn, wants, cut)
            if needed is not None:
                cut = needed - 1
        if hard_rows is not None:
            hard = _nth_newest(conn, max(hard_rows, 1) + 1)
            if hard is not None and (cut is None or hard > cut):
                lost = _record_losses(conn, wants, hard, now)
                cut = hard
        if cut is not None:
            deleted += conn.execute(
                "DELETE FROM events WHERE seq <= ? AND seq < (SELECT MAX(seq) FROM events)",
                (cut,),
            ).rowcount
        # Ledger rows go with their events, and by age, except the record of a
        # loss, which stays its full age: it is what explains a gap later.
        if max_age is not None:
            # Rows are numbered about in the order of their dates (a "written" row is
            # dated when its range began, a second or so before): bisect the id, then
            # delete in that id range only. One dated out of order goes next time.
            last = last_key_before(conn, "ledger", "id", "at", now - max_age)
            if last is not None:
                deleted += conn.execute(
                    "DELETE FROM ledger WHERE id <= ? AND at < ?", (last, now - max_age)
                ).rowcount
        oldest = conn.execute("SELECT MIN(seq) FROM events").fetchone()[0]
        if oldest is not None:
            deleted += conn.execute(
                "DELETE FROM ledger WHERE last_seq < ? AND NOT (kind = 'dropped' AND detail = ?)",
                (oldest, RETENTION),
            ).rowcount
    return Pruned(deleted, lost)


def _nth_newest(conn: sqlite3.Connection, n: int) -> int | None:
    """The seq ``n - 1`` below the newest (storage.db.nth_newest_key)."""
    return nth_newest_key(conn, "events", "seq", n)


def _first_needed(
    conn: sqlite3.Connection, wants: Mapping[str, Mapping[str, int]], upto: int
) -> int | None:
    """The lowest seq up to ``upto`` that a recipient in ``wants`` has not had."""
    floors: dict[str, int] = {}
    for positions in wants.values():
        for channel, seq in positions.items():
            floors[channel] = min(seq, floors.get(channel, seq))
    first = None
    for channel, seq in floors.items():
        if seq >= upto:
            continue
        # Channels are stored space-separated: pad both sides to match whole names.
        (found,) = conn.execute(
            "SELECT MIN(seq) FROM events WHERE seq > ? AND seq <= ?"
            " AND instr(' ' || channels || ' ', ?) > 0",
            (seq, upto, f" {channel} "),
        ).fetchone()
        if found is not None and (first is None or found < first):
            first = int(found)
    return first


def _record_losses(
    conn: sqlite3.Connection, wants: Mapping[str, Mapping[str, int]], cut: int, now: float
) -> int:
    """Events up to ``cut`` are about to go: a ``dropped`` ledger row for every
    recipient that had not had some of them (from the first such to ``cut``);
    returns how many of them some recipient had not had."""
    newest = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
    if newest is None or not wants:
        return 0
    cut = min(cut, newest - 1)
    lowest = min((seq for p in wants.values() for seq in p.values()), default=cut)
    first_missed: dict[str, int] = {}
    missed = 0
    for seq, channels_text in conn.execute(
        "SELECT seq, channels FROM events WHERE seq > ? AND seq <= ? ORDER BY seq", (lowest, cut)
    ):
        channels = channels_text.split()
        anyone = False
        for identity, positions in wants.items():
            if any(c in positions and seq > positions[c] for c in channels):
                first_missed.setdefault(identity, seq)
                anyone = True
        missed += anyone
    conn.executemany(
        "INSERT INTO ledger (identity, kind, first_seq, last_seq, connection_id, at, detail)"
        " VALUES (?, 'dropped', ?, ?, NULL, ?, ?)",
        [(identity, first, cut, now, RETENTION) for identity, first in first_missed.items()],
    )
    return missed


def first_seq(db: sqlite_utils.Database) -> int | None:
    """The oldest seq still in the log (None: the log is empty)."""
    row = db.conn.execute("SELECT MIN(seq) FROM events").fetchone()
    return None if row[0] is None else int(row[0])


def _last_seq_before(db: sqlite_utils.Database, cut: float) -> int | None:
    """The highest seq created before ``cut``: events are numbered in the order they
    are created, so their times rise with seq (storage.db.last_key_before)."""
    return last_key_before(db.conn, "events", "seq", "created_at", cut)


# -- queries for the ledger CLI ---------------------------------------------------------


def events_by_message_id(db: sqlite_utils.Database, message_id: str) -> list[dict[str, Any]]:
    """Every logged event with this ``message_id`` (one per publishing identity)."""
    return list(
        db.query(
            "SELECT seq, message_id, sender, connection_id, type, channels, priority,"
            " created_at, expires_at FROM events WHERE message_id = ? ORDER BY seq",
            [message_id],
        )
    )


def ledger_rows(
    db: sqlite_utils.Database, seq: int, identity: str | None = None
) -> list[dict[str, Any]]:
    """Ledger rows whose range covers ``seq`` (for one identity, or all)."""
    sql = "SELECT * FROM ledger WHERE last_seq >= ? AND first_seq <= ?"
    params: list[Any] = [seq, seq]
    if identity is not None:
        sql += " AND identity = ?"
        params.append(identity)
    return list(db.query(sql + " ORDER BY at, id", params))


def recipients_of(db: sqlite_utils.Database, channels: Collection[str]) -> list[dict[str, Any]]:
    """Durable cursors on any of ``channels``: who the log keeps this event for."""
    wanted = list(channels)
    if not wanted:
        return []
    marks = ", ".join("?" for _ in wanted)
    return list(
        db.query(
            f"SELECT identity, channel, seq, updated_at FROM cursors WHERE channel IN ({marks})"
            " ORDER BY identity, channel",
            wanted,
        )
    )
