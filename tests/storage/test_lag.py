"""storage/lag.py: events a recipient has not had, per channel cursor, its own
excluded, counted up to a cap; and what its ledger says (last ack, redeliveries)."""

from __future__ import annotations

from pathlib import Path

import storage


def test_behind_counts_per_channel_excludes_its_own_and_stops_at_the_cap(
    tmp_path: Path,
) -> None:
    db = storage.open_db(tmp_path / "lag.db")
    rows = [
        (1, "a", "cats", "type:AFAD", 10.0),
        (2, "b", "afad", "type:AFAD", 11.0),  # its own: never waited for
        (3, "c", "cats", "user:5", 12.0),
        (4, "d", "cats", "type:CATS", 13.0),  # not on its channels
        (5, "e", "cats", "type:AFAD user:5", 14.0),
    ]
    db.conn.executemany(
        "INSERT INTO events (seq, message_id, sender, type, channels, priority, created_at,"
        " body) VALUES (?, ?, ?, 'conversion', ?, 2, ?, '{}')",
        rows,
    )
    db.conn.commit()
    both = {"type:AFAD": 0, "user:5": 0}
    assert storage.behind(db, both, "afad", 100) == storage.Behind(3, 10.0, False)
    assert storage.behind(db, {"type:AFAD": 1, "user:5": 3}, "afad", 100) == storage.Behind(
        1, 14.0, False
    )
    assert storage.behind(db, {"user:5": 0}, "afad", 100) == storage.Behind(2, 12.0, False)
    assert storage.behind(db, both, "afad", 2) == storage.Behind(2, 10.0, True)
    assert storage.behind(db, {"type:AFAD": 5, "user:5": 5}, "afad", 9) == storage.Behind(
        0, None, False
    )
    assert storage.behind(db, {}, "afad", 9) == storage.Behind(0, None, False)

def test_ledger_summary_counts_events_written_again(tmp_path: Path) -> None:
    db = storage.open_db(tmp_path / "lag.db")
    ledger = [
        storage.LedgerRow("afad", "written", 1, 4, "c1", 100.0, None),
        storage.LedgerRow("afad", "acked", 1, 2, "c1", 101.0, None),
        storage.LedgerRow("afad", "written", 3, 6, "c2", 102.0, None),  # 3 and 4 again
        storage.LedgerRow("cats", "written", 1, 9, "c3", 103.0, None),
    ]
    storage.commit_events(db, [], {}, ledger)
    assert storage.ledger_summary(db, "afad") == storage.LedgerSummary(101.0, 102.0, 2)
    assert storage.ledger_summary(db, "nobody") == storage.LedgerSummary(None, None, 0)
