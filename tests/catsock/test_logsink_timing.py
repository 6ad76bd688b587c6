"""catsock.logsink's timing: when a batch write and a prune are due, on a clock the
test moves by hand, while the worker thread before them is held up.

A write or a prune that takes long in its thread (a slow disk, a busy machine) must
not move the writer's schedule: a batch is due ``flush_interval`` after its first
row was recorded, a prune ``prune_interval`` after the last one was due, and the
age cut reads the injected wall clock. Each test holds the only worker-thread token
to make a thread slow, moves fake time meanwhile, lets go, and checks what happened
once all is quiet (tests/clocks.py ``wait_quiet``) at a fake time it chose.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils
import trio
import trio.testing

from catsock.logsink import LogSink
from storage.db import open_db
from storage.logs import LogPolicy, MessageLogged, write_batch
from tests.clocks import wait_quiet

#: The wall clock the sink is given: fake time plus this, far from the real time, so
#: a cut made with time.time() would delete every row the tests write.
WALL0 = 1_000_000.0
FAIL_AFTER = 600  # fake seconds; time moves only when a test jumps it


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock()  # no autojump: time moves when the test says


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "catsock.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[sqlite_utils.Database]:
    database = open_db(db_path)
    yield database
    database.close()


class OnlyThread:
    """``async with OnlyThread() as token``: trio's default thread limiter (one per
    run, so this test's) cut to one token, and the test holding it, so the sink's
    next thread waits until ``token.release()``. Let go on the way out in any case,
    so that a failing test still lets the sink's last flush run."""

    def __init__(self) -> None:
        self.limiter = trio.to_thread.current_default_thread_limiter()
        self.held = False

    async def __aenter__(self) -> OnlyThread:
        self.limiter.total_tokens = 1
        await self.limiter.acquire()
        self.held = True
        return self

    def release(self) -> None:
        if self.held:
            self.held = False
            self.limiter.release()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


def _wall() -> float:
    return WALL0 + trio.current_time()


def _row(name: str, at: float) -> MessageLogged:
    return MessageLogged("in", "chat", name, "c1", 2, "{}", at)


def _ids(path: Path) -> list[str]:
    other = open_db(path)  # a connection of our own sees what was committed
    try:
        rows = other.conn.execute("SELECT message_id FROM messages ORDER BY id").fetchall()
        return [row[0] for row in rows]
    finally:
        other.close()


async def test_a_batch_is_due_flush_interval_after_its_first_row(
    db: sqlite_utils.Database, db_path: Path, clock: trio.testing.MockClock
) -> None:
    sink = LogSink(db, policy=LogPolicy.FULL, flush_interval=1.0, wall_clock=_wall)
    with trio.fail_after(FAIL_AFTER):
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run)
            async with OnlyThread() as token:  # the next write waits for this token
                sink.record(_row("a", _wall()))  # at 0: due at 1, whenever run() wakes
                clock.jump(1.0)
                await trio.testing.wait_all_tasks_blocked()
                assert sink.statistics().pending == 0  # "a" was taken; its thread waits
                sink.record(_row("b", _wall()))  # at 1, while "a" is written: due at 2
                clock.jump(1.0)
                token.release()
                await wait_quiet()
            # At 2 both are written, though "a"'s write ended only now: "b" did not
            # wait another flush_interval from there.
            assert trio.current_time() == 2.0
            assert sink.statistics().written == 2
            assert _ids(db_path) == ["a", "b"]
            sink.record(_row("c", _wall()))  # at 2: due at 3, not before
            await wait_quiet()
            clock.jump(0.5)
            await wait_quiet()
            assert sink.statistics().pending == 1
            clock.jump(0.5)
            await wait_quiet()
            assert sink.statistics().written == 3
            nursery.cancel_scope.cancel()


async def test_prunes_keep_their_schedule_when_one_is_slow(
    db: sqlite_utils.Database, db_path: Path, clock: trio.testing.MockClock
) -> None:
    def seed(*rows: tuple[str, float]) -> None:
        # Through a second connection, as another process would.
        other = open_db(db_path)
        batch = [_row(name, _wall() - age) for name, age in rows]
        write_batch(other, batch, policy=LogPolicy.FULL, redact_fields=frozenset())
        other.close()

    seed(("old-0", 7200))
    sink = LogSink(
        db, policy=LogPolicy.FULL, retention_max_age=3600, prune_interval=60, wall_clock=_wall
    )
    with trio.fail_after(FAIL_AFTER):
        async with trio.open_nursery() as nursery:
            async with OnlyThread() as token:  # the start-up prune waits for this token
                await nursery.start(sink.run)
                clock.jump(30)  # ... for 30 s
                token.release()
                await wait_quiet()
            assert _ids(db_path) == []  # the start-up prune, done at 30
            # Ages by the injected wall clock: 3000 s is young, 3700 s is expired.
            seed(("young", 3000), ("old-1", 3700))
            clock.jump(29.5)
            await wait_quiet()
            assert _ids(db_path) == ["young", "old-1"]  # at 59.5: not due yet
            clock.jump(0.5)
            await wait_quiet()
            # At 60, an interval after the first prune was due, not after it ended.
            assert _ids(db_path) == ["young"]
            nursery.cancel_scope.cancel()
    assert sink.statistics().errors == 0
