"""``cluster.wait_replicas``: a publish is answered only once a replica has it.

A real primary and a real replica (``--replicaof``), each a redis-server of its own.
"""

from __future__ import annotations

from pathlib import Path

import coredis
import pytest
import trio

from catsock.eventlog import LogUnavailable
from tests.cluster.redisserver import RedisServer
from tests.cluster.test_redis_log import commits, opened, row


async def in_sync(primary: RedisServer) -> None:
    """Until the primary counts one replica online (replication has no event to
    wait on from outside; it is polled, as a server's start-up is)."""
    while True:
        info = await primary.info("replication")
        if info.get("connected_slaves") == 1 and "online" in str(info.get("slave0", "")):
            return
        await trio.sleep(0.05)


async def test_wait_replicas_answers_only_what_a_replica_has(
    redis: RedisServer, tmp_path: Path
) -> None:
    replica = RedisServer(
        redis.binary, tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(redis.port))
    )
    await replica.start()
    try:
        with trio.fail_after(30):
            await in_sync(redis)
            async with opened(redis.url, wait_replicas=1, wait_timeout_ms=3000) as log:
                done = await log.commit(commits(), [row("r1"), row("r2")], {}, [], 0)
                assert list(done.seqs or ()) == [1, 2]
                # WAIT returned: the replica has both, read from the replica itself.
                async with coredis.Redis.from_url(replica.url, decode_responses=True) as client:
                    entries = await client.xrange("{catsock}:log", "-", "+")
                assert [e.identifier for e in entries] == ["1-0", "2-0"]

                await replica.stop()
                with pytest.raises(LogUnavailable, match="fewer than 1 replicas have the batch"):
                    await log.commit(commits(), [row("r3")], {}, [], 0)
                assert log.unavailable is not None
                assert "cluster.wait_replicas" in log.unavailable
    finally:
        await replica.stop()


async def test_a_promoted_replica_has_every_batch_wait_confirmed(
    redis: RedisServer, tmp_path: Path
) -> None:
    """A failover: the primary is killed (-9) after 20 batches were answered with
    ``wait_replicas = 1``; the replica, promoted (``REPLICAOF NO ONE``), holds every
    answered event and their dedup entries, and numbers the next one after them."""
    replica = RedisServer(
        redis.binary, tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(redis.port))
    )
    await replica.start()
    try:
        with trio.fail_after(60):
            await in_sync(redis)
            answered: list[int] = []
            async with opened(redis.url, wait_replicas=1, wait_timeout_ms=3000) as log:
                for batch in range(20):
                    rows = [row(f"f{batch}-{i}") for i in range(25)]
                    done = await log.commit(commits(), rows, {}, [], 0)
                    answered += list(done.seqs or ())
                await redis.kill()
            async with coredis.Redis.from_url(replica.url, decode_responses=True) as client:
                await client.replicaof(None, None)  # promote it: REPLICAOF NO ONE
            async with opened(replica.url) as promoted:
                found, _ = await promoted.read_after(
                    {"type:AFAD": 0}, upto=10**6, exclude_sender=None, limit=10_000
                )
                assert [e.seq for e in found] == answered == list(range(1, 501))
                again = await promoted.commit(commits(), [row("f3-7"), row("after")], {}, [], 0)
                # The dedup index came over too; the counter goes on after 500.
                assert list(again.seqs or ()) == [-(3 * 25 + 7 + 1), 501]
    finally:
        await replica.stop()
