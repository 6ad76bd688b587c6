"""The refused-event store in Redis (catsock/refused_store.py) against a real
redis-server: the SQLite table's rows, filters and bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import coredis
import pytest
import trio

import storage
from catsock.eventlog import LogUnavailable
from catsock.refused_store import COLUMNS, RedisRefusedStore
from storage import EventRefused, RefusedRetried
from tests.cluster.redisserver import RedisServer


def refused(i: int, reason: str = "RATE_LIMIT_EXCEEDED") -> EventRefused:
    return EventRefused(
        at=1_765_000_000.0 + i, identity="cats", client_type="CATS", user_id=None,
        connection_id=None, transport="http", reason=reason, detail="too fast",
        type="conversion", message_id=f"m-{i}", size=10, body=f"body {i}",
    )  # fmt: skip


@pytest.fixture
async def client(redis: RedisServer) -> AsyncIterator[coredis.Redis[str]]:
    async with coredis.Redis.from_url(redis.url, decode_responses=True) as client:
        yield client


def store(
    client: coredis.Redis[str], max_rows: int = 100, max_age: float = 3600.0
) -> RedisRefusedStore:
    return RedisRefusedStore(
        lambda: client,
        lambda name: "{t}:" + name,
        body_of=lambda body: None if body is None else body.upper(),
        max_age=max_age,
        max_rows=max_rows,
        timeout=2.0,
        where="test",
    )


async def test_rows_filters_and_retries(client: coredis.Redis[str]) -> None:
    kept = store(client)
    await kept.add([refused(0), refused(1, "EVENT_NOT_ALLOWED"), refused(2)])
    rows = await kept.find(limit=10)
    assert [r["id"] for r in rows] == [3, 2, 1]  # newest first
    assert set(rows[0]) == set(COLUMNS)
    assert (rows[0]["body"], rows[0]["size"], rows[0]["user_id"]) == ("BODY 2", 10, None)
    assert rows[0]["at"] == storage.iso(1_765_000_002.0)  # as the SQLite table stores it
    limited = await kept.find(limit=10, reason="EVENT_NOT_ALLOWED")
    assert [r["message_id"] for r in limited] == ["m-1"]
    assert [r["id"] for r in await kept.find(limit=10, since=rows[1]["at"])] == [3, 2]
    await kept.add(
        [RefusedRetried(2, 1_765_000_100.0, "accepted", 7), RefusedRetried(99, 0.0, "x", None)]
    )
    row = await kept.get(2)
    assert row is not None
    assert (row["retry_result"], row["retry_seq"]) == ("accepted", 7)
    assert await kept.get(99) is None
    assert await client.exists(["{t}:refused:99"]) == 0  # a retry of no row makes none


async def test_the_oldest_go_beyond_max_rows(client: coredis.Redis[str]) -> None:
    kept = store(client, max_rows=3)
    for i in range(5):
        await kept.add([refused(i)])
    assert [r["id"] for r in await kept.find(limit=10)] == [5, 4, 3]
    assert await kept.get(1) is None
    assert await client.zcard("{t}:refused") == 3


async def test_rows_expire_after_max_age(client: coredis.Redis[str]) -> None:
    kept = store(client, max_age=1.0)
    await kept.add([refused(0)])
    assert await client.ttl("{t}:refused:1") in (0, 1)
    with trio.fail_after(10):
        while True:
            if not await kept.find(limit=10):
                break
            await trio.sleep(0.1)
    await kept.add([refused(1)])  # drops the expired row's id from the index
    assert await client.zrange("{t}:refused", 0, -1) == ("2",)


async def test_redis_down_is_log_unavailable(redis: RedisServer) -> None:
    async with coredis.Redis.from_url(redis.url, decode_responses=True) as client:
        kept = store(client)
        await redis.stop()
        with trio.fail_after(30), pytest.raises(LogUnavailable, match="cannot reach Redis at test"):
            await kept.add([refused(0)])
        await redis.start()
