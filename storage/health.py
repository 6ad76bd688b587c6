"""A cheap check that the database can still be written, for the gateway's /health."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = ["probe_writable"]


def probe_writable(path: str | os.PathLike[str], timeout: float = 2.0) -> str | None:
    """Take the database's write lock and let it go at once; ``None`` if that worked,
    else why not (read-only file or directory, locked past ``timeout``, missing).

    It opens its own short-lived connection, so it may run in any thread while the
    gateway's writers use theirs; nothing is written.
    """
    uri = Path(path).absolute().as_uri() + "?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
    except sqlite3.Error as exc:
        return f"cannot open the database: {exc}"
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return f"cannot write the database: {exc}"
    finally:
        conn.close()
    return None
