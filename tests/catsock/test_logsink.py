"""Tests for catsock.logsink: group commit, flush on cancel, drops, error survival, retention.

Real SQLite files under tmp_path; time is trio's MockClock, moved by the tests, never slept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils
import trio
import trio.testing

from catsock.logsink import LogSink
from storage.db import open_db
from storage.logs import (
    ConnectionClosed,
    ConnectionOpened,
    LogPolicy,
    MessageLogged,
    write_batch,
)

# Real seconds a test may sit idle before the fake clock jumps on its own; only a hang gets
# there, and the jump then lands on the test's fail_after deadline.
HANG_GUARD_SECONDS = 5.0
# Seconds of (real or fake) time a test may take; tests that jump the clock further add that.
FAIL_AFTER = 30.0


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Not autojump at threshold 0: that treats "waiting for a worker thread" as idle, so it
    # would leap over deadlines mid-write, and the spinning loop starves the thread of the GIL.
    # Here time moves only when a test jumps it, so every step below is deterministic.
    return trio.testing.MockClock(autojump_threshold=HANG_GUARD_SECONDS)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "catsock.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[sqlite_utils.Database]:
    database = open_db(db_path)
    yield database
    database.close()


def _message(n: int, *, at: float | None = None) -> MessageLogged:
    payload = f'{{"n":{n},"password":"p{n}"}}'
    return MessageLogged(
        "in", "chat", f"m{n}", "c1", len(payload), payload, time.time() if at is None else at
    )


def _count(path: Path, table: str) -> int:
    # A separate connection sees only what was committed.
    other = open_db(path)
    try:
        return int(other.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        other.close()


async def _advance(clock: trio.testing.MockClock, sink: LogSink, seconds: float) -> None:
    """Move time on, let run() react, and wait for any write it started to finish."""
    clock.jump(seconds)
    await trio.testing.wait_all_tasks_blocked()
    if not sink.statistics().pending:
        # Nothing left to write, so this only waits out the batch run() took, if any.
        await sink.flush()


async def test_rows_recorded_together_commit_as_one_batch(
    db: sqlite_utils.Database, db_path: Path, clock: trio.testing.MockClock
) -> None:
    sink = LogSink(db, policy=LogPolicy.FULL, flush_interval=0.05)
    with trio.fail_after(FAIL_AFTER):
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run)
            for n in range(1000):
                sink.record(_message(n))
                await trio.lowlevel.checkpoint()  # run() wakes up after the first row
            await trio.testing.wait_all_tasks_blocked()
            assert sink.statistics().written == 0  # still gathering
            await _advance(clock, sink, 0.05)
            nursery.cancel_scope.cancel()
    stats = sink.statistics()
    assert (stats.written, stats.batches, stats.last_batch_size) == (1000, 1, 1000)
    assert stats.last_commit_seconds > 0
    assert _count(db_path, "messages") == 1000


async def test_rows_arriving_over_time_commit_once_per_interval(
    db: sqlite_utils.Database, clock: trio.testing.MockClock
) -> None:
    # Binary fractions, so four steps add up to exactly one flush interval.
    sink = LogSink(db, policy=LogPolicy.METADATA, flush_interval=1 / 16)
    with trio.fail_after(FAIL_AFTER):
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run)
            for n in range(20):  # one row every 1/64 s
                sink.record(_message(n))
                await trio.testing.wait_all_tasks_blocked()
                await _advance(clock, sink, 1 / 64)
            nursery.cancel_scope.cancel()
    stats = sink.statistics()
    assert (stats.written, stats.batches, stats.last_batch_size) == (20, 5, 4)


async def test_max_batch_splits_a_backlog(db: sqlite_utils.Database) -> None:
    sink = LogSink(db, policy=LogPolicy.FULL, max_batch=5)
    for n in range(12):
        sink.record(_message(n))
    with trio.fail_after(FAIL_AFTER):
        await sink.flush()
    stats = sink.statistics()
    assert (stats.written, stats.batches, stats.last_batch_size, stats.pending) == (12, 3, 2, 0)
    ids = [row["message_id"] for row in db.query("SELECT message_id FROM messages ORDER BY id")]
    assert ids == [f"m{n}" for n in range(12)]  # batches commit in recording order


async def test_cancelling_run_flushes_pending_rows(
    db: sqlite_utils.Database, db_path: Path
) -> None:
    sink = LogSink(
        db, policy=LogPolicy.FULL, redact_fields=frozenset({"password"}), flush_interval=3600
    )
    with trio.fail_after(FAIL_AFTER):
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run)
            sink.record(ConnectionOpened("c1", "BOT", "bot-1", "127.0.0.1:1", time.time()))
            for n in range(500):
                sink.record(_message(n))
            sink.record(ConnectionClosed("c1", time.time(), 1000, "bye"))
            await trio.testing.wait_all_tasks_blocked()  # run() is in its hour-long gather wait
            assert sink.statistics().written == 0
            nursery.cancel_scope.cancel()
    assert sink.statistics().written == 502
    assert _count(db_path, "messages") == 500
    other = open_db(db_path)
    try:
        row = other.conn.execute(
            "SELECT close_code, payload FROM connections, messages WHERE message_id = 'm7'"
        ).fetchone()
    finally:
        other.close()
    assert row == (1000, '{"n":7,"password":"[redacted]"}')


async def test_cancel_while_a_batch_waits_for_a_thread_loses_nothing(
    db: sqlite_utils.Database, db_path: Path, clock: trio.testing.MockClock
) -> None:
    # Hold the only worker-thread token, so run() takes its batch and then has to wait.
    limiter = trio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = 1
    await limiter.acquire()
    sink = LogSink(db, policy=LogPolicy.FULL)
    with trio.fail_after(FAIL_AFTER):
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run)
            for n in range(50):
                sink.record(_message(n))
            await trio.testing.wait_all_tasks_blocked()
            clock.jump(0.05)
            await trio.testing.wait_all_tasks_blocked()
            assert sink.statistics().pending == 0  # taken, and stuck before the thread
            nursery.cancel_scope.cancel()
            limiter.release()
    assert sink.statistics().written == 50
    assert _count(db_path, "messages") == 50


async def test_record_drops_and_counts_when_full(db: sqlite_utils.Database) -> None:
    sink = LogSink(db, policy=LogPolicy.FULL, max_pending=10)
    for n in range(15):
        sink.record(_message(n))
    assert (sink.dropped, sink.statistics().pending) == (5, 10)
    with trio.fail_after(FAIL_AFTER):
        await sink.flush()
        sink.record(_message(99))  # room again once the buffer drained
        await sink.flush()
    stats = sink.statistics()
    assert (stats.written, stats.dropped, stats.pending) == (11, 5, 0)
    ids = [row["message_id"] for row in db.query("SELECT message_id FROM messages ORDER BY id")]
    assert ids == [*(f"m{n}" for n in range(10)), "m99"]


async def test_policy_off_does_not_buffer_messages(db: sqlite_utils.Database) -> None:
    sink = LogSink(db, policy=LogPolicy.OFF, max_pending=1)
    sink.record(_message(1))
    assert sink.statistics().pending == 0
    sink.record(ConnectionOpened("c1", None, None, None, time.time()))
    sink.record(_message(2))  # would be dropped for lack of room if it were buffered
    assert (sink.statistics().pending, sink.dropped) == (1, 0)
    with trio.fail_after(FAIL_AFTER):
        await sink.flush()
    assert db.conn.execute("SELECT count(*) FROM connections").fetchone()[0] == 1
    assert db.conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


async def test_write_errors_are_counted_and_run_survives(
    db: sqlite_utils.Database,
    clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = LogSink(db, policy=LogPolicy.FULL, flush_interval=0.05)
    with trio.fail_after(FAIL_AFTER):
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run)
            db.execute("ALTER TABLE messages RENAME TO messages_away")
            with caplog.at_level(logging.WARNING, logger="catsock.logsink"):
                sink.record(_message(1))
                await trio.testing.wait_all_tasks_blocked()
                await _advance(clock, sink, 0.05)
                sink.record(_message(2))
                sink.record(_message(3))
                await trio.testing.wait_all_tasks_blocked()
                await _advance(clock, sink, 0.05)
            stats = sink.statistics()
            assert (stats.errors, stats.dropped, stats.written, stats.pending) == (2, 3, 0, 0)
            warnings = [r for r in caplog.records if r.name == "catsock.logsink"]
            assert len(warnings) == 1  # one warning per outage, not per failed batch
            assert warnings[0].levelno == logging.WARNING

            db.execute("ALTER TABLE messages_away RENAME TO messages")
            sink.record(_message(4))
            await trio.testing.wait_all_tasks_blocked()
            await _advance(clock, sink, 0.05)
            # run() itself took the row: it survived the errors.
            assert sink.statistics().pending == 0
            nursery.cancel_scope.cancel()
    stats = sink.statistics()
    assert (stats.errors, stats.written, stats.batches) == (2, 1, 1)
    assert [row["message_id"] for row in db.query("SELECT message_id FROM messages")] == ["m4"]


async def test_write_error_on_a_closed_database_is_counted(db_path: Path) -> None:
    db = open_db(db_path)
    sink = LogSink(db, policy=LogPolicy.FULL)
    sink.record(_message(1))
    db.close()
    with trio.fail_after(FAIL_AFTER):
        await sink.flush()
    stats = sink.statistics()
    assert (stats.errors, stats.dropped, stats.pending) == (1, 1, 0)


async def test_retention_prunes_at_start_and_every_interval(
    db: sqlite_utils.Database, db_path: Path, clock: trio.testing.MockClock
) -> None:
    def seed_expired_rows() -> None:
        # Through a second connection, as the CLI or another process would.
        other = open_db(db_path)
        expired = [_message(n, at=time.time() - 7200) for n in range(3)]
        write_batch(other, expired, policy=LogPolicy.FULL, redact_fields=frozenset())
        other.close()

    seed_expired_rows()
    sink = LogSink(db, policy=LogPolicy.FULL, retention_max_age=3600, prune_interval=60)
    with trio.fail_after(FAIL_AFTER + 60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run)
            sink.record(_message(100))
            await sink.flush()  # queued behind the start-up prune, which holds the database
            assert _count(db_path, "messages") == 1

            seed_expired_rows()
            clock.jump(59)
            await trio.testing.wait_all_tasks_blocked()
            assert _count(db_path, "messages") == 4  # the interval has not passed yet
            clock.jump(1)
            await trio.testing.wait_all_tasks_blocked()  # run() is now pruning
            sink.record(_message(101))
            await sink.flush()  # queued behind that prune
            assert _count(db_path, "messages") == 2
            nursery.cancel_scope.cancel()
    assert sink.statistics().errors == 0


def test_invalid_settings_are_rejected(db: sqlite_utils.Database) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        LogSink(db, policy=LogPolicy.FULL, max_batch=0)
    with pytest.raises(ValueError, match="max_pending"):
        LogSink(db, policy=LogPolicy.FULL, max_pending=0)
    with pytest.raises(ValueError, match="flush_interval"):
        LogSink(db, policy=LogPolicy.FULL, flush_interval=-1)
    with pytest.raises(ValueError, match="prune_interval"):
        LogSink(db, policy=LogPolicy.FULL, prune_interval=0)
