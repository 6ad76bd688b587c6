"""Tests for storage.logs: redaction, batched writes under each policy, retention, queries.

Every test opens a real SQLite file under pytest's tmp_path.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import sqlite_utils
from hypothesis import given
from hypothesis import strategies as st

from storage.db import iso, open_db
from storage.events import EventRow, commit
from storage.logs import (
    ConnectionClosed,
    ConnectionHeartbeat,
    ConnectionOpened,
    LogPolicy,
    LogRow,
    MessageLogged,
    _stored_payload,
    close_dangling,
    prune,
    recent_connections,
    recent_messages,
    redact,
    write_batch,
)

NOW = 1_795_000_000.0
SECRET_PAYLOAD = '{"type":"auth","token":"s3cret","data":{"password":"hunter2","n":1}}'


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite_utils.Database]:
    database = open_db(tmp_path / "catsock.db")
    yield database
    database.close()


def _message(payload: str | None = SECRET_PAYLOAD, *, at: float = NOW, **kw: Any) -> MessageLogged:
    fields: dict[str, Any] = {
        "direction": "in",
        "type": "auth",
        "message_id": "m1",
        "connection_id": "c1",
        "size": len(payload or ""),
        "payload": payload,
        "at": at,
    }
    fields.update(kw)
    return MessageLogged(**fields)


def _rows(db: sqlite_utils.Database, table: str) -> list[dict[str, Any]]:
    return list(db.query(f"SELECT * FROM {table} ORDER BY rowid"))


# --- redact -----------------------------------------------------------------------------------


def test_redact_replaces_values_at_any_depth_and_keeps_order() -> None:
    text = json.dumps(
        {
            "z": 1,
            "token": "top",
            "a": {"b": [{"password": {"nested": "object"}, "keep": "me"}], "token": None},
            "m": [1, [2, {"token": 3}]],
        }
    )
    out = redact(text, frozenset({"token", "password"}))
    assert json.loads(out, object_pairs_hook=list) == [
        ("z", 1),
        ("token", "[redacted]"),
        (
            "a",
            [
                ("b", [[("password", "[redacted]"), ("keep", "me")]]),
                ("token", "[redacted]"),
            ],
        ),
        ("m", [1, [2, [("token", "[redacted]")]]]),
    ]
    assert "top" not in out
    assert "object" not in out


def test_redact_leaves_values_named_like_fields_alone() -> None:
    # Only keys are matched: a value that happens to be "token" is ordinary data.
    out = redact('{"kind":"token","list":["password"]}', frozenset({"token", "password"}))
    assert json.loads(out) == {"kind": "token", "list": ["password"]}


def test_redact_matches_escaped_keys() -> None:
    # \u0074oken decodes to "token": escaping the key must not smuggle the value past.
    out = redact('{"\\u0074oken":"s3cret"}', frozenset({"token"}))
    assert json.loads(out) == {"token": "[redacted]"}


@pytest.mark.parametrize(
    "text", ["", "not json", "{", '{"a":1,}', "[1 2]", "NaN", '"\\ud800"', "\ud800", "{}{}"]
)
def test_redact_unparseable_input(text: str) -> None:
    assert redact(text, frozenset({"token"})) == "[unparseable]"


def test_redact_non_str_input_does_not_raise() -> None:
    assert redact(cast(str, None), frozenset({"token"})) == "[unparseable]"


@pytest.mark.parametrize("depth", [200, 600, 5000])
def test_redact_deep_nesting_never_raises(depth: int) -> None:
    text = "[" * depth + '{"token":"s3cret"}' + "]" * depth
    out = redact(text, frozenset({"token"}))
    assert "s3cret" not in out
    if depth == 200:
        assert out.endswith('{"token":"[redacted]"}' + "]" * depth)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16)
)
FIELD_NAMES = ["token", "password", "secret"]
json_keys = st.sampled_from([*FIELD_NAMES, "a", "b", "data"]) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(json_keys, children, max_size=5)
    ),
    max_leaves=20,
)


def _expected(value: Any, fields: frozenset[str]) -> Any:
    """`value` redacted, with objects as lists of pairs so that key order is compared too."""
    if isinstance(value, dict):
        return [
            (key, "[redacted]" if key in fields else _expected(item, fields))
            for key, item in value.items()
        ]
    if isinstance(value, list):
        return [_expected(item, fields) for item in value]
    return value


def _values_under(parsed: Any, fields: frozenset[str]) -> Iterator[Any]:
    if isinstance(parsed, list):
        for item in parsed:
            if isinstance(item, tuple):
                key, value = item
                if key in fields:
                    yield value
                yield from _values_under(value, fields)
            else:
                yield from _values_under(item, fields)


@given(
    document=st.dictionaries(json_keys, json_values, max_size=6),
    fields=st.frozensets(st.sampled_from(FIELD_NAMES)),
    ensure_ascii=st.booleans(),
)
def test_redact_property(
    document: dict[str, Any], fields: frozenset[str], ensure_ascii: bool
) -> None:
    out = redact(json.dumps(document, ensure_ascii=ensure_ascii), fields)
    parsed = json.loads(out, object_pairs_hook=list)  # valid JSON, objects as ordered pairs
    assert parsed == _expected(document, fields)
    assert all(value == "[redacted]" for value in _values_under(parsed, fields))


# --- write_batch ------------------------------------------------------------------------------


def test_write_batch_full_stores_redacted_payload(db: sqlite_utils.Database) -> None:
    write_batch(db, [_message()], policy=LogPolicy.FULL, redact_fields=frozenset({"password"}))
    [row] = _rows(db, "messages")
    assert row == {
        "id": 1,
        "direction": "in",
        "type": "auth",
        "message_id": "m1",
        "connection_id": "c1",
        "size": len(SECRET_PAYLOAD),
        "payload": '{"type":"auth","token":"s3cret","data":{"password":"[redacted]","n":1}}',
        "created_at": iso(NOW),
    }


def test_write_batch_full_without_fields_stores_payload_verbatim(
    db: sqlite_utils.Database,
) -> None:
    payload = '{ "spaced" : true }'
    write_batch(db, [_message(payload)], policy=LogPolicy.FULL, redact_fields=frozenset())
    assert _rows(db, "messages")[0]["payload"] == payload


def test_write_batch_metadata_drops_payload(db: sqlite_utils.Database) -> None:
    write_batch(db, [_message()], policy=LogPolicy.METADATA, redact_fields=frozenset())
    [row] = _rows(db, "messages")
    assert row["payload"] is None
    assert (row["type"], row["size"], row["message_id"]) == ("auth", len(SECRET_PAYLOAD), "m1")


def test_write_batch_off_skips_messages_but_keeps_connections(db: sqlite_utils.Database) -> None:
    rows: list[LogRow] = [
        ConnectionOpened("c1", "BOT", "bot-1", "10.0.0.1:5000", NOW),
        _message(),
        ConnectionClosed("c1", NOW + 1, 1000, "bye"),
    ]
    write_batch(db, rows, policy=LogPolicy.OFF, redact_fields=frozenset())
    assert _rows(db, "messages") == []
    [conn] = _rows(db, "connections")
    assert (conn["id"], conn["close_code"]) == ("c1", 1000)


def test_write_batch_connection_lifecycle_in_one_batch(db: sqlite_utils.Database) -> None:
    rows: list[LogRow] = [
        ConnectionOpened("c1", "BOT", "bot-1", "10.0.0.1:5000", NOW),
        ConnectionHeartbeat("c1", NOW + 30),
        ConnectionOpened("c2", "APP", None, None, NOW + 1),
        ConnectionHeartbeat("c1", NOW + 60),
        ConnectionClosed("c1", NOW + 61.5, 1001, "going away"),
    ]
    write_batch(db, rows, policy=LogPolicy.FULL, redact_fields=frozenset())
    assert _rows(db, "connections") == [
        {
            "id": "c1",
            "client_type": "BOT",
            "identity": "bot-1",
            "remote_addr": "10.0.0.1:5000",
            "connected_at": iso(NOW),
            "last_heartbeat_at": iso(NOW + 60),
            "disconnected_at": iso(NOW + 61.5),
            "close_code": 1001,
            "close_reason": "going away",
        },
        {
            "id": "c2",
            "client_type": "APP",
            "identity": None,
            "remote_addr": None,
            "connected_at": iso(NOW + 1),
            "last_heartbeat_at": None,
            "disconnected_at": None,
            "close_code": None,
            "close_reason": None,
        },
    ]


def test_write_batch_duplicate_open_does_not_lose_the_batch(db: sqlite_utils.Database) -> None:
    write_batch(
        db,
        [ConnectionOpened("c1", "BOT", "a", None, NOW)],
        policy=LogPolicy.FULL,
        redact_fields=frozenset(),
    )
    write_batch(
        db,
        [ConnectionOpened("c1", "BOT", "b", None, NOW + 1), _message()],
        policy=LogPolicy.FULL,
        redact_fields=frozenset(),
    )
    assert [row["identity"] for row in _rows(db, "connections")] == ["a"]
    assert len(_rows(db, "messages")) == 1


def test_write_batch_is_one_transaction(db: sqlite_utils.Database) -> None:
    broken = _message(type=cast(str, None))  # violates messages.type NOT NULL
    rows: list[LogRow] = [ConnectionOpened("c1", "BOT", None, None, NOW), _message(), broken]
    with pytest.raises(sqlite3.IntegrityError):
        write_batch(db, rows, policy=LogPolicy.FULL, redact_fields=frozenset())
    assert _rows(db, "connections") == []
    assert _rows(db, "messages") == []
    assert not db.conn.in_transaction


# --- prune ------------------------------------------------------------------------------------


def _seed_messages(db: sqlite_utils.Database, ages: list[float]) -> None:
    rows = [_message(f'{{"n":{i}}}', at=NOW - age) for i, age in enumerate(ages)]
    write_batch(db, rows, policy=LogPolicy.FULL, redact_fields=frozenset())


def test_prune_by_age(db: sqlite_utils.Database) -> None:
    _seed_messages(db, [5000, 3601, 3599, 10, 0])
    write_batch(
        db,
        [
            ConnectionOpened("old-closed", None, None, None, NOW - 9000),
            ConnectionClosed("old-closed", NOW - 4000, 1000, None),
            ConnectionOpened("old-open", None, None, None, NOW - 9000),
            ConnectionOpened("recent-closed", None, None, None, NOW - 9000),
            ConnectionClosed("recent-closed", NOW - 100, 1000, None),
        ],
        policy=LogPolicy.FULL,
        redact_fields=frozenset(),
    )
    assert prune(db, max_age=3600, max_rows=None, now=NOW) == 3
    assert [row["payload"] for row in _rows(db, "messages")] == ['{"n":2}', '{"n":3}', '{"n":4}']
    assert [row["id"] for row in _rows(db, "connections")] == ["old-open", "recent-closed"]
    assert prune(db, max_age=3600, max_rows=None, now=NOW) == 0


def test_a_prune_never_walks_a_table(db: sqlite_utils.Database) -> None:
    """Every statement of a prune reads through a key or an index: it runs once a
    minute under the write lock (a walk of 3 million ledger rows took 0.4 s in
    issue 19's soak, and every commit waited)."""
    _seed_messages(db, [5000, 10])
    opened = [ConnectionOpened(f"c{n}", None, None, None, NOW - 9000) for n in range(3)]
    closed = [ConnectionClosed("c0", NOW - 4000, 1000, None)]
    write_batch(db, [*opened, *closed], policy=LogPolicy.FULL, redact_fields=frozenset())
    refused = [_refused(n, NOW - age) for n, age in enumerate((5000, 4000, 10))]
    write_batch(db, refused, policy=LogPolicy.FULL, redact_fields=frozenset())
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    try:
        prune(db, max_age=3600, max_rows=100, now=NOW)
    finally:
        db.conn.set_trace_callback(None)
    assert [row["at"] for row in _rows(db, "refused")] == [iso(NOW - 10)]
    assert [row["id"] for row in _rows(db, "connections")] == ["c1", "c2"]
    reads = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "DELETE"))]
    assert any("refused" in s for s in reads)
    assert any("connections" in s for s in reads)
    for sql in reads:
        plan = [r[-1] for r in db.conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()]
        walks = [step for step in plan if step.startswith("SCAN") and "CONSTANT" not in step]
        assert not walks, (sql, plan)


def test_prune_by_count_keeps_the_newest(db: sqlite_utils.Database) -> None:
    _seed_messages(db, [float(100 - i) for i in range(10)])
    assert prune(db, max_age=None, max_rows=3, now=NOW) == 7
    assert [row["payload"] for row in _rows(db, "messages")] == ['{"n":7}', '{"n":8}', '{"n":9}']
    assert prune(db, max_age=None, max_rows=3, now=NOW) == 0
    assert prune(db, max_age=None, max_rows=50, now=NOW) == 0
    assert prune(db, max_age=None, max_rows=0, now=NOW) == 3
    assert _rows(db, "messages") == []


def test_prune_by_age_and_count(db: sqlite_utils.Database) -> None:
    _seed_messages(db, [500, 400, 300, 20, 10, 0])
    assert prune(db, max_age=350, max_rows=2, now=NOW) == 4
    assert [row["payload"] for row in _rows(db, "messages")] == ['{"n":4}', '{"n":5}']


def test_prune_without_limits_deletes_nothing(db: sqlite_utils.Database) -> None:
    _seed_messages(db, [1e6])
    assert prune(db, max_age=None, max_rows=None) == 0
    assert len(_rows(db, "messages")) == 1


def test_prune_rejects_negative_limits(db: sqlite_utils.Database) -> None:
    with pytest.raises(ValueError, match="max_rows"):
        prune(db, max_age=None, max_rows=-1)
    with pytest.raises(ValueError, match="max_age"):
        prune(db, max_age=-1.0, max_rows=None)


# --- queries ----------------------------------------------------------------------------------


def test_recent_messages_newest_first_with_filters(db: sqlite_utils.Database) -> None:
    spec = [("chat", "in", "c1"), ("chat", "out", "c2"), ("ping", "in", "c1"), ("chat", "in", "c2")]
    rows: list[LogRow] = [
        _message(at=NOW + i, type=kind, direction=direction, connection_id=conn, message_id=f"m{i}")
        for i, (kind, direction, conn) in enumerate(spec)
    ]
    write_batch(db, rows, policy=LogPolicy.METADATA, redact_fields=frozenset())
    assert [r["message_id"] for r in recent_messages(db)] == ["m3", "m2", "m1", "m0"]
    assert [r["message_id"] for r in recent_messages(db, limit=2)] == ["m3", "m2"]
    assert [r["message_id"] for r in recent_messages(db, type="chat")] == ["m3", "m1", "m0"]
    assert [r["message_id"] for r in recent_messages(db, connection_id="c1")] == ["m2", "m0"]
    assert [r["message_id"] for r in recent_messages(db, direction="out")] == ["m1"]
    assert [r["message_id"] for r in recent_messages(db, message_id="m2")] == ["m2"]
    assert recent_messages(db, type="chat", connection_id="c2", direction="in") == [
        {
            "id": 4,
            "direction": "in",
            "type": "chat",
            "message_id": "m3",
            "connection_id": "c2",
            "size": len(SECRET_PAYLOAD),
            "payload": None,
            "created_at": iso(NOW + 3),
            "seq": None,
        }
    ]


def _event(seq: int, at: float, body: str, **kw: Any) -> EventRow:
    fields: dict[str, Any] = {
        "seq": seq,
        "message_id": f"e{seq}",
        "sender": "cats",
        "connection_id": "c1",
        "type": "click",
        "channels": ("type:AFAD",),
        "priority": 3,
        "created_at": at,
        "expires_at": None,
        "body": body,
    }
    fields.update(kw)
    return EventRow(**fields)


def test_published_events_are_read_from_the_event_log_as_inbound_messages(
    db: sqlite_utils.Database,
) -> None:
    body = '{"type":"click","payload":{"ipaddress":"203.0.113.9","owner_id":5}}'
    commit(db, [_event(1, NOW + 1, body), _event(2, NOW + 3, body, connection_id="c2")], {}, [])
    write_batch(
        db,
        [_message(at=NOW, message_id="m0"), _message(at=NOW + 2, message_id="m2", direction="out")],
        policy=LogPolicy.FULL,
        redact_fields=frozenset(),
    )
    rows = recent_messages(db, redact_fields=frozenset({"ipaddress"}))
    assert [(r["message_id"], r["direction"], r["seq"]) for r in rows] == [
        ("e2", "in", 2),
        ("m2", "out", None),
        ("e1", "in", 1),
        ("m0", "in", None),
    ]
    first = rows[2]
    assert first["created_at"] == iso(NOW + 1)
    assert first["size"] == len(body.encode())
    assert first["connection_id"] == "c1"
    assert json.loads(first["payload"])["payload"] == {"ipaddress": "[redacted]", "owner_id": 5}
    # Filters and limits apply to both, and the policy shapes events as it did rows.
    assert [r["message_id"] for r in recent_messages(db, connection_id="c2")] == ["e2"]
    assert [r["message_id"] for r in recent_messages(db, direction="out")] == ["m2"]
    assert [r["message_id"] for r in recent_messages(db, limit=1)] == ["e2"]
    assert recent_messages(db, message_id="e1", policy=LogPolicy.METADATA)[0]["payload"] is None
    assert [r["message_id"] for r in recent_messages(db, policy=LogPolicy.OFF)] == ["m2", "m0"]


def test_recent_connections_newest_first_with_filters(db: sqlite_utils.Database) -> None:
    rows: list[LogRow] = [
        ConnectionOpened("c0", "BOT", "bot-1", None, NOW),
        ConnectionOpened("c1", "APP", "alice", None, NOW + 1),
        ConnectionOpened("c2", "BOT", "bot-2", None, NOW + 2),
        ConnectionOpened("c3", "BOT", "bot-1", None, NOW + 3),
    ]
    write_batch(db, rows, policy=LogPolicy.OFF, redact_fields=frozenset())
    assert [r["id"] for r in recent_connections(db)] == ["c3", "c2", "c1", "c0"]
    assert [r["id"] for r in recent_connections(db, limit=1)] == ["c3"]
    assert [r["id"] for r in recent_connections(db, client_type="BOT")] == ["c3", "c2", "c0"]
    assert [r["id"] for r in recent_connections(db, identity="bot-1")] == ["c3", "c0"]
    assert recent_connections(db, client_type="APP", identity="bot-1") == []


def test_close_dangling_closes_only_rows_left_open(tmp_path: Path) -> None:
    db = open_db(tmp_path / "dangling.db")
    write_batch(
        db,
        [
            ConnectionOpened("open", "CATS", "cats", "127.0.0.1:1", 1.0),
            ConnectionOpened("done", "AFAD", "afad", "127.0.0.1:2", 1.0),
            ConnectionClosed("done", 2.0, 1000, None),
        ],
        policy=LogPolicy.FULL,
        redact_fields=frozenset(),
    )
    assert close_dangling(db, now=3.0) == 1
    rows = {r["id"]: r for r in db["connections"].rows}
    assert rows["open"]["close_reason"] == "gateway restarted"
    assert rows["open"]["disconnected_at"] == iso(3.0)
    assert rows["done"]["close_code"] == 1000
    assert close_dangling(db, now=4.0) == 0


def test_full_policy_stores_untouched_text_when_no_redacted_key_appears(tmp_path: Path) -> None:
    db = open_db(tmp_path / "verbatim.db")
    plain = '{"type": "conversion",  "payload": {"owner_id": 5, "ratio": 1.0}}'
    escaped = '{"payload": {"\\u0069paddress": "10.0.0.1"}}'
    rows = [
        MessageLogged("in", "conversion", "a", "c1", len(plain), plain, NOW),
        MessageLogged("in", "click", "b", "c1", len(escaped), escaped, NOW),
    ]
    write_batch(db, rows, policy=LogPolicy.FULL, redact_fields=frozenset({"ipaddress"}))
    stored = {r["message_id"]: r["payload"] for r in db["messages"].rows}
    assert stored["a"] == plain  # spacing and 1.0 kept: no parse, no re-encode
    assert "10.0.0.1" not in stored["b"]  # an escaped key is still found and redacted


spellings = st.sampled_from(["ipaddress", "useragent"]).flatmap(
    lambda name: st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(name, upper, strict=True))
    )
)


@given(spelling=spellings, depth=st.integers(0, 4))
def test_redaction_matches_keys_in_any_case_at_any_depth(spelling: str, depth: int) -> None:
    secret = "203.0.113.9"
    node: Any = {spelling: secret, "keep": 1}
    for _ in range(depth):
        node = {"inner": [node]}
    text = json.dumps({"type": "click", "payload": node})
    stored = _stored_payload(text, LogPolicy.FULL, frozenset({"ipaddress", "useragent"}))
    assert stored is not None
    assert secret not in stored
    assert '"keep":1' in stored.replace(" ", "")


# --- the refused-event store (storage/refused.py) ------------------------------------------


def _refused(n: int, at: float, body: str | None = '{"n":1,"ipaddress":"203.0.113.9"}') -> Any:
    from storage.refused import EventRefused

    return EventRefused(
        at=at, identity="cats", client_type="CATS", user_id=None, connection_id="c1",
        transport="websocket", reason="RATE_LIMIT_EXCEEDED", detail="rate limit exceeded",
        type="click", message_id=f"m-{n}", size=len(body or ""), body=body,
    )


def test_refused_rows_follow_the_logs_policy_redaction_and_retention(
    db: sqlite_utils.Database,
) -> None:
    from storage.refused import RefusedRetried, list_refused

    fields = frozenset({"IPAddress"})
    write_batch(db, [_refused(0, NOW - 5000), _refused(1, NOW - 10)], policy=LogPolicy.FULL,
                redact_fields=fields)
    write_batch(db, [_refused(2, NOW)], policy=LogPolicy.METADATA, redact_fields=fields)
    write_batch(db, [RefusedRetried(2, NOW + 1, "accepted", 7)], policy=LogPolicy.OFF,
                redact_fields=fields)
    rows = list_refused(db)
    assert [r["message_id"] for r in rows] == ["m-2", "m-1", "m-0"]
    assert rows[1]["body"] == '{"n":1,"ipaddress":"[redacted]"}'
    assert rows[0]["body"] is None  # metadata: the row, not its body
    assert (rows[1]["retried_at"], rows[1]["retry_result"], rows[1]["retry_seq"]) == (
        iso(NOW + 1), "accepted", 7,
    )
    assert [r["message_id"] for r in list_refused(db, since=iso(NOW - 60))] == ["m-2", "m-1"]
    assert prune(db, max_age=3600, max_rows=None, now=NOW) == 1
    assert prune(db, max_age=None, max_rows=1, now=NOW) == 1
    assert [r["message_id"] for r in list_refused(db)] == ["m-2"]
