"""The Redis event log (catsock/eventlog/redis.py) against a real redis-server.

Each test starts its own redis-server (tests/cluster/conftest.py) and drives
``RedisEventLog`` the way delivery does: commits through a ``GroupCommit``, reads,
cursors, and ``follow``, the read-back every node fans out from.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import coredis
import pytest
import trio

import storage
from catsock.config import ClusterConfig
from catsock.eventlog import LogUnavailable
from catsock.eventlog.redis import RedisEventLog
from catsock.groupcommit import GroupCommit
from tests.cluster.redisserver import RedisServer

LOGGER = logging.getLogger("tests.cluster")


_provisional = iter(range(1, 1_000_000))


def row(
    message_id: str, sender: str = "cats", channels: tuple[str, ...] = ("type:AFAD",)
) -> storage.EventRow:
    """An event as delivery hands it over: numbered by its process, not yet by the log."""
    body = f'{{"type":"click","message_id":"{message_id}"}}'
    seq = next(_provisional)
    return storage.EventRow(seq, message_id, sender, None, "click", channels, 3, 1.5, None, body)


def commits() -> GroupCommit:
    async def nothing() -> bool:
        return True

    return GroupCommit(
        "test", None, trio.Lock(), due=lambda: math.inf, write_next=nothing, logger=LOGGER
    )


@asynccontextmanager
async def opened(url: str, **settings: object) -> AsyncIterator[RedisEventLog]:
    log = RedisEventLog(
        ClusterConfig(redis=url, **settings),  # type: ignore[arg-type]
        retention_rows=1000,
        retention_days=1.0,
    )
    async with log.open():
        yield log


async def test_commit_numbers_and_reads_back(redis: RedisServer) -> None:
    with trio.fail_after(20):
        async with opened(redis.url) as log:
            assert await log.head() == 0
            assert await log.first_seq() is None
            done = await log.commit(
                commits(), [row("a"), row("b", channels=("user:1",))], {}, [], 0
            )
            assert list(done.seqs or ()) == [1, 2]
            assert await log.head() == 2
            assert await log.first_seq() == 1
            found, scanned = await log.read_after(
                {"type:AFAD": 0}, upto=2, exclude_sender=None, limit=10
            )
            assert [(e.seq, e.channels, e.body) for e in found] == [
                (1, ("type:AFAD",), '{"type":"click","message_id":"a"}')
            ]
            assert scanned == 2
            # Nobody receives its own events.
            found, _ = await log.read_after(
                {"type:AFAD": 0}, upto=2, exclude_sender="cats", limit=10
            )
            assert found == []


async def test_duplicates_get_the_first_seq(redis: RedisServer) -> None:
    with trio.fail_after(20):
        async with opened(redis.url) as log:
            first = await log.commit(
                commits(), [row("m1"), row("m1"), row("m1", sender="afad")], {}, [], 0
            )
            assert list(first.seqs or ()) == [1, -1, 2]
            again = await log.commit(commits(), [row("m2"), row("m1")], {}, [], 0)
            assert list(again.seqs or ()) == [3, -1]
            assert await log.head() == 3


async def test_a_batch_of_thousands_is_numbered_and_deduplicated_in_one_script(
    redis: RedisServer,
) -> None:
    """The script reads the batch's dedup keys a thousand at a time and numbers the
    new events with one INCRBY: a repeat far apart in a batch of 2,500, and one of
    the previous batch, still get the first seq."""
    with trio.fail_after(20):
        async with opened(redis.url) as log:
            await log.commit(commits(), [row("old")], {}, [], 0)
            rows = [row(f"m{i}") for i in range(2500)]
            rows[1500] = row("m10")
            rows[2400] = row("old")
            done = await log.commit(commits(), rows, {}, [], 0)
            seqs = list(done.seqs or ())
            assert seqs[1500] == -seqs[10]
            assert seqs[2400] == -1
            new = [s for i, s in enumerate(seqs) if i not in (1500, 2400)]
            assert new == list(range(2, 2500))
            assert await log.head() == 2499


async def test_a_batch_sent_again_after_a_lost_answer_gets_its_own_seqs(
    redis: RedisServer,
) -> None:
    """The script ran but its answer was lost (the connection dropped): the writer
    sends the same batch again and is told the seqs it got, not "duplicate"."""
    with trio.fail_after(20):
        async with opened(redis.url) as log:
            batch = [row("x1"), row("x2")]
            first = await log.commit(commits(), batch, {}, [], 0)
            again = await log.commit(commits(), batch, {}, [], 0)
            assert list(first.seqs or ()) == list(again.seqs or ()) == [1, 2]
            # Another publish of the same message is still a duplicate.
            other = await log.commit(commits(), [row("x1")], {}, [], 0)
            assert list(other.seqs or ()) == [-1]
            assert await log.head() == 2


async def test_same_message_id_on_two_nodes_at_once_gets_one_seq(redis: RedisServer) -> None:
    """Two writers (two nodes' logs, own connections) publish the same 200 message
    ids concurrently: each id is stored once, and both writers are told its seq."""
    answers: dict[str, list[int]] = {}
    with trio.fail_after(30):
        async with opened(redis.url) as a, opened(redis.url) as b:

            async def publish(log: RedisEventLog) -> None:
                for start in range(0, 200, 10):
                    rows = [row(f"id{i}") for i in range(start, start + 10)]
                    done = await log.commit(commits(), rows, {}, [], 0)
                    for r, seq in zip(rows, done.seqs or (), strict=True):
                        answers.setdefault(r.message_id, []).append(abs(seq))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish, a)
                nursery.start_soon(publish, b)
            assert await a.head() == 200
    assert len(answers) == 200
    assert all(len(set(seqs)) == 1 and len(seqs) == 2 for seqs in answers.values())
    assert sorted(seqs[0] for seqs in answers.values()) == list(range(1, 201))


async def test_cursors_only_move_forward(redis: RedisServer) -> None:
    with trio.fail_after(20):
        async with opened(redis.url) as log:
            assert await log.load_cursors("afad") == {}
            await log.commit(
                commits(), [], {("afad", "type:AFAD"): 5, ("afad", "user:1"): 2}, [], 0
            )
            await log.commit(commits(), [], {("afad", "type:AFAD"): 3}, [], 0)
            assert await log.load_cursors("afad") == {"type:AFAD": 5, "user:1": 2}


async def test_ledger_rows_go_to_redis(redis: RedisServer) -> None:
    with trio.fail_after(20):
        async with opened(redis.url) as log:
            ledger = [storage.LedgerRow("afad", "written", 1, 4, "conn_1", 12.5, None)]
            await log.commit(commits(), [], {}, ledger, 0)
        async with coredis.Redis.from_url(redis.url, decode_responses=True) as client:
            (entry,) = await client.xrange("{catsock}:ledger", "-", "+")
    assert dict(entry.field_values) == {
        "i": "afad", "k": "written", "f": "1", "l": "4", "n": "conn_1", "a": "12.5", "d": ""
    }  # fmt: skip


async def test_follow_gives_every_node_all_events_in_order(redis: RedisServer) -> None:
    got: list[int] = []
    enough = trio.Event()

    def deliver(events: list[storage.StoredEvent]) -> None:
        got.extend(e.seq for e in events)
        if len(got) >= 60:
            enough.set()

    with trio.fail_after(30):
        async with opened(redis.url) as a, opened(redis.url) as b, trio.open_nursery() as nursery:
            await nursery.start(a.follow, 0, deliver, lambda problem: None)
            for i in range(30):
                await a.commit(commits(), [row(f"a{i}")], {}, [], 0)
                await b.commit(commits(), [row(f"b{i}")], {}, [], 0)
            await enough.wait()
            nursery.cancel_scope.cancel()
    assert got == list(range(1, 61))


async def test_numbers_past_the_floor_after_redis_lost_its_data(redis: RedisServer) -> None:
    """A Redis restarted without AOF has forgotten the counter: a node that saw seq
    10 never gets a number at or below it."""
    with trio.fail_after(20):
        async with opened(redis.url) as log:
            await log.commit(commits(), [row("a")], {}, [], 0)
            async with coredis.Redis.from_url(redis.url) as client:
                await client.flushall()
            done = await log.commit(commits(), [row("b")], {}, [], 10)
            assert list(done.seqs or ()) == [11]
            done = await log.commit(commits(), [row("c")], {}, [], 10)
            assert list(done.seqs or ()) == [12]


async def test_acked_events_survive_a_redis_kill_with_aof(redis_aof: RedisServer) -> None:
    """AOF with appendfsync always: what a commit returned for is on disk, even
    when redis-server is killed with SIGKILL right after."""
    with trio.fail_after(30):
        async with opened(redis_aof.url) as log:
            for start in range(0, 100, 10):
                await log.commit(
                    commits(), [row(f"m{i}") for i in range(start, start + 10)], {}, [], 0
                )
        await redis_aof.kill()
        await redis_aof.start()
        async with opened(redis_aof.url) as log:
            assert await log.head() == 100
            found, _ = await log.read_after(
                {"type:AFAD": 0}, upto=100, exclude_sender=None, limit=500
            )
            assert [e.seq for e in found] == list(range(1, 101))
            # And the dedup index survived with it.
            again = await log.commit(commits(), [row("m5")], {}, [], 0)
            assert list(again.seqs or ()) == [-6]


async def test_unreachable_redis_fails_the_commit_and_recovers(redis: RedisServer) -> None:
    states: list[str | None] = []
    changed = trio.Event()

    def state(problem: str | None) -> None:
        nonlocal changed
        states.append(problem)
        changed.set()
        changed = trio.Event()

    with trio.fail_after(30):
        async with opened(redis.url, timeout=1.0) as log, trio.open_nursery() as nursery:
            await nursery.start(log.follow, 0, lambda events: None, state)
            await redis.stop()
            with pytest.raises(LogUnavailable, match=r"cannot reach Redis at redis://127\.0\.0\.1"):
                await log.commit(commits(), [row("lost?")], {}, [], 0)
            assert log.unavailable is not None
            while not states:
                await changed.wait()
            await redis.start()
            while states[-1] is not None:
                await changed.wait()
            assert log.unavailable is None
            done = await log.commit(commits(), [row("after")], {}, [], 0)
            assert list(done.seqs or ()) == [1]
            nursery.cancel_scope.cancel()


async def test_start_cursors_mark_a_start_and_never_move_a_cursor(redis: RedisServer) -> None:
    """Where a new identity's log starts (the shared LOG_START): set only where it
    has no cursor, so a move another node made meanwhile stays."""
    with trio.fail_after(20):
        async with opened(redis.url) as log:
            await log.commit(commits(), [], {("afad", "type:AFAD"): 7}, [], 0)
            await log.start_cursors("afad", {"type:AFAD": 3, "user:1": 5})
            assert await log.load_cursors("afad") == {"type:AFAD": 7, "user:1": 5}
