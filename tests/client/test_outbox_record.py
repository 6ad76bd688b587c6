"""``Outbox.record``: the batch every runtime's settler writes in one transaction."""

from __future__ import annotations

from pathlib import Path

from storage.outbox import Outbox, OutboxStatus, Settlement


def test_record_counts_resends_then_settles(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        for message_id in ("m1", "m2", "m3"):
            outbox.add(message_id, "conversion", "{}")
        outbox.record([Settlement("m1", 7)], retried=["m2"])
        outbox.record([Settlement("m2", error="EVENT_NOT_ALLOWED: no")], retried=["m1", "m3"])
        rows = {row.message_id: row for row in outbox.entries()}
    assert [(m, r.status, r.seq, r.retry_count, r.last_error) for m, r in rows.items()] == [
        ("m1", OutboxStatus.SENT, 7, 0, None),  # SENT before its resend was counted
        ("m2", OutboxStatus.FAILED, None, 1, "EVENT_NOT_ALLOWED: no"),
        ("m3", OutboxStatus.PENDING, None, 1, None),
    ]
