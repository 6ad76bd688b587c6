"""The gateway's WAL checkpoints (catsock/checkpoints.py): its writing connection
never checkpoints in a commit, and a task of its own copies the WAL into the
database file within seconds, so the WAL stays small without delaying commits."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio

import storage
from tests.catsock.harness import CONVERSION, GatewayFactory, envelope
from tests.catsock.test_http import bearer, http


def events_in_the_file(path: Path) -> int:
    """Events the database file itself holds, ignoring the WAL (``immutable``)."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:  # no events table in the file yet
        return 0
    finally:
        conn.close()


def test_the_writer_connection_leaves_checkpoints_to_others(tmp_path: Path) -> None:
    quiet = storage.open_db(tmp_path / "a.db", checkpoints=False)
    usual = storage.open_db(tmp_path / "a.db")
    try:
        assert quiet.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        assert usual.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    finally:
        quiet.close()
        usual.close()


async def test_published_events_reach_the_database_file_while_the_gateway_runs(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    token = gw.token("cats-http", "CATS")
    for i in range(20):
        body = envelope("conversion", CONVERSION, "CATS", f"ck-{i}").encode()
        reply = await http(gw.port, "POST", "/api/publish", headers=bearer(token), body=body)
        assert reply.status == 202, reply.body
    # Twenty events are a few pages: SQLite's own rule (1,000 pages) would leave
    # them in the WAL; the gateway's checkpoints copy them within CHECKPOINT_EVERY.
    with trio.fail_after(30):
        while True:
            if await trio.to_thread.run_sync(events_in_the_file, gw.database) >= 20:
                break
            await trio.sleep(0.1)  # the checkpoints' own pace: there is no event to wait on
