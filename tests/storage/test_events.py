"""Tests for storage.events: commits with duplicates, cursors, replay reads, retention.

Every test opens a real SQLite file under pytest's tmp_path.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils
from hypothesis import given
from hypothesis import strategies as st

import storage
from storage.db import keep_newest
from storage.events import (
    LOG_START,
    EventRow,
    LedgerRow,
    Pruned,
    commit,
    events_by_message_id,
    head,
    ledger_rows,
    load_cursors,
    prune_events,
    read_after,
    recipients_of,
)

T0 = 1_800_000_000.0


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite_utils.Database]:
    database = storage.open_db(tmp_path / "events.db")
    yield database
    database.close()


def row(
    seq: int,
    message_id: str | None = None,
    *,
    sender: str = "cats",
    channels: tuple[str, ...] = ("type:AFAD",),
    at: float = T0,
) -> EventRow:
    return EventRow(
        seq,
        message_id or f"m{seq}",
        sender,
        "conn_1",
        "conversion",
        channels,
        2,
        at,
        None,
        f'{{"n":{seq}}}',
    )


def test_commit_stores_events_and_reports_duplicates_by_sender_and_message_id(
    db: sqlite_utils.Database,
) -> None:
    assert commit(db, [row(1, "a"), row(2, "b")], {}, []) == {}
    # The same id again (in the same batch too) is a duplicate of the first...
    assert commit(db, [row(3, "a"), row(4, "c"), row(5, "c")], {}, []) == {3: 1, 5: 4}
    # ...but another sender may use it.
    assert commit(db, [row(6, "a", sender="afad")], {}, []) == {}
    assert head(db) == 6
    assert [e["seq"] for e in events_by_message_id(db, "a")] == [1, 6]


def test_cursors_only_move_forward(db: sqlite_utils.Database) -> None:
    commit(db, [], {("afad", "type:AFAD"): 5}, [])
    commit(db, [], {("afad", "type:AFAD"): 3, ("afad", "user:1"): 2}, [])
    assert load_cursors(db, "afad") == {"type:AFAD": 5, "user:1": 2}


def test_a_new_token_starts_at_the_head(db: sqlite_utils.Database) -> None:
    commit(db, [row(1), row(2)], {}, [])
    storage.create_token(db, name="afad", client_type="AFAD")
    assert load_cursors(db, "afad") == {LOG_START: 2}


def test_read_after_filters_channels_and_sender_and_pages(db: sqlite_utils.Database) -> None:
    rows = [
        row(1),
        row(2, channels=("type:CATS",)),
        row(3, sender="afad"),
        row(4, channels=("user:7", "type:AFAD")),
        row(5),
    ]
    commit(db, rows, {}, [])
    found, scanned = read_after(db, {"type:AFAD": 0}, upto=5, exclude_sender="afad", limit=2)
    assert ([e.seq for e in found], scanned) == ([1, 4], 4)
    found, scanned = read_after(db, {"type:AFAD": 4}, upto=5, exclude_sender="afad", limit=2)
    assert ([e.seq for e in found], scanned) == ([5], 5)
    # Per-channel positions: user:7 from 0 sees 4 even though type:AFAD is past it.
    found, _ = read_after(db, {"type:AFAD": 4, "user:7": 0}, upto=5, exclude_sender=None, limit=9)
    assert [e.seq for e in found] == [4, 5]
    assert found[0].channels == ("user:7", "type:AFAD")


@given(
    present=st.sets(st.integers(1, 60), max_size=40),
    start=st.integers(0, 60),
    limit=st.integers(1, 10),
)
def test_reading_page_by_page_yields_each_event_once_in_order(
    tmp_path_factory: pytest.TempPathFactory, present: set[int], start: int, limit: int
) -> None:
    database = storage.open_db(tmp_path_factory.mktemp("paging") / "e.db")
    try:
        commit(database, [row(s) for s in sorted(present)], {}, [])
        upto = max(present, default=0)
        position, seen = start, []
        while position < upto:
            found, position = read_after(
                database, {"type:AFAD": position}, upto=upto, exclude_sender=None, limit=limit
            )
            seen += [e.seq for e in found]
        assert seen == sorted(s for s in present if s > start)
    finally:
        database.close()


def test_prune_keeps_at_most_max_rows_when_seqs_have_gaps(db: sqlite_utils.Database) -> None:
    """Seqs with gaps (duplicates take a seq but are not stored): the rows rule cuts
    at the newest seq minus the limit, which keeps at most that many events."""
    commit(db, [row(s, at=T0 + s) for s in (*range(1, 11), 12, 14, 16)], {}, [])
    prune_events(db, max_age=None, max_rows=5)
    assert [e["seq"] for e in db.query("SELECT seq FROM events ORDER BY seq")] == [12, 14, 16]
    prune_events(db, max_age=None, max_rows=100)  # spans fewer seqs than that: nothing
    assert [e["seq"] for e in db.query("SELECT seq FROM events ORDER BY seq")] == [12, 14, 16]


def test_a_prune_reads_the_log_at_its_ends_never_walking_it(db: sqlite_utils.Database) -> None:
    """Every statement a prune runs on ``events`` uses the key: it runs once a minute
    under the write lock, and walking a log of 800,000 events took 0.4 s each time
    (the commits, and every AFAD, waited; issue 19's soak)."""
    commit(db, [row(s, at=T0 + s) for s in range(1, 51)], {}, [])
    written = [LedgerRow("afad", "written", s, s, "c", T0 + s, None) for s in range(1, 51)]
    commit(db, [], {}, written)
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    try:
        prune_events(db, max_age=3600, max_rows=1_000_000, hard_rows=10_000_000, now=T0 + 60)
    finally:
        db.conn.set_trace_callback(None)
    reads = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "DELETE"))]
    assert reads
    for sql in reads:
        plan = [r[-1] for r in db.conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()]
        assert not any(step.startswith(("SCAN events", "SCAN ledger")) for step in plan), (
            sql,
            plan,
        )


def test_the_ledger_is_pruned_by_age_even_a_row_dated_out_of_order(
    db: sqlite_utils.Database,
) -> None:
    """Ledger rows go by their date, found by bisecting their ids (the ledger's dates
    rise with its ids, give or take the second a "written" range stays open); a row
    dated before the one inserted ahead of it goes with it."""
    commit(db, [row(1, at=T0 + 100)], {}, [])
    dates = [1, 2, 0.5, 3, 8, 9]
    commit(db, [], {}, [LedgerRow("afad", "written", 1, 1, "c", T0 + d, None) for d in dates])
    prune_events(db, max_age=10, max_rows=None, now=T0 + 15)  # the cut: T0 + 5
    assert [r["at"] - T0 for r in db.query("SELECT at FROM ledger ORDER BY id")] == [8, 9]
    prune_events(db, max_age=10, max_rows=None, now=T0 + 100)
    assert list(db.query("SELECT at FROM ledger")) == []


def test_prune_keeps_the_newest_event_whatever_the_settings(db: sqlite_utils.Database) -> None:
    commit(db, [row(s, at=T0 + s) for s in range(1, 11)], {}, [])
    commit(db, [], {}, [LedgerRow("afad", "written", 1, 3, "c", T0, None)])
    assert prune_events(db, max_age=None, max_rows=4) == Pruned(6 + 1, 0)  # 1-6, a ledger row
    assert [e["seq"] for e in db.query("SELECT seq FROM events ORDER BY seq")] == [7, 8, 9, 10]
    prune_events(db, max_age=0, max_rows=None, now=T0 + 100)
    assert head(db) == 10
    assert [e["seq"] for e in db.query("SELECT seq FROM events ORDER BY seq")] == [10]


def test_ledger_and_recipient_queries(db: sqlite_utils.Database) -> None:
    commit(
        db,
        [row(1)],
        {("afad", "type:AFAD"): 0, ("dash", "type:DASHBOARD"): 1},
        [
            LedgerRow("afad", "written", 1, 3, "conn_a", T0, None),
            LedgerRow("dash", "dropped", 1, 1, "conn_d", T0, "queue full"),
        ],
    )
    assert [r["kind"] for r in ledger_rows(db, 1)] == ["written", "dropped"]
    assert [r["identity"] for r in ledger_rows(db, 2, "afad")] == ["afad"]
    assert ledger_rows(db, 4) == []
    assert [r["identity"] for r in recipients_of(db, ["type:AFAD"])] == ["afad"]


def test_a_taken_seq_is_reported_with_the_head_and_stores_nothing(
    db: sqlite_utils.Database,
) -> None:
    commit(db, [row(1, "a"), row(2, "b")], {}, [])
    # seq 2 again under another publish (another process wrote the log), next to a
    # new event and a retried publish: the whole batch is refused, the head named.
    with pytest.raises(storage.SeqTaken) as taken:
        commit(db, [row(3, "c"), row(2, "other"), row(4, "a")], {("afad", "x"): 3}, [])
    assert (taken.value.seq, taken.value.head) == (2, 2)
    assert head(db) == 2
    assert load_cursors(db, "afad") == {}
    assert commit(db, [row(3, "c"), row(4, "a")], {}, []) == {4: 1}


def test_age_pruning_bisects_seq_and_the_log_has_one_index(db: sqlite_utils.Database) -> None:
    commit(db, [row(s, at=T0 + s) for s in range(1, 101)], {}, [])
    pruned = prune_events(db, max_age=10.5, max_rows=None, now=T0 + 60)
    assert pruned == Pruned(49, 0)  # 1..49 < T0+49.5
    assert [e["seq"] for e in db.query("SELECT MIN(seq) AS seq FROM events")] == [50]
    # One secondary index: (message_id, sender), for duplicates and ledger lookups.
    indexes = [r["name"] for r in db.query("PRAGMA index_list(events)")]
    assert indexes == ["idx_events_message"]


def test_prune_holds_the_write_lock_while_another_connection_writes(
    db: sqlite_utils.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process writing between the prune's first read and its first delete
    made SQLite refuse the prune at once (BUSY_SNAPSHOT, whatever the busy
    timeout): the gateway logged 'pruning failed: database is locked'. The prune
    now holds the write lock from its start; the other writer waits instead."""
    commit(db, [row(s, at=T0 + s) for s in range(1, 11)], {}, [])
    other = storage.open_db(db.conn.execute("PRAGMA database_list").fetchone()[2])
    other.conn.execute("PRAGMA busy_timeout = 0")
    outcome = []
    real = storage.events._last_seq_before

    def read_then_someone_writes(database: sqlite_utils.Database, cut: float) -> int | None:
        seq = real(database, cut)
        try:
            commit(other, [], {("x", "type:AFAD"): 1}, [])
            outcome.append("written")
        except sqlite3.OperationalError:
            outcome.append("waited")
        return seq

    monkeypatch.setattr(storage.events, "_last_seq_before", read_then_someone_writes)
    try:
        prune_events(db, max_age=0, max_rows=None, now=T0 + 5.5)
    finally:
        other.close()
    assert outcome == ["waited"]
    assert [e["seq"] for e in db.query("SELECT seq FROM events ORDER BY seq")] == list(
        range(6, 11)
    )


# -- retention keeps what a durable recipient needs; the hard bound records losses -------


def _events(db: sqlite_utils.Database, n: int) -> None:
    commit(db, [row(s, at=T0 + s) for s in range(1, n + 1)], {}, [])


def _seqs(db: sqlite_utils.Database) -> list[int]:
    return [e["seq"] for e in db.query("SELECT seq FROM events ORDER BY seq")]


def test_soft_retention_keeps_what_a_durable_recipient_has_not_had(
    db: sqlite_utils.Database,
) -> None:
    _events(db, 10)
    commit(db, [row(11, channels=("type:CATS",), at=T0 + 11)], {}, [])
    wants = {"afad": {"type:AFAD": 0}}
    assert prune_events(db, max_age=0, max_rows=2, wants=wants, now=T0 + 99) == Pruned(0, 0)
    assert _seqs(db) == list(range(1, 12))
    # It has had events 1-3: those may go now, the rest stays.
    wants = {"afad": {"type:AFAD": 3}, "cats": {"type:CATS": 0}}
    assert prune_events(db, max_age=0, max_rows=2, wants=wants, now=T0 + 99) == Pruned(3, 0)
    assert _seqs(db) == list(range(4, 12))
    # A recipient of other channels holds back nothing it does not listen to.
    wants = {"afad": {"type:AFAD": 10}, "cats": {"type:CATS": 0}}
    prune_events(db, max_age=None, max_rows=2, wants=wants, now=T0 + 99)
    assert _seqs(db) == [10, 11]


def test_the_hard_bound_prunes_past_a_cursor_and_records_the_loss(
    db: sqlite_utils.Database,
) -> None:
    _events(db, 10)
    wants = {"afad": {"type:AFAD": 2}, "afad-2": {"type:AFAD": 7}, "x": {"type:X": 0}}
    pruned = prune_events(db, max_age=None, max_rows=None, hard_rows=4, wants=wants, now=T0 + 50)
    assert pruned == Pruned(6, 4)  # events 1-6 went; 3-6 had not reached afad
    assert _seqs(db) == [7, 8, 9, 10]
    (loss,) = [r for r in ledger_rows(db, 5) if r["kind"] == "dropped"]
    assert (loss["identity"], loss["first_seq"], loss["last_seq"], loss["detail"]) == (
        "afad", 3, 6, "retention",
    )
    assert loss["at"] == T0 + 50
    # The record of a loss outlives its events; a second prune records only what
    # it takes itself, from where the log starts now.
    _events_after = [row(s, at=T0 + s) for s in range(11, 14)]
    commit(db, _events_after, {}, [])
    pruned = prune_events(db, max_age=None, max_rows=None, hard_rows=4, wants=wants, now=T0 + 60)
    assert pruned == Pruned(3, 3)
    losses = [
        (r["identity"], r["first_seq"], r["last_seq"])
        for r in db.query("SELECT * FROM ledger WHERE kind = 'dropped' ORDER BY id")
    ]
    assert losses == [("afad", 3, 6), ("afad", 7, 9), ("afad-2", 8, 9)]
    assert storage.first_seq(db) == 10


def test_keep_newest_keeps_that_many_reading_only_the_ends_of_the_key(
    db: sqlite_utils.Database,
) -> None:
    """The message log's retention (storage/logs.py) the same way as the events'."""
    conn = db.conn
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)")
    conn.executemany("INSERT INTO t (x) VALUES (?)", [("x",)] * 50)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        assert keep_newest(conn, "t", "id", 60) == 0
        assert keep_newest(conn, "t", "id", 20) == 30
    finally:
        conn.set_trace_callback(None)
    assert [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")] == list(range(31, 51))
    for sql in statements:
        plan = [r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()]
        assert not any(step.startswith("SCAN t") for step in plan), (sql, plan)
