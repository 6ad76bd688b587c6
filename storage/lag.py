"""How far behind one durable recipient is: queries for the operator's console.

``behind`` counts the events a recipient has not had on its channels (after each
channel's cursor, its own events excluded) and dates the oldest of them;
``ledger_summary`` reads its last ack and how often events were written to it
again. Both are bounded, so a recipient a million events behind costs no more
than one ``cap`` events behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import sqlite_utils

__all__ = ["Behind", "LedgerSummary", "behind", "ledger_summary"]

#: Ledger rows of one recipient that ``ledger_summary`` reads, newest first.
SUMMARY_ROWS = 1000


@attrs.frozen
class Behind:
    """``events`` not had (at most ``cap``: then ``capped``), the oldest of them
    logged at ``oldest_at`` (unix time; None when there are none)."""

    events: int
    oldest_at: float | None
    capped: bool


@attrs.frozen
class LedgerSummary:
    last_ack_at: float | None
    last_written_at: float | None
    #: Writes of events it had already been written (replays after a reconnect
    #: without acks), among its last ``SUMMARY_ROWS`` ledger rows.
    redelivered: int


def behind(
    db: sqlite_utils.Database, positions: Mapping[str, int], exclude_sender: str, cap: int
) -> Behind:
    """The events after ``positions`` ({channel: seq}) on those channels."""
    if not positions:
        return Behind(0, None, False)
    # One test per channel: the event is on it (channels is a space-separated
    # list) and past that channel's cursor.
    tests = " OR ".join(
        "(seq > ? AND instr(' ' || channels || ' ', ?) > 0)" for _ in positions
    )
    args: list[Any] = []
    for channel, seq in positions.items():
        args += [seq, f" {channel} "]
    start = min(positions.values())
    sql = (
        f"SELECT seq, created_at FROM events WHERE seq > ? AND sender != ? AND ({tests})"
        " ORDER BY seq LIMIT ?"
    )
    rows = db.conn.execute(sql, [start, exclude_sender, *args, cap + 1]).fetchall()
    capped = len(rows) > cap
    return Behind(min(len(rows), cap), rows[0][1] if rows else None, capped)


def ledger_summary(db: sqlite_utils.Database, identity: str) -> LedgerSummary:
    rows = db.conn.execute(
        "SELECT kind, first_seq, last_seq, at FROM ledger WHERE identity = ?"
        " ORDER BY id DESC LIMIT ?",
        (identity, SUMMARY_ROWS),
    ).fetchall()
    last_ack = next((at for kind, _, _, at in rows if kind == "acked"), None)
    last_written = next((at for kind, _, _, at in rows if kind == "written"), None)
    redelivered, highest = 0, 0
    for kind, first, last, _ in reversed(rows):
        if kind != "written":
            continue
        if first <= highest:
            redelivered += min(last, highest) - first + 1
        highest = max(highest, last)
    return LedgerSummary(last_ack, last_written, redelivered)
