"""The admin audit trail: every write an operator makes from the console.

Closing a connection, creating or revoking a token, retrying a refused event: each
is recorded with who did it (the admin token's name), from where, when, and what
came of it, so a change to a running gateway can always be traced to a person.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import sqlite_utils

from storage.db import iso

__all__ = ["list_audit", "write_audit"]


def write_audit(
    conn: sqlite3.Connection,
    *,
    at: float,
    actor: str,
    remote: str,
    action: str,
    target: str,
    detail: str,
    result: str,
) -> None:
    """Add one audit row, inside the caller's transaction when there is one."""
    conn.execute(
        "INSERT INTO audit (at, actor, remote, action, target, detail, result)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (iso(at), actor, remote, action, target, detail, result),
    )


def list_audit(db: sqlite_utils.Database, *, limit: int = 50) -> list[dict[str, Any]]:
    """The newest audit rows first."""
    return list(db.query("SELECT * FROM audit ORDER BY id DESC LIMIT ?", [max(limit, 0)]))
