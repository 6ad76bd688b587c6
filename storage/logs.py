"""Connection and message logs: row types, batched writes, redaction, retention and queries.

Rows are built on the event loop and written here in a worker thread, one transaction per batch.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from typing import Any

import attrs
import orjson
import sqlite_utils

from protocol.privacy import fold, may_contain, strip_keys
from storage.db import immediate, insert_rows, iso, keep_newest, last_key_before
from storage.refused import EventRefused, RefusedRetried, write_refused

__all__ = [
    "ConnectionClosed",
    "ConnectionHeartbeat",
    "ConnectionOpened",
    "LogPolicy",
    "LogRow",
    "MessageLogged",
    "close_dangling",
    "prune",
    "recent_connections",
    "recent_messages",
    "redact",
    "write_batch",
]

REDACTED = "[redacted]"
UNPARSEABLE = "[unparseable]"


@attrs.frozen
class ConnectionOpened:
    id: str
    client_type: str | None
    identity: str | None
    remote_addr: str | None
    at: float


@attrs.frozen
class ConnectionHeartbeat:
    id: str
    at: float


@attrs.frozen
class ConnectionClosed:
    id: str
    at: float
    close_code: int | None
    close_reason: str | None


@attrs.frozen
class MessageLogged:
    direction: str  # "in" (from a client) or "out" (to a client)
    type: str
    message_id: str | None
    connection_id: str | None
    size: int
    payload: str | None
    at: float


LogRow = (
    ConnectionOpened
    | ConnectionHeartbeat
    | ConnectionClosed
    | MessageLogged
    | EventRefused
    | RefusedRetried
)


class LogPolicy(enum.StrEnum):
    """How much of each message to keep: everything, metadata only, or nothing."""

    FULL = "full"
    METADATA = "metadata"
    OFF = "off"


def redact(payload_json: str, fields: frozenset[str]) -> str:
    """Replace the value of every key in `fields`, at any depth and in any case
    (``IPAddress`` is ``ipaddress``), with "[redacted]".

    Key order is preserved. Text that is not JSON (or nests too deep to re-encode) becomes
    "[unparseable]": this never raises, because it runs on untrusted client input.
    """
    try:
        root = orjson.loads(payload_json)
    except orjson.JSONDecodeError:
        return UNPARSEABLE
    # The matcher the gateway's projections use (protocol/privacy.py): parsed keys,
    # casefolded, at any depth, without recursion (a hostile payload cannot nest its
    # way to a RecursionError).
    strip_keys(root, fold(fields), REDACTED)
    try:
        return orjson.dumps(root).decode()
    except orjson.JSONEncodeError:
        return UNPARSEABLE


def _stored_payload(payload: str | None, policy: LogPolicy, fields: frozenset[str]) -> str | None:
    if policy is not LogPolicy.FULL or payload is None:
        return None
    # With nothing that can match, the text is stored as received, sparing a parse
    # and re-encode (and the GIL time it costs the event loop).
    if not may_contain(payload, fold(fields)):
        return payload
    return redact(payload, fields)


def write_batch(
    db: sqlite_utils.Database,
    rows: Sequence[LogRow],
    *,
    policy: LogPolicy,
    redact_fields: frozenset[str],
) -> None:
    """Write `rows` in one transaction; meant to run in a worker thread."""
    opened: list[tuple[str, str | None, str | None, str | None, str]] = []
    # Keyed by connection id: several heartbeats in one batch collapse into the last one.
    heartbeats: dict[str, str] = {}
    closed: list[tuple[str, int | None, str | None, str]] = []
    messages: list[tuple[str, str, str | None, str | None, int, str | None, str]] = []
    refused: list[EventRefused | RefusedRetried] = []
    for row in rows:
        if isinstance(row, MessageLogged):
            if policy is not LogPolicy.OFF:
                payload = _stored_payload(row.payload, policy, redact_fields)
                messages.append(
                    (
                        row.direction,
                        row.type,
                        row.message_id,
                        row.connection_id,
                        row.size,
                        payload,
                        iso(row.at),
                    )
                )
        elif isinstance(row, ConnectionOpened):
            opened.append((row.id, row.client_type, row.identity, row.remote_addr, iso(row.at)))
        elif isinstance(row, ConnectionHeartbeat):
            heartbeats[row.id] = iso(row.at)
        elif isinstance(row, EventRefused | RefusedRetried):
            refused.append(row)
        else:
            closed.append((iso(row.at), row.close_code, row.close_reason, row.id))
    conn = db.conn
    # Grouping by kind keeps the batch's meaning: the only cross-row dependency is that a
    # heartbeat or close updates a connection row, and opens are inserted first.
    with db.atomic():
        if opened:
            # OR IGNORE: a duplicate id must not cost the whole batch its rows.
            insert_rows(
                conn,
                "connections (id, client_type, identity, remote_addr, connected_at)",
                5,
                opened,
                " ON CONFLICT DO NOTHING",
            )
        if heartbeats:
            conn.executemany(
                "UPDATE connections SET last_heartbeat_at = ? WHERE id = ?",
                [(at, conn_id) for conn_id, at in heartbeats.items()],
            )
        if closed:
            conn.executemany(
                "UPDATE connections SET disconnected_at = ?, close_code = ?, close_reason = ?"
                " WHERE id = ?",
                closed,
            )
        if messages:
            insert_rows(
                conn,
                "messages (direction, type, message_id, connection_id, size, payload, created_at)",
                7,
                messages,
            )
        if refused:
            # Kept whatever the policy (they are how a refused event is found again),
            # their bodies shaped by it like a message's payload.
            write_refused(conn, refused, lambda body: _stored_payload(body, policy, redact_fields))


def prune(
    db: sqlite_utils.Database,
    *,
    max_age: float | None,
    max_rows: int | None,
    now: float | None = None,
) -> int:
    """Apply retention: drop messages and refused events older than `max_age` seconds
    or beyond the newest `max_rows` (each table on its own), and connections closed
    before the age cut. Returns the rows deleted."""
    if max_age is not None and max_age < 0:
        raise ValueError("max_age must be >= 0")
    if max_rows is not None and max_rows < 0:
        raise ValueError("max_rows must be >= 0")
    deleted = 0
    conn = db.conn
    with immediate(conn):
        if max_age is not None:
            cut = iso((time.time() if now is None else now) - max_age)
            deleted += conn.execute("DELETE FROM messages WHERE created_at < ?", (cut,)).rowcount
            # Neither table has an index on the time a prune cuts at, and a WHERE on
            # it walks the whole table once a minute under the write lock. Refused
            # events are numbered in the order they are dated: bisect the id.
            last = last_key_before(conn, "refused", "id", "at", cut)
            if last is not None:
                deleted += conn.execute(
                    "DELETE FROM refused WHERE id <= ? AND at < ?", (last, cut)
                ).rowcount
            # Open connections are kept however old: they are still live. One closed
            # before the cut was opened before it: that bound uses the index.
            deleted += conn.execute(
                "DELETE FROM connections WHERE connected_at < ?"
                " AND disconnected_at IS NOT NULL AND disconnected_at < ?",
                (cut, cut),
            ).rowcount
        if max_rows is not None:
            deleted += keep_newest(conn, "messages", "id", max_rows)
            deleted += keep_newest(conn, "refused", "id", max_rows)
    return deleted


def close_dangling(db: sqlite_utils.Database, *, now: float | None = None) -> int:
    """Mark connections a previous gateway process left open (it crashed or was
    killed) as closed now, with reason ``gateway restarted``; returns how many.
    Run once at start-up, before any connection of this process is logged."""
    with db.atomic():
        return db.conn.execute(
            "UPDATE connections SET disconnected_at = ?, close_reason = 'gateway restarted'"
            " WHERE disconnected_at IS NULL",
            (iso(time.time() if now is None else now),),
        ).rowcount


def _select(
    db: sqlite_utils.Database, table: str, filters: dict[str, Any], order: str, limit: int
) -> list[dict[str, Any]]:
    active = {column: value for column, value in filters.items() if value is not None}
    # Column and table names come from this module, never from callers; values are bound.
    where = " AND ".join(f"{column} = ?" for column in active)
    sql = f"SELECT * FROM {table}"
    if where:
        sql += f" WHERE {where}"
    sql += f" ORDER BY {order} LIMIT ?"
    return list(db.query(sql, [*active.values(), max(limit, 0)]))


def recent_connections(
    db: sqlite_utils.Database,
    *,
    limit: int = 50,
    client_type: str | None = None,
    identity: str | None = None,
) -> list[dict[str, Any]]:
    """The newest connections first, optionally filtered."""
    filters = {"client_type": client_type, "identity": identity}
    return _select(db, "connections", filters, "connected_at DESC, rowid DESC", limit)


def recent_messages(
    db: sqlite_utils.Database,
    *,
    limit: int = 50,
    type: str | None = None,
    connection_id: str | None = None,
    direction: str | None = None,
    message_id: str | None = None,
    policy: LogPolicy = LogPolicy.FULL,
    redact_fields: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """The newest messages first, optionally filtered.

    Published events are not copied into the message table: the event log holds
    them (storage/events.py), and they are read from there as inbound rows
    (``id`` None, ``seq`` set), shaped by ``policy`` and ``redact_fields`` as a
    message row would have been when it was written.
    """
    filters = {
        "type": type,
        "connection_id": connection_id,
        "direction": direction,
        "message_id": message_id,
    }
    rows = _select(db, "messages", filters, "created_at DESC, id DESC", limit)
    for row in rows:
        row["seq"] = None
    if direction in (None, "in") and policy is not LogPolicy.OFF:
        rows.extend(_published(db, type, connection_id, message_id, limit, policy, redact_fields))
        rows.sort(key=lambda r: (r["created_at"], r["seq"] or 0, r["id"] or 0), reverse=True)
    return rows[: max(limit, 0)]


def _published(
    db: sqlite_utils.Database,
    type: str | None,
    connection_id: str | None,
    message_id: str | None,
    limit: int,
    policy: LogPolicy,
    redact_fields: frozenset[str],
) -> list[dict[str, Any]]:
    """Events of the event log as inbound message rows (see ``recent_messages``)."""
    active = {
        c: v
        for c, v in {"type": type, "connection_id": connection_id, "message_id": message_id}.items()
        if v is not None
    }
    where = " AND ".join(f"{column} = ?" for column in active) or "1"
    # Column names come from this module; values are bound. seq order is time order.
    sql = (
        "SELECT seq, type, message_id, connection_id, created_at, body FROM events"
        f" WHERE {where} ORDER BY seq DESC LIMIT ?"
    )
    return [
        {
            "id": None,
            "direction": "in",
            "type": row["type"],
            "message_id": row["message_id"],
            "connection_id": row["connection_id"],
            "size": len(row["body"].encode("utf-8")),
            "payload": _stored_payload(row["body"], policy, redact_fields),
            "created_at": iso(row["created_at"]),
            "seq": row["seq"],
        }
        for row in db.query(sql, [*active.values(), max(limit, 0)])
    ]
