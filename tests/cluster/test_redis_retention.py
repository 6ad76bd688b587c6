"""Retention of the shared log in Redis (catsock/eventlog/retention.py), against a
real redis-server: soft limits never trim what a durable cursor still needs, and
events the hard bound trimmed before a recipient had them are recorded in the
ledger once, whichever node runs the pass and however often."""

from __future__ import annotations

import itertools

import attrs
import trio

from catsock.eventlog.redis import RedisEventLog
from storage.events import RETENTION
from tests.cluster.redisserver import RedisServer
from tests.cluster.test_redis_log import commits, opened, row

NEVER = 1e12  # a max_age no event reaches
_ids = itertools.count()


async def publish(log: RedisEventLog, count: int,
                  cursors: dict[tuple[str, str], int] | None = None,
                  created_at: float = 1.5) -> None:  # fmt: skip
    rows = [attrs.evolve(row(f"m{next(_ids)}"), created_at=created_at) for _ in range(count)]
    await log.commit(commits(), rows, cursors or {}, [], 0)


async def ledger(log: RedisEventLog) -> list[dict[str, str]]:
    entries = await log.client.xrange(log.key("ledger"), "-", "+")
    return [dict(e.field_values) for e in entries]


async def test_soft_limits_keep_what_a_cursor_still_needs(redis: RedisServer) -> None:
    with trio.fail_after(30):
        async with opened(redis.url) as log:
            await publish(log, 300, {("afad", "type:AFAD"): 100})
            done = await log.retain(max_age=NEVER, max_rows=50, now=2.0)
            assert done is not None
            # 50 rows would keep 251..300; afad has had only up to 100.
            assert (done.trimmed, done.lost) == (100, 0)
            assert await log.first_seq() == 101
            await publish(log, 0, {("afad", "type:AFAD"): 280})
            done = await log.retain(max_age=NEVER, max_rows=50, now=2.0)
            assert done is not None
            assert done.trimmed == 150
            assert await log.first_seq() == 251
            assert await ledger(log) == []


async def test_age_limit_trims_by_creation_time(redis: RedisServer) -> None:
    with trio.fail_after(30):
        async with opened(redis.url) as log:
            await publish(log, 40, created_at=100.0)
            await publish(log, 60, created_at=200.0)
            # Older than 150 s at t = 250 (max_age 100): the first 40.
            done = await log.retain(max_age=100.0, max_rows=10**6, now=250.0)
            assert done is not None
            assert done.trimmed == 40
            assert await log.first_seq() == 41


async def test_a_hard_trim_past_a_cursor_is_recorded_once_across_nodes(
    redis: RedisServer,
) -> None:
    with trio.fail_after(30):
        async with (
            opened(redis.url, key_prefix="hard") as a,
            opened(redis.url, key_prefix="hard") as b,
        ):
            # retention_rows=1000 is the stream's MAXLEN ~ : 2,500 events trim it.
            await publish(a, 10, {("afad", "type:AFAD"): 10})
            for _ in range(5):
                await publish(a, 500)
            first = await a.first_seq()
            assert first is not None
            assert first > 11, first
            done = await a.retain(max_age=NEVER, max_rows=10**6, now=3.0)
            assert done is not None
            assert done.lost == first - 11
            again = await b.retain(max_age=NEVER, max_rows=10**6, now=4.0)  # another node
            assert again is not None
            assert again.lost == 0
            rows = await ledger(a)
            assert len(rows) == 1
            assert rows[0] == {"i": "afad", "k": "dropped", "f": "11", "l": str(first - 1),
                               "n": "", "a": "3.0", "d": RETENTION}  # fmt: skip
