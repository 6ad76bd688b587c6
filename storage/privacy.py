"""Personal data at rest: its lifetime in the event log, and erasing one person's data.

``strip_personal`` removes the personal fields from events older than their
lifetime (``privacy.personal_retention_hours``), keeping the events themselves for
delivery and the ledger; the event log's prune calls it (catsock/delivery.py).
``forget`` serves ``python -m catsock forget``: it redacts every event, message-log
row and connection row that names one visitor (a field's value) or one user.
Both match keys as protocol/privacy.py does (any case, any depth, parsed JSON), and
write with ``secure_delete`` on, so the old text is zeroed in the file, not freed.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import orjson
import sqlite_utils

from protocol.privacy import Projection, fold, may_contain, project
from storage.db import immediate
from storage.events import _last_seq_before
from storage.logs import redact

__all__ = ["USER_FIELDS", "USER_NAME_FIELDS", "Erasure", "Forgotten", "forget", "strip_personal"]

#: Payload keys whose value names a user (seed 000: ``owner_id``, ``tier_rewards[].user_id``).
USER_FIELDS = ("owner_id", "user_id")
#: Keys that carry a user's name beside the id: redacted when that user is forgotten.
USER_NAME_FIELDS = ("owner_name", "user_name")
#: Events looked at per call at most: a first run on a large old log catches up over
#: several prunes instead of holding the write lock for all of it at once.
STRIP_BATCH = 100_000
#: Where ``strip_personal`` remembers the last seq it has done. Created here, not by a
#: migration: only this module reads or writes it.
_MARKS = "CREATE TABLE IF NOT EXISTS privacy_marks (name TEXT PRIMARY KEY, seq INTEGER NOT NULL)"
_MARK = "personal_stripped"
#: Milliseconds the lifetime's checkpoint waits for readers of the write-ahead log.
CHECKPOINT_WAIT_MS = 100
REDACTED_ADDRESS = "[redacted]"


@contextlib.contextmanager
def _secure_delete(conn: sqlite3.Connection) -> Iterator[None]:
    """Zero what a write frees, for this connection, while the block runs."""
    previous = conn.execute("PRAGMA secure_delete").fetchone()[0]
    conn.execute("PRAGMA secure_delete = ON")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA secure_delete = {int(previous):d}")


def strip_personal(
    db: sqlite_utils.Database,
    fields: Iterable[str],
    *,
    before: float,
    batch: int = STRIP_BATCH,
) -> int:
    """Remove ``fields`` (any case, any depth) from events created before ``before``,
    in one transaction; returns how many events changed. Each event is looked at once:
    the last seq done is kept in the database (at most ``batch`` events a call). When
    some changed, the write-ahead log is checkpointed and emptied."""
    folded = fold(fields)
    conn = db.conn
    if not folded:
        return 0
    projection = Projection(deny=folded)
    with _secure_delete(conn), immediate(conn):
        conn.execute(_MARKS)
        row = conn.execute("SELECT seq FROM privacy_marks WHERE name = ?", (_MARK,)).fetchone()
        mark = 0 if row is None else int(row[0])
        upto = _last_seq_before(db, before)
        if upto is None or upto <= mark:
            return 0
        upto = min(upto, mark + batch)
        changed = []
        for seq, body in conn.execute(
            "SELECT seq, body FROM events WHERE seq > ? AND seq <= ?", (mark, upto)
        ):
            if may_contain(body, folded):
                stripped = project(body, projection)
                if stripped is not body:
                    changed.append((stripped, seq))
        conn.executemany("UPDATE events SET body = ? WHERE seq = ?", changed)
        conn.execute(
            "INSERT INTO privacy_marks (name, seq) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
            (_MARK, upto),
        )
    if changed:
        # The old page images are in the write-ahead log until it is reused: copy the
        # new ones over the file and empty it. This runs on the event log's writer,
        # so it waits for readers briefly only; if one holds the log, next time.
        timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS:d}")
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout):d}")
    return len(changed)


@attrs.frozen
class Forgotten:
    """What ``forget`` redacted, and whether the write-ahead log could be emptied."""

    events: int
    messages: int  # message-log rows and refused events (storage/refused.py)
    connections: int
    checkpointed: bool


def _names(root: Any, keys: frozenset[str], value: str) -> bool:
    """Whether a key in ``keys`` (casefolded) has ``value`` (compared as text) at any depth."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                if key.casefold() in keys and _text(item) == value:
                    return True
                if isinstance(item, dict | list):
                    stack.append(item)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, dict | list))
    return False


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _parsed(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


@attrs.frozen
class Erasure:
    """What ``forget`` looks for and what it removes, apart from where the texts are
    kept: the SQLite file here, the cluster's Redis in catsock/eventlog/privacy.py."""

    #: (casefolded names, value) pairs from ``--field``.
    wanted: tuple[tuple[frozenset[str], str], ...]
    user_id: str | None
    #: The field names a match loses (the personal fields, the named ones, ...).
    erase: frozenset[str]

    @classmethod
    def of(
        cls,
        personal_fields: Iterable[str],
        fields: Iterable[tuple[str, str]] = (),
        user_id: str | None = None,
    ) -> Erasure:
        fields = tuple(fields)
        erase = set(personal_fields) | {name for name, _ in fields}
        if user_id is not None:
            erase |= set(USER_NAME_FIELDS)
        wanted = tuple((fold([name]), value) for name, value in fields)
        return cls(wanted, user_id, frozenset(erase))

    def matches(self, text: str) -> bool:
        """Whether the JSON ``text`` names the person (a key with its value, any depth)."""
        needles = [value for _, value in self.wanted]
        if self.user_id is not None:
            needles.append(self.user_id)
        # Cheap: a value that is not in the text (nor hidden by an escape) cannot match.
        if "\\" not in text and not any(needle in text for needle in needles):
            return False
        root = _parsed(text)
        if any(_names(root, keys, value) for keys, value in self.wanted):
            return True
        return self.user_id is not None and _names(root, fold(USER_FIELDS), self.user_id)

    def routed(self, channels: Iterable[str]) -> bool:
        """Whether an event on ``channels`` was routed to the user forgotten."""
        return self.user_id is not None and f"user:{self.user_id}" in channels

    def event(self, body: str) -> str:
        """A matching event's body without the erased fields (``body`` itself if none)."""
        return project(body, Projection(deny=fold(self.erase)))

    def text(self, payload: str) -> str:
        """A matching log row's or refused event's text, the erased values "[redacted]"."""
        return redact(payload, self.erase)


def forget(
    db: sqlite_utils.Database,
    personal_fields: Iterable[str],
    *,
    fields: Iterable[tuple[str, str]] = (),
    user_id: str | None = None,
) -> Forgotten:
    """Redact everything that names one person, in one transaction.

    An event or message-log row matches when a key of ``fields`` has its value there
    (any case, any depth), or, with ``user_id``, when it was routed to that user's
    channel or a ``USER_FIELDS`` key has that value. A matching event loses the
    personal fields, the named fields and, for a user, ``USER_NAME_FIELDS``; a
    matching message-log row or refused event has their values replaced by
    "[redacted]". With
    ``user_id``, the addresses its user-bound tokens connected from are redacted too.
    Afterwards the write-ahead log is checkpointed and emptied, if no reader holds it.
    """
    erasure = Erasure.of(personal_fields, fields, user_id)
    matches = erasure.matches
    conn = db.conn
    with _secure_delete(conn):
        with immediate(conn):
            events = 0
            changed = []
            for seq, body, channels in conn.execute("SELECT seq, body, channels FROM events"):
                if erasure.routed(channels.split()) or matches(body):
                    events += 1
                    stripped = erasure.event(body)
                    if stripped is not body:
                        changed.append((stripped, seq))
            conn.executemany("UPDATE events SET body = ? WHERE seq = ?", changed)
            messages = []
            for row_id, payload in conn.execute(
                "SELECT id, payload FROM messages WHERE payload IS NOT NULL"
            ):
                if matches(payload):
                    messages.append((erasure.text(payload), row_id))
            conn.executemany("UPDATE messages SET payload = ? WHERE id = ?", messages)
            # The refused-event store (storage/refused.py) keeps texts like the log.
            refused = []
            for row_id, body, refused_user in conn.execute(
                "SELECT id, body, user_id FROM refused WHERE body IS NOT NULL"
            ):
                by_user = user_id is not None and refused_user == user_id
                if by_user or matches(body):
                    refused.append((erasure.text(body), row_id))
            conn.executemany("UPDATE refused SET body = ? WHERE id = ?", refused)
            connections = 0
            if user_id is not None:
                connections = conn.execute(
                    "UPDATE connections SET remote_addr = ? WHERE remote_addr IS NOT NULL"
                    " AND remote_addr != ? AND identity IN"
                    " (SELECT name FROM credentials WHERE user_id = ?)",
                    (REDACTED_ADDRESS, REDACTED_ADDRESS, user_id),
                ).rowcount
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    return Forgotten(events, len(messages) + len(refused), connections, checkpointed=not busy)
