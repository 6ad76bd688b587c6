"""The event log's recent window, for a dashboard that has just logged in: the
newest events on some channels since a time, so its counters and rate chart do
not start from zero at every login.
"""

from __future__ import annotations

from collections.abc import Collection

import attrs
import sqlite_utils

__all__ = ["Recent", "recent_events"]


@attrs.frozen
class Recent:
    seq: int
    created_at: float
    type: str
    body: str


def recent_events(
    db: sqlite_utils.Database,
    channels: Collection[str],
    since: float,
    limit: int,
    scan: int,
) -> tuple[list[Recent], bool]:
    """At most ``limit`` of the newest events on ``channels`` logged at or after
    ``since`` (unix time), oldest first, looking at no more than the newest
    ``scan`` events of the log (events has no index on time: it walks seq down,
    which grows with time). The flag: there may be more than were returned."""
    wanted = set(channels)
    found: list[Recent] = []
    rows = db.conn.execute(
        "SELECT seq, created_at, type, channels, body FROM events ORDER BY seq DESC LIMIT ?",
        (scan,),
    )
    looked = 0
    for seq, created_at, type_, channels_text, body in rows:
        looked += 1
        if created_at < since:
            return found[::-1], False
        if wanted.intersection(channels_text.split()):
            found.append(Recent(seq, created_at, type_, body))
            if len(found) >= limit:
                return found[::-1], True
    return found[::-1], looked >= scan
