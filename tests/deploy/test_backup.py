"""``db backup | check | restore`` against a gateway taking publishes (storage/backup.py).

The backup's snapshot is pinned down without timing: ``backup``'s ``started``
hook runs once its read transaction is open, and the test holds it there until
the gateway has committed more events, then checks that the copy has every
event accepted before the backup began, none sent after the snapshot, and is
exactly a prefix of the live log. The CLI tests run the commands docs/deploy.md
§7 runs, as processes, against a gateway under load.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

import storage
from catsock.client import Client, connect
from catsock.config import load_config
from catsock.server import Gateway, StartupError
from storage import backup as db_backup
from tests.catsock.harness import CONVERSION, GatewayFactory, RunningGateway
from tests.lines import LineReader

TIMEOUT = 60
FAST = {"limits": {"rate": {"CATS": {"per_minute": 600_000.0, "burst": 10_000}}}}


def events(path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return list(conn.execute("SELECT seq, message_id, sender, body FROM events ORDER BY seq"))


def found(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern))


def fill(path: Path, rows: int) -> None:
    """Old log rows, so a backup has megabytes to copy."""
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn, conn:
        conn.executemany(
            "INSERT INTO messages (direction, type, message_id, connection_id, size, payload,"
            " created_at) VALUES ('in', 'click', ?, 'conn_old', 200, ?, '2026-01-01T00:00Z')",
            ((f"old-{i}", "x" * 200) for i in range(rows)),
        )


class Publisher:
    """Publishes conversions one after another until stopped; records what was accepted."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.accepted: list[tuple[int, str]] = []
        self.stop = False
        self._changed = trio.Event()

    async def run(self) -> None:
        n = 0
        while not self.stop:
            n += 1
            answer = await self.client.publish("conversion", {**CONVERSION, "pay_id": n})
            assert answer.seq is not None
            self.accepted.append((answer.seq, answer.message_id))
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.accepted) < count:
            await self._changed.wait()


@contextlib.asynccontextmanager
async def publishing(gw: RunningGateway) -> AsyncIterator[Publisher]:
    token = gw.token("cats-load", "CATS")
    async with connect(gw.url, token, "CATS", receive=False) as client:
        publisher = Publisher(client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher.run)
            await publisher.wait_for(20)
            yield publisher
            publisher.stop = True


async def test_backup_is_a_consistent_snapshot_while_the_gateway_commits(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await start_gateway(**FAST)
    fill(gw.database, 20_000)
    copy = tmp_path / "backup.db"
    with trio.fail_after(TIMEOUT):
        async with publishing(gw) as publisher:
            before = len(publisher.accepted)  # all committed before the backup begins
            at_start: list[int] = []
            snapshot_taken = trio.Event()
            release = threading.Event()

            def mark() -> None:
                at_start.append(len(publisher.accepted))
                snapshot_taken.set()

            def started() -> None:  # in the backup's thread, its snapshot taken
                trio.from_thread.run_sync(mark)
                release.wait(TIMEOUT)

            async def run_backup() -> db_backup.BackupResult:
                return await trio.to_thread.run_sync(
                    lambda: db_backup.backup(gw.database, copy, started=started)
                )

            async with trio.open_nursery() as nursery:
                result: list[db_backup.BackupResult] = []

                async def go() -> None:
                    result.append(await run_backup())

                nursery.start_soon(go)
                await snapshot_taken.wait()
                # The gateway keeps committing while the backup's snapshot is open.
                await publisher.wait_for(at_start[0] + 20)
                release.set()
    live = events(gw.database)
    copied = events(copy)
    seqs = {row[0] for row in copied}
    # Every event accepted before the backup began is in the copy ...
    assert {seq for seq, _ in publisher.accepted[:before]} <= seqs
    # ... none sent after its snapshot was taken (the publisher sends one at a time) ...
    assert not {seq for seq, _ in publisher.accepted[at_start[0] + 1 :]} & seqs
    # ... and the copy is exactly the log up to some point: no half of anything.
    assert copied == live[: len(copied)]
    assert result[0].last_seq == copied[-1][0]
    checked = db_backup.check(copy)
    assert checked.ok, checked.problems()
    assert (checked.integrity, checked.schema_version) == (["ok"], storage.SCHEMA_VERSION)
    assert not list(found(tmp_path, ".backup.db.partial*"))
    # A self-contained file: no WAL beside it.
    with contextlib.closing(sqlite3.connect(copy)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


async def cli(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATSOCK_")}
    done = await trio.run_process(
        [sys.executable, "-m", "catsock", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_cli_backup_under_load_then_restore_into_a_stopped_gateway(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await start_gateway(**FAST)
    fill(gw.database, 20_000)
    copy = tmp_path / "catsock-backup.db"
    with trio.fail_after(TIMEOUT):
        async with publishing(gw) as publisher:
            before = len(publisher.accepted)
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "catsock", "db", "backup", "--db", str(gw.database),
                 str(copy)],
                stdout=-1, stderr=-1,
            )  # fmt: skip
            assert process.stderr is not None
            assert process.stdout is not None
            err = LineReader(process.stderr)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(err.run)
                await err.wait_for(lambda lines: any("backing up" in x for x in lines))
                during = len(publisher.accepted)
                assert await process.wait() == 0, err.lines
            out = (await process.stdout.receive_some()).decode()
            # The gateway went on accepting while the backup ran.
            assert len(publisher.accepted) > during
    assert out.startswith(f"backed up {gw.database} to {copy}: "), out
    copied = {row[0] for row in events(copy)}
    assert {seq for seq, _ in publisher.accepted[:before]} <= copied

    code, out, err_text = await cli("db", "check", str(copy))
    assert code == 0, err_text
    assert f"integrity ok, schema {storage.SCHEMA_VERSION}" in out

    # Restoring under the running gateway is refused, and changes nothing.
    live_before = events(gw.database)
    code, out, err_text = await cli("db", "restore", "--db", str(gw.database), str(copy))
    assert code == 1
    assert "a running gateway holds" in err_text
    assert events(gw.database) == live_before
    assert not list(found(tmp_path, "*.pre-restore-*"))

    await gw.gateway.shutdown()
    live_after = events(gw.database)
    code, out, err_text = await cli("db", "restore", "--db", str(gw.database), str(copy))
    assert code == 0, err_text
    assert out.startswith(f"restored {gw.database} from {copy}; the previous database is ")
    (previous,) = found(tmp_path, f"{gw.database.name}.pre-restore-*")
    assert events(previous) == live_after
    assert {row[0] for row in events(gw.database)} == copied
    # A gateway starts on the restored database and carries on after its last seq.
    config = load_config(environ={}, overrides={"port": 0, "database": str(gw.database)})
    gateway = Gateway(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        await gateway.shutdown()
    code, out, err_text = await cli("db", "check", "--db", str(gw.database))
    assert code == 0, err_text


async def test_check_refuses_damaged_newer_and_missing_files(tmp_path: Path) -> None:
    good = tmp_path / "good.db"
    storage.open_db(good).close()
    with trio.fail_after(TIMEOUT):
        code, out, _ = await cli("db", "check", str(good))
        assert code == 0
        assert "integrity ok" in out

        missing = tmp_path / "nope.db"
        code, _, err = await cli("db", "check", str(missing))
        assert code == 1
        assert "does not exist" in err
        assert not missing.exists()  # check never creates a database

        newer = tmp_path / "newer.db"
        storage.open_db(newer).close()
        with contextlib.closing(sqlite3.connect(newer)) as conn:
            conn.execute(f"PRAGMA user_version = {storage.SCHEMA_VERSION + 1}")
        code, _, err = await cli("db", "check", str(newer))
        assert code == 1
        assert "newer than this catsock" in err

        damaged = tmp_path / "damaged.db"
        db = storage.open_db(damaged)
        db.conn.executemany(
            "INSERT INTO messages (direction, type, size, created_at) VALUES ('in', 't', 1, ?)",
            ((str(i),) for i in range(5000)),
        )
        db.conn.commit()
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        data = bytearray(damaged.read_bytes())
        page = 4096
        for offset in range(3 * page, len(data) - page, 7 * page):  # scribble on some pages
            data[offset + 100 : offset + 400] = os.urandom(300)
        damaged.write_bytes(bytes(data))
        code, out, err = await cli("db", "check", str(damaged))
        assert code == 1
        assert "failed the check" in err
        assert "Traceback" not in err

        # A damaged backup is never restored.
        target = tmp_path / "target.db"
        storage.open_db(target).close()
        code, _, err = await cli("db", "restore", "--db", str(target), str(damaged))
        assert code == 1
        assert "not a usable backup" in err
        assert not list(found(tmp_path, "target.db.pre-restore-*"))


async def test_gateway_refuses_to_start_while_a_restore_holds_its_database(
    tmp_path: Path,
) -> None:
    database = tmp_path / "held.db"
    storage.open_db(database).close()
    config = load_config(environ={}, overrides={"port": 0, "database": str(database)})
    fd = os.open(database, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what db restore holds
        gateway = Gateway(config)
        with trio.fail_after(TIMEOUT), pytest.raises(StartupError, match="being restored"):
            await gateway.serve()  # fails before it binds or starts anything
    finally:
        os.close(fd)
    gateway.auth.close()
