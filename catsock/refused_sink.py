"""Cluster mode: a node's refused events go to the cluster's store in Redis.

``ClusterRefusals.record`` takes every log row a connection or the HTTP API
records: refusals and retry outcomes are buffered for Redis
(catsock/refused_store.py), everything else goes on to the node's log writer as
before. ``run`` writes the buffer in batches. When Redis does not take a batch,
its refusals are **kept in the node's SQLite file** instead (the log writer's
``refused`` table, listed by ``python -m catsock refused --local``) and a warning
says so once per outage: a refusal is never dropped silently; once Redis answers
they are handed over to it (catsock/refused_handover.py). A retry's outcome that
Redis does not take is not kept (the audit table has it; logged).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from storage import EventRefused, LogPolicy, RefusedRetried
from storage.logs import LogRow
from storage.logs import _stored_payload as stored_payload

from .config import Config
from .eventlog import LogUnavailable
from .refused_handover import Handover
from .refused_store import RedisRefusedStore, RefusedStore, SqliteRefusedStore

__all__ = ["ClusterRefusals", "RefusalStatistics", "cluster_refusals", "refused_store"]

logger = logging.getLogger("catsock.refused")

#: Refusals buffered for Redis at most; past it they go to the node's file.
MAX_PENDING = 10_000
#: Rows one write to Redis carries at most.
MAX_BATCH = 500


@attrs.frozen
class RefusalStatistics:
    stored: int  # refusals and retry outcomes Redis took
    kept_locally: int  # refusals written to the node's file because Redis did not take them
    lost_retries: int  # retry outcomes Redis did not take (the audit table has them)
    handed_over: int  # refusals kept in the node's file, later moved to Redis


class ClusterRefusals:
    """``local`` records a row with the node's log writer; ``where_local`` names its
    file; ``handover`` (run by ``run``) moves what that file keeps back to Redis."""

    def __init__(
        self,
        store: RefusedStore,
        local: Callable[[LogRow], None],
        where_local: str,
        handover: Handover | None = None,
    ) -> None:
        self._store = store
        self._local = local
        self._where_local = where_local
        self._handover = handover
        self._pending: list[EventRefused | RefusedRetried] = []
        self._wake = trio.Event()
        # One write at a time: ``flush`` (at shutdown) waits for the batch ``run``
        # has in flight, which the shutdown then cancels no more.
        self._writing = trio.Lock()
        self._down = False
        self.stored = self.kept_locally = self.lost_retries = 0

    def record(self, row: LogRow) -> None:
        """Route ``row``; O(1), never blocks."""
        if not isinstance(row, EventRefused | RefusedRetried):
            self._local(row)
            return
        if len(self._pending) >= MAX_PENDING:
            self._fall_back([row], "too many refusals wait for Redis")
            return
        self._pending.append(row)
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write what is recorded, and hand over what the file keeps, until cancelled."""
        async with trio.open_nursery() as nursery:
            if self._handover is not None:
                await nursery.start(self._handover.run)
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await self._write_all()

    async def flush(self) -> None:
        """Write (or keep locally) everything recorded so far."""
        await self._write_all()

    def statistics(self) -> RefusalStatistics:
        handed_over = 0 if self._handover is None else self._handover.handed_over
        return RefusalStatistics(self.stored, self.kept_locally, self.lost_retries, handed_over)

    async def _write_all(self) -> None:
        async with self._writing:
            await self._write_pending()

    async def _write_pending(self) -> None:
        while self._pending:
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            try:
                await self._store.add(batch)
            except LogUnavailable as exc:
                # A batch whose answer was lost may be in Redis too: twice beats never.
                self._fall_back(batch, str(exc))
                continue
            self.stored += len(batch)
            if self._down:
                self._down = False
                logger.warning("refused events: Redis takes them again")

    def _fall_back(self, rows: list[EventRefused | RefusedRetried], why: str) -> None:
        if not self._down:
            self._down = True
            logger.warning(
                "refused events: %s; keeping them in this node's file %s"
                " (python -m catsock refused --local lists them)",
                why,
                self._where_local,
            )
        for row in rows:
            if isinstance(row, EventRefused):
                self._local(row)
                self.kept_locally += 1
                if self._handover is not None:
                    self._handover.poke()
            else:
                self.lost_retries += 1
                logger.warning(
                    "refused event %d: its retry's outcome (%s) is not recorded: %s",
                    row.id,
                    row.result,
                    why,
                )


def refused_store(config: Config, log: object) -> RefusedStore:
    """The store refused events are kept in: the cluster's when ``log`` is the
    shared Redis log, else the database file's."""
    return _store(config, log)


def _store(config: Config, log: object) -> SqliteRefusedStore | RedisRefusedStore:
    policy, fields = LogPolicy(config.log.policy), config.redact_fields()

    def body_of(body: str | None) -> str | None:
        return stored_payload(body, policy, fields)

    if log is None:
        return SqliteRefusedStore(config.database, body_of)
    from .eventlog.redis import RedisEventLog  # only with the cluster extra installed

    assert isinstance(log, RedisEventLog)
    return RedisRefusedStore(
        lambda: log.client,
        log.key,
        body_of=body_of,
        max_age=config.log.retention_days * 86400,
        max_rows=config.log.retention_rows,
        timeout=config.cluster.timeout,
        where=log.where,
    )


def cluster_refusals(
    config: Config,
    log: object,
    local: Callable[[LogRow], None],
    flush_local: Callable[[], Awaitable[None]],
    wall_clock: Callable[[], float],
) -> ClusterRefusals | None:
    """Cluster mode's router of refusals (None in embedded mode: the log writer
    keeps them, as it always did). ``local`` and ``flush_local`` are the node's
    log writer's ``record`` and ``flush``."""
    if log is None:
        return None
    store = _store(config, log)
    assert isinstance(store, RedisRefusedStore)
    handover = Handover(config.database, store, flush_local, wall_clock=wall_clock)
    return ClusterRefusals(store, local, config.database, handover)
