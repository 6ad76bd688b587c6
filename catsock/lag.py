"""How far behind each durable recipient is: the console's Recipients view and the
/metrics lag gauges.

``LagWatch.refresh`` reads every durable recipient's positions (the stored cursor,
or the later one this process has moved and not committed yet), counts the events
on its channels it has not had (storage/lag.py, at most ``LAG_CAP``) and dates the
oldest. A scrape reuses a recent answer (``max_age``), so a busy Prometheus costs
one read of the cursors every few seconds, not one per scrape; and a scrape waits
for a read at most ``patience`` seconds: the read runs in a task of its own, so
``/metrics`` answers within a second however slow the database is under load
(issue 19), with the previous answer until the new one is in. Once it has one,
``/metrics`` does not wait at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import sqlite_utils
import trio

import storage

from . import views
from .delivery import durable_wants

if TYPE_CHECKING:
    from .server import Gateway

__all__ = ["LAG_CAP", "SORTS", "LagRow", "LagWatch", "read_aside", "worst"]

T = TypeVar("T")

#: Events counted behind one recipient; past it the count says "at least".
LAG_CAP = 100_000

LagRow = dict[str, Any]

#: Orders of the Recipients view, worst first.
SORTS: dict[str, Callable[[LagRow], Any]] = {
    "lag_seconds": lambda r: (-(r["lag_seconds"] or 0.0), -r["lag_events"], r["identity"]),
    "lag_events": lambda r: (-r["lag_events"], r["identity"]),
    "identity": lambda r: r["identity"],
}


async def read_aside(database: str, func: Callable[..., T], *args: object) -> T:
    """``func(db, *args)`` in a worker thread on a connection of its own, opened
    and closed around it. The console's reads can be long (a lag count per
    recipient); on the event log's reader connection (``Delivery.query``) they
    would hold up replays and logins, which share it under one lock."""

    def run() -> T:
        db = storage.open_db(database)
        try:
            return func(db, *args)
        finally:
            db.close()

    return await trio.to_thread.run_sync(run)


def worst(rows: list[LagRow], n: int) -> list[LagRow]:
    """The ``n`` recipients furthest behind (in seconds, then events)."""
    return sorted(rows, key=SORTS["lag_seconds"])[:n]


class LagWatch:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        #: The last answer (empty before the first refresh).
        self.rows: list[LagRow] = []
        self._at = -math.inf
        self._reading: trio.Event | None = None
        self._error: Exception | None = None

    @property
    def read_once(self) -> bool:
        """A read has finished: ``rows`` is an answer, not the empty start."""
        return self._at > -math.inf

    async def refresh(self, max_age: float, *, patience: float = math.inf) -> list[LagRow]:
        """Every durable recipient with its lag, read again unless the last answer
        is younger than ``max_age`` seconds. Waits for the read at most ``patience``
        seconds, then answers with the last rows (the read goes on). A failed read
        is raised to those who waited for it."""
        if trio.current_time() - self._at < max_age:
            return self.rows
        reading = self._reading
        if reading is None:
            reading = self._reading = trio.Event()
            self._error = None
            trio.lowlevel.spawn_system_task(self._read_into_rows, reading)
        if patience > 0:
            with trio.move_on_after(patience):
                await reading.wait()
                if self._error is not None:
                    raise self._error
        return self.rows

    async def _read_into_rows(self, done: trio.Event) -> None:
        try:
            self.rows = await self._read()
            self._at = trio.current_time()
        except Exception as exc:  # raised to the waiters, never into trio's system nursery
            self._error = exc
        finally:
            self._reading = None
            done.set()

    async def _read(self) -> list[LagRow]:
        gateway = self.gateway
        delivery = gateway.delivery
        durable = gateway.config.delivery.durable_types
        now = gateway.wall_clock()

        def positions_of(identity: str, stored: dict[str, int]) -> dict[str, int]:
            return {
                channel: max(seq, delivery.cursor(identity, channel) or 0)
                for channel, seq in stored.items()
            }

        def read(db: sqlite_utils.Database) -> list[LagRow]:
            rows = []
            credentials = {c.name: c for c in storage.list_tokens(db)}
            for identity, stored in durable_wants(db, durable).items():
                positions = positions_of(identity, stored)
                behind = storage.behind(db, positions, identity, LAG_CAP)
                ledger = storage.ledger_summary(db, identity)
                rows.append(_row(credentials[identity], positions, behind, ledger, now))
            return rows

        if not delivery.enabled:
            return []
        shared = gateway.shared_log
        if shared is None:
            rows = await read_aside(gateway.config.database, read)
        else:
            # Cluster mode: cursors, ledger and log are Redis's (catsock/views.py).
            snapshot = await views.lag_snapshot(shared)
            try:
                credentials, wants, ledgers = await trio.to_thread.run_sync(
                    _plan, snapshot, durable
                )
            finally:
                snapshot.close()
            rows = []
            for identity, stored in wants.items():
                positions = positions_of(identity, stored)
                behind = await views.behind(shared, positions, identity, LAG_CAP)
                rows.append(_row(credentials[identity], positions, behind, ledgers[identity], now))
        for row in rows:
            row["connections"] = gateway.connections_of(row["identity"])
            row["online"] = row["connections"] > 0
        return rows


def _plan(
    db: sqlite_utils.Database, durable: list[str]
) -> tuple[
    dict[str, storage.Credential], dict[str, dict[str, int]], dict[str, storage.LedgerSummary]
]:
    """From a cluster snapshot: the tokens, each durable recipient's stored
    positions, and its ledger summary."""
    wants = durable_wants(db, durable)
    credentials = {c.name: c for c in storage.list_tokens(db)}
    return credentials, wants, {i: storage.ledger_summary(db, i) for i in wants}


def _row(
    credential: storage.Credential,
    positions: dict[str, int],
    behind: storage.Behind,
    ledger: storage.LedgerSummary,
    now: float,
) -> LagRow:
    oldest = behind.oldest_at
    return {
        "identity": credential.name,
        "client_type": credential.client_type,
        "user_id": credential.user_id,
        "cursor": min(positions.values()),
        "positions": positions,
        "lag_events": behind.events,
        "lag_capped": behind.capped,
        "lag_seconds": None if oldest is None else round(now - oldest, 3),
        "oldest_unacked_at": _iso(oldest),
        "last_ack_at": _iso(ledger.last_ack_at),
        "last_written_at": _iso(ledger.last_written_at),
        "redelivered": ledger.redelivered,
    }


def _iso(at: float | None) -> str | None:
    return None if at is None else storage.iso(at)
