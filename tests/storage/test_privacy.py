"""storage/privacy.py on a real SQLite file: what ``forget`` leaves in the file's bytes.

The gateway-level tests are in tests/catsock/test_forget.py; here the connection is
set up as a SQLite built without SECURE_DELETE would be, to show that ``forget``
zeroes what it frees whatever the build's default.
"""

from __future__ import annotations

import json
from pathlib import Path

import storage

SECRET = "203.0.113.250"


def _body(seq: int, ip: str) -> str:
    payload = {"owner_id": 500, "notes": "n" * 9000, "deep": {"IpAddress": ip}}
    return json.dumps({"type": "click", "message_id": f"m{seq}", "payload": payload})


def test_forget_zeroes_freed_pages_even_when_secure_delete_is_off(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    db = storage.open_db(path)
    try:
        db.conn.execute("PRAGMA secure_delete = OFF")
        rows = [
            storage.EventRow(
                seq, f"m{seq}", "cats", None, "click", ("type:AFAD",), 3, float(seq), None,
                _body(seq, SECRET if seq == 2 else "192.0.2.1"),
            )
            for seq in (1, 2, 3)
        ]  # fmt: skip
        storage.commit_events(db, rows, {}, [])
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert SECRET.encode() in path.read_bytes()
        done = storage.forget(db, ["useragent"], fields=[("ipaddress", SECRET)])
        assert done == storage.Forgotten(1, 0, 0, checkpointed=True)
        assert db.conn.execute("PRAGMA secure_delete").fetchone()[0] == 0  # restored
    finally:
        db.close()
    data = b"".join(f.read_bytes() for f in tmp_path.glob("f.db*"))
    assert SECRET.encode() not in data
    assert b"192.0.2.1" in data


def test_forget_says_when_a_reader_kept_the_wal_from_being_emptied(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    db = storage.open_db(path)
    reader = storage.open_db(path)
    try:
        row = storage.EventRow(
            1, "m1", "cats", None, "click", ("type:AFAD",), 3, 1.0, None, _body(1, SECRET)
        )
        storage.commit_events(db, [row], {}, [])
        reader.conn.execute("BEGIN")
        reader.conn.execute("SELECT count(*) FROM events").fetchone()  # a snapshot held
        db.conn.execute("PRAGMA busy_timeout = 50")
        done = storage.forget(db, [], fields=[("ipaddress", SECRET)])
        assert done == storage.Forgotten(1, 0, 0, checkpointed=False)
        reader.conn.execute("COMMIT")
        assert db.execute_returning_dicts("SELECT body FROM events")[0]["body"].count(SECRET) == 0
    finally:
        reader.close()
        db.close()
