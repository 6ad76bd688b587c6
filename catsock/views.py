"""Cluster mode's views of the shared log, for the console and the CLI.

A node's SQLite file holds no events, cursors or ledger rows in cluster mode;
these read them from Redis through the shared log's read methods
(``SharedEventLog`` in catsock/eventlog/__init__.py) instead. ``recent`` is
``GET /api/history``'s window; ``lag_snapshot`` and ``behind`` are the Recipients
view's and the lag gauges'. ``cluster_snapshot`` copies what the ledger
explanation of one message_id needs (its events, the ledger rows since, every
cursor, the refusals of it, and the cluster's tokens) into an in-memory SQLite
database, so ``catsock/ledger.py`` explains it with the same code as in embedded
mode. Each raises ``LogUnavailable`` when Redis does not answer: at once for the
CLI's log (not ``patient``), after ``PATIENCE`` seconds for a gateway's (whose
reads wait for Redis to come back).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import sqlite_utils
import trio

import storage

from .eventlog import LogUnavailable, SharedEventLog

if TYPE_CHECKING:
    from .refused_store import RefusedStore

__all__ = [
    "LAG_LEDGER_ROWS", "LAG_SCAN", "LEDGER_CAP", "PATIENCE",
    "behind", "cluster_snapshot", "lag_snapshot", "recent",
]  # fmt: skip

#: Ledger rows a snapshot copies at most, from the oldest event's time on.
LEDGER_CAP = 200_000
#: Ledger rows of the whole cluster the Recipients view reads (newest first).
LAG_LEDGER_ROWS = 20_000
#: Events after a recipient's cursor the Recipients view looks at, at most.
LAG_SCAN = 200_000
#: Seconds a view waits for Redis before it answers that Redis is unreachable.
PATIENCE = 10.0
#: Refusals of one message_id a snapshot copies at most.
REFUSALS_CAP = 1000


async def recent(
    log: SharedEventLog, channels: Collection[str], since: float, limit: int, scan: int
) -> tuple[list[storage.Recent], bool]:
    """``storage.recent_events`` over the shared log."""
    with _patience(log):
        return await log.recent(channels, since, limit, scan)


async def cluster_snapshot(
    log: SharedEventLog, refused: RefusedStore, message_id: str
) -> sqlite_utils.Database:
    """An in-memory database holding what Redis knows of ``message_id``, for
    ``ledger.explain`` and ``ledger.refusals``, with the cluster's tokens."""
    shared = log
    with _patience(log):
        events = await shared.events_by_message_id(message_id)
        ledger: list[storage.LedgerRow] = []
        if events:
            ledger = await shared.ledger_since(min(e.created_at for e in events), LEDGER_CAP)
        cursors = {
            (identity, channel): seq
            for identity, positions in (await shared.cursors_all()).items()
            for channel, seq in positions.items()
        }
        refusals = await refused.find(limit=REFUSALS_CAP, message_id=message_id)
        tokens = await _tokens(log)
    return await trio.to_thread.run_sync(_build, tokens, events, cursors, ledger, refusals)


async def lag_snapshot(log: SharedEventLog) -> sqlite_utils.Database:
    """An in-memory database with every cursor, the newest ``LAG_LEDGER_ROWS``
    ledger rows and the cluster's tokens: what ``durable_wants`` and
    ``storage.ledger_summary`` read for the Recipients view."""
    shared = log
    with _patience(log):
        cursors = {
            (identity, channel): seq
            for identity, positions in (await shared.cursors_all()).items()
            for channel, seq in positions.items()
        }
        ledger = await shared.ledger_newest(LAG_LEDGER_ROWS)
        tokens = await _tokens(log)
    return await trio.to_thread.run_sync(_build, tokens, [], cursors, ledger, [])


async def behind(
    log: SharedEventLog, positions: dict[str, int], identity: str, cap: int
) -> storage.Behind:
    """``storage.behind`` over the shared log (at most ``LAG_SCAN`` events looked at)."""
    with _patience(log):
        return await log.behind(positions, identity, cap, LAG_SCAN)


async def _tokens(log: SharedEventLog) -> list[dict[str, Any]]:
    """The cluster's tokens, as rows of the credentials table (cluster mode keeps
    them in Redis: catsock/eventlog/credentials.py)."""
    from .auth import CredentialsUnavailable
    from .eventlog.credentials import RedisCredentials
    from .eventlog.redis import RedisEventLog

    assert isinstance(log, RedisEventLog)
    try:
        found = await RedisCredentials.of(log, PATIENCE).load()
    except CredentialsUnavailable as exc:
        raise LogUnavailable(str(exc)) from None
    return [] if found is None else [attrs.asdict(c) for c in found.rows]


def _build(
    credentials: list[dict[str, Any]],
    events: list[storage.EventRow],
    cursors: dict[tuple[str, str], int],
    ledger: list[storage.LedgerRow],
    refusals: list[dict[str, Any]],
) -> sqlite_utils.Database:
    db = storage.open_db(":memory:")
    storage.commit_events(db, events, cursors, ledger)
    with db.conn:
        db["credentials"].insert_all(credentials)  # type: ignore[union-attr]
        db["refused"].insert_all(refusals)  # type: ignore[union-attr]
    return db


@contextlib.contextmanager
def _patience(log: SharedEventLog) -> Iterator[None]:
    """A gateway's log waits for Redis to come back; a view answers, within ``PATIENCE``."""
    try:
        with trio.fail_after(PATIENCE):
            yield
    except trio.TooSlowError:
        problem = log.unavailable or "no answer in time"
        raise LogUnavailable(f"{problem} (waited {PATIENCE:.0f} s)") from None
