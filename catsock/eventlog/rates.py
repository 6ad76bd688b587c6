"""Cluster mode's per-identity rate buckets: N nodes do not allow N times the rate.

A publish never waits for Redis: each node keeps its own ``TokenBucket`` per
identity (a ``SharedBucket``, which counts what it lets through). Every
``SYNC_INTERVAL`` seconds ``RateSync.run`` adds what each active bucket spent to
the identity's cluster-wide total (``{prefix}:rate:<identity>``, one script for
all of them: one round trip) and takes from the bucket what the other nodes spent
since the previous sync. Each node's bucket so tracks the cluster's spending, late
by at most one interval; it may go below zero, and then waits until the debt is
refilled, so what passed too early is paid back.

Precision (docs/scaling.md): what N nodes let through is at most one node's
allowance (``burst`` + ``rate`` × T) plus what the other N−1 nodes let through
before they heard of it: at most one interval's refill each (``rate`` ×
``SYNC_INTERVAL``) while the identity keeps publishing, and at most a ``burst``
each when it starts on several nodes at once (a node whose bucket is full has not
needed to hear). A bucket that spent nothing for as long as it takes to refill is
no longer synced. While Redis does not answer, each node limits on its own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from protocol import TokenBucket

from . import LogUnavailable
from .redis import CALL_ERRORS

if TYPE_CHECKING:
    from .redis import RedisEventLog

__all__ = ["SYNC_INTERVAL", "RateSync", "SharedBucket"]

logger = logging.getLogger("catsock.eventlog.rates")

#: Seconds between two syncs of a node's buckets with Redis.
SYNC_INTERVAL = 0.05
#: Seconds an identity's cluster-wide total lives after its last sync.
TOTAL_TTL = 3600
#: Seconds between two attempts while Redis does not answer.
RETRY_AFTER = 1.0

_ERRORS = (*CALL_ERRORS, LogUnavailable)

# ARGV: ttl, key prefix, then identity/spent pairs. Returns each identity's new total.
_SYNC = """
local out = {}
for i = 3, #ARGV, 2 do
  local key = ARGV[2] .. ARGV[i]
  out[#out + 1] = redis.call('INCRBYFLOAT', key, ARGV[i + 1])
  redis.call('EXPIRE', key, ARGV[1])
end
return out
"""


class SharedBucket(TokenBucket):
    """A ``TokenBucket`` that notes what it lets through, for ``RateSync``."""

    __slots__ = ("_sync", "identity", "last_spent", "spent")

    def __init__(
        self, rate: float, capacity: float, now: float, *, identity: str, sync: RateSync
    ) -> None:
        super().__init__(rate, capacity, now)
        self.identity = identity
        self._sync = sync
        #: Tokens taken here since the last sync.
        self.spent = 0.0
        self.last_spent = now

    def take(self, now: float, n: float = 1.0) -> float:
        wait = super().take(now, n)
        if not wait:
            self.spent += n
            self.last_spent = now
            self._sync.active[self.identity] = self
        return wait

    def debit(self, n: float) -> None:
        """The other nodes let ``n`` tokens through: take them, below zero if need be."""
        self._tokens -= n


class RateSync:
    """Reconciles the node's ``SharedBucket``s with Redis every ``SYNC_INTERVAL``."""

    def __init__(self, log: RedisEventLog, *, timeout: float) -> None:
        self._log = log
        self._timeout = timeout
        self._prefix = log.key("rate:")
        #: Buckets that spent within their refill time: the ones kept in sync.
        self.active: dict[str, SharedBucket] = {}
        #: The cluster-wide total of each active identity at its last sync.
        self._seen: dict[str, float] = {}
        self._script: Any = None
        self._problem: str | None = None

    def bucket(self, rate: float, capacity: float, now: float, identity: str) -> SharedBucket:
        return SharedBucket(rate, capacity, now, identity=identity, sync=self)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(SYNC_INTERVAL)
            if self.active and not await self.sync():
                await trio.sleep(RETRY_AFTER)

    async def sync(self) -> bool:
        """One round trip: add what each active bucket spent, debit what the others
        spent. False if Redis did not answer (what was spent is kept for next time)."""
        now = trio.current_time()
        buckets = list(self.active.values())
        sent = [b.spent for b in buckets]
        args: list[str | float] = [TOTAL_TTL, self._prefix]
        for bucket, spent in zip(buckets, sent, strict=True):
            args += (bucket.identity, repr(spent))
            bucket.spent = 0.0
        try:
            if self._script is None:
                self._script = self._log.client.register_script(_SYNC)
            with trio.fail_after(self._timeout + 1):
                totals = await self._script(keys=[self._prefix], args=args)
        except _ERRORS as exc:
            for bucket, spent in zip(buckets, sent, strict=True):
                bucket.spent += spent
            if isinstance(exc, LogUnavailable):
                self._script = None
            self._down(exc)
            return False
        self._up()
        for bucket, spent, total in zip(buckets, sent, totals, strict=True):
            identity = bucket.identity
            total = float(total)
            before = self._seen.get(identity)
            # The first sync of an identity learns where its total stands.
            others = 0.0 if before is None else total - before - spent
            if others > 0:
                bucket.debit(others)
            self._seen[identity] = total
            if bucket.spent == 0 and now - bucket.last_spent > bucket.capacity / bucket.rate:
                # Full again by now whatever it spent: stop syncing it.
                del self.active[identity]
                del self._seen[identity]
        return True

    def _down(self, exc: BaseException) -> None:
        if self._problem is None:
            self._problem = str(exc) or type(exc).__name__
            logger.warning(
                "rate limits: Redis at %s does not answer (%s); each node limits on its"
                " own until it does",
                self._log.where,
                self._problem,
            )

    def _up(self) -> None:
        if self._problem is not None:
            self._problem = None
            logger.warning("rate limits: Redis at %s answers again", self._log.where)
