"""The refused-event store: every event a publisher sent that the gateway refused.

A refusal (rate limit, validation, routing rights, overload) is answered with an
``error`` or an HTTP status, which the seed's PHP and browser clients never read:
for them the event is gone. Here it stays, with who sent it, over what, why and
when, so that an operator can see it (``python -m catsock refused``) and submit
it again once the cause is fixed (``refused retry``). Rows travel with the
message log's batches (storage/logs.py ``write_batch``), its policy and
redaction, and its retention.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import sqlite_utils

from storage.db import iso

__all__ = ["EventRefused", "RefusedRetried", "get_refused", "list_refused", "write_refused"]


@attrs.frozen
class EventRefused:
    """One refused event. ``body`` is the text as sent (None when it was not text
    or too large to keep); ``type`` and ``message_id`` when they could be read."""

    at: float
    identity: str | None
    client_type: str | None
    user_id: str | None
    connection_id: str | None
    transport: str  # "websocket" or "http"
    reason: str  # the error code sent back
    detail: str
    type: str | None
    message_id: str | None
    size: int
    body: str | None


@attrs.frozen
class RefusedRetried:
    """Refused event ``id`` was submitted again; ``result`` is the error code, or
    "accepted" (with ``seq``) or "duplicate"."""

    id: int
    at: float
    result: str
    seq: int | None


_INSERT = (
    "INSERT INTO refused (at, identity, client_type, user_id, connection_id, transport,"
    " reason, detail, type, message_id, size, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def write_refused(
    conn: sqlite3.Connection,
    rows: Sequence[EventRefused | RefusedRetried],
    body_of: Callable[[str | None], str | None],
) -> None:
    """Write ``rows`` inside the caller's transaction; ``body_of(text)`` gives what
    to store of a body (the log's policy and redaction)."""
    refused = [
        (
            iso(r.at),
            r.identity,
            r.client_type,
            r.user_id,
            r.connection_id,
            r.transport,
            r.reason,
            r.detail,
            r.type,
            r.message_id,
            r.size,
            body_of(r.body),
        )
        for r in rows
        if isinstance(r, EventRefused)
    ]
    if refused:
        conn.executemany(_INSERT, refused)
    retried = [(iso(r.at), r.result, r.seq, r.id) for r in rows if isinstance(r, RefusedRetried)]
    if retried:
        conn.executemany(
            "UPDATE refused SET retried_at = ?, retry_result = ?, retry_seq = ? WHERE id = ?",
            retried,
        )


def list_refused(
    db: sqlite_utils.Database,
    *,
    since: str | None = None,
    reason: str | None = None,
    identity: str | None = None,
    message_id: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The newest refused events first. ``since`` is an ISO time (as stored)."""
    where, args = ["1"], []
    for column, op, value in (
        ("at", ">=", since),
        ("reason", "=", reason),
        ("identity", "=", identity),
        ("message_id", "=", message_id),
    ):
        if value is not None:
            where.append(f"{column} {op} ?")  # names from this module; values bound
            args.append(value)
    sql = f"SELECT * FROM refused WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?"
    return list(db.query(sql, [*args, max(limit, 0)]))


def get_refused(db: sqlite_utils.Database, id: int) -> dict[str, Any] | None:
    """One refused event by its id, or None (never stored, or past retention)."""
    rows = list(db.query("SELECT * FROM refused WHERE id = ?", [id]))
    return rows[0] if rows else None
