"""Property tests of protocol.codec: round trips, forwarding fidelity, and the
promise that ``decode`` returns a message or raises ``ProtocolError``, nothing else."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import protocol as p
from tests.protocol import strategies as S

MESSAGE_CLASSES = (*S.CONTROL_CLASSES, p.Event)
KNOWN_TYPES = sorted([*p.CONTROL_TYPES, *S.CODEC.registry])


def outcome(data: str | bytes, codec: p.Codec = S.CODEC) -> p.Message | p.ProtocolError:
    """Decode ``data``; a ``ProtocolError`` is returned after checking its
    invariants, any other exception propagates and fails the test."""
    try:
        message = codec.decode(data)
    except p.ProtocolError as exc:
        error = exc
    else:
        assert isinstance(message, MESSAGE_CLASSES)
        return message
    assert type(error.code) is p.ErrorCode
    assert error.close_code is None or type(error.close_code) is p.CloseCode
    assert isinstance(error.detail, str)
    assert error.detail
    assert error.message_id is None or len(error.message_id) <= 128
    return error


# --- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("cls", S.CONTROL_CLASSES, ids=lambda c: c.type)
@given(data=st.data())
def test_control_message_round_trip(cls: type, data: st.DataObject) -> None:
    message = data.draw(S.instances(cls))
    text = S.CODEC.encode(message)
    assert json.loads(text)["type"] == cls.type  # type: ignore[attr-defined]
    assert S.CODEC.decode(text) == message
    assert S.CODEC.decode(text.encode()) == message


@pytest.mark.parametrize("event_type", sorted(S.CODEC.registry))
@given(data=st.data())
def test_event_round_trip(event_type: str, data: st.DataObject) -> None:
    event = data.draw(S.events(event_type))
    assert event.raw == ""
    text = S.CODEC.encode(event)
    decoded = S.CODEC.decode(text)
    assert decoded == event
    assert isinstance(decoded, p.Event)
    assert decoded.raw == text
    # Forwarding never re-encodes: a decoded event encodes to its input.
    assert S.CODEC.encode(decoded) == text
    # The text holds the envelope as built: its fields, in the seed's order.
    wire = json.loads(text)
    assert list(wire) == ["version", "type", "timestamp", "message_id", "sender", "payload"]
    assert wire["type"] == event_type
    assert (wire["version"], wire["timestamp"], wire["message_id"], wire["sender"]) == (
        event.version,
        event.timestamp,
        event.message_id,
        event.sender,
    )
    # Rebuilt from the typed fields (raw ignored), the decoded event gives the same text.
    assert S.CODEC.encode_event(decoded) == text


def test_event_equality_ignores_raw() -> None:
    event = p.Event(
        type="budget_update",
        version="1.0",
        timestamp="t",
        message_id="m",
        sender="AFAD",
        payload=p.BudgetUpdatePayload(adware_id=1, limit=2),
    )
    decoded = S.CODEC.decode(S.CODEC.encode(event))
    assert decoded.raw  # type: ignore[union-attr]
    assert decoded == event


# --- forwarding fidelity -----------------------------------------------------------


@given(S.event_texts())
def test_forwarding_keeps_the_text_byte_for_byte(text: str) -> None:
    event = S.CODEC.decode(text)
    assert isinstance(event, p.Event)
    assert event.raw == text
    assert S.CODEC.encode(event) == text
    from_bytes = S.CODEC.decode(text.encode())
    assert S.CODEC.encode(from_bytes) == text
    # Unknown fields are ignored by the typed view, not refused.
    assert S.CODEC.decode(S.CODEC.encode_event(event)) == event


def test_forwarding_keeps_number_spellings_and_key_order() -> None:
    text = (
        '{"payload": {"x_ratio": 1.0, "usage_percentage": 1, "limit": 1000,'
        ' "current_budget": 950, "adware_id": "100", "x_big": 1E+2,'
        ' "x_url": "https:\\/\\/a\\u00e9"},'
        ' "sender": "CATS", "x_trace": {"b": 1, "a": 1.0}, "type": "budget_alert",'
        ' "message_id": "m-1", "timestamp": "2025-10-29T12:34:56Z", "version": "1.0"}'
    )
    event = S.CODEC.decode(text)
    assert isinstance(event.payload, p.BudgetAlertPayload)  # type: ignore[union-attr]
    assert event.payload.usage_percentage == 1  # type: ignore[union-attr]
    assert S.CODEC.encode(event) == text


# --- only Message or ProtocolError ---------------------------------------------------


@given(st.text())
def test_arbitrary_text(text: str) -> None:
    outcome(text)


@given(st.binary())
def test_arbitrary_bytes(data: bytes) -> None:
    outcome(data)


@given(S.json_values(), st.booleans())
def test_arbitrary_json(value: Any, ascii_only: bool) -> None:
    result = outcome(json.dumps(value, ensure_ascii=ascii_only))
    if not isinstance(value, dict):
        assert isinstance(result, p.ProtocolError)
        assert result.code is p.ErrorCode.INVALID_MESSAGE


FIELD_NAMES = sorted(
    {"version", "timestamp", "message_id", "sender"}
    | {
        name
        for cls in vars(p.messages).values()
        if isinstance(cls, type) and attrs.has(cls)
        for name in attrs.fields_dict(cls)
    }
)


def _fields(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(FIELD_NAMES), values, max_size=8)


VALID_ENVELOPE = {"version": "1.0", "timestamp": "t", "message_id": "m", "sender": "CATS"}


@given(
    st.sampled_from(KNOWN_TYPES),
    st.just(VALID_ENVELOPE) | _fields(S.json_values(max_leaves=4)),
    _fields(S.json_scalars()) | S.json_values(max_leaves=4),
)
def test_message_shaped_json(kind: str, fields: dict[str, Any], payload: Any) -> None:
    """Known types and field names with values of any JSON type."""
    outcome(json.dumps({"type": kind, **fields, "payload": payload}))


@given(S.mutated_frames())
def test_mutated_frames(data: str | bytes) -> None:
    outcome(data)


# --- limits --------------------------------------------------------------------------


@given(S.frame_texts(), st.integers(0, 400), st.booleans())
def test_size_limit_counts_utf8_bytes(text: str, max_size: int, as_bytes: bool) -> None:
    """protocol.md §4.1: the limit counts UTF-8 bytes for text and binary frames alike."""
    data: str | bytes = text.encode() if as_bytes else text
    result = outcome(data, p.Codec(S.CODEC.registry, max_size=max_size))
    if len(text.encode()) > max_size:
        assert isinstance(result, p.ProtocolError)
        assert result.code is p.ErrorCode.MESSAGE_TOO_LARGE
        assert result.close_code is p.CloseCode.MESSAGE_TOO_BIG
    else:
        assert not isinstance(result, p.ProtocolError)


def _nested(depth: int) -> str:
    """A ping whose unknown field makes the whole message ``depth`` levels deep."""
    inner = '{"k":1}' if depth > 1 else "1"
    return '{"type":"ping","x":' + "[" * (depth - 2) + inner + "]" * (depth - 2) + "}"


@given(st.integers(1, 40), st.integers(2, 60))
def test_depth_limit(max_depth: int, depth: int) -> None:
    result = outcome(_nested(depth), p.Codec(max_depth=max_depth))
    if depth > max_depth:
        assert isinstance(result, p.ProtocolError)
        assert result.code is p.ErrorCode.INVALID_MESSAGE
        assert result.close_code is None
    else:
        assert result == p.Ping()


@pytest.mark.parametrize("depth", [p.DEFAULT_MAX_DEPTH + 1, 2_000, 200_000])
def test_very_deep_nesting_is_refused_not_crashed(depth: int) -> None:
    result = outcome(_nested(depth), p.Codec(max_size=10**7))
    assert isinstance(result, p.ProtocolError)
    assert result.code is p.ErrorCode.INVALID_MESSAGE


INVALID_UTF8 = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80"]


@given(S.frame_texts(), st.sampled_from(INVALID_UTF8), st.data())
def test_invalid_utf8_closes_1007(text: str, bad: bytes, data: st.DataObject) -> None:
    raw = text.encode()
    at = data.draw(st.integers(0, len(raw)))
    mangled = raw[:at] + bad + raw[at:]
    assume(len(mangled) <= S.CODEC.max_size)
    result = outcome(mangled)
    assert isinstance(result, p.ProtocolError)
    assert result.code is p.ErrorCode.INVALID_MESSAGE
    assert result.close_code is p.CloseCode.INVALID_DATA


# --- strictness ----------------------------------------------------------------------

ENVELOPE = '"version":"1.0","timestamp":"t","message_id":"m-9","sender":"CATS"'


def _event(event_type: str, payload: str) -> str:
    return f'{{"type":"{event_type}",{ENVELOPE},"payload":{payload}}}'


STRICT_CASES = [
    # bool where an int is required
    (_event("budget_update", '{"adware_id":1,"limit":true}'), "$.payload.limit"),
    (_event("budget_update", '{"adware_id":false,"limit":1}'), "$.payload.adware_id"),
    # "5" where an int is required
    (_event("budget_update", '{"adware_id":1,"limit":"5"}'), "$.payload.limit"),
    # 1.5 (and 1.0) for an int
    (
        _event("tier_reward", '{"tier_id":1,"owner_id":2,"tier_level":1,"adware_id":3,"cost":1.5}'),
        "$.payload.cost",
    ),
    (_event("budget_update", '{"adware_id":1,"limit":1.0}'), "$.payload.limit"),
    # bool for a number
    (
        _event(
            "budget_alert",
            '{"adware_id":1,"current_budget":1,"limit":2,"usage_percentage":true}',
        ),
        "$.payload.usage_percentage",
    ),
    # an array for an object (only the empty array reads as PHP's empty object)
    (_event("adware_update", '{"adware_id":1,"action":"UPDATE","data":[1]}'), "$.payload.data"),
    (_event("budget_update", "[{}]"), "$.payload"),
    ('{"type":"auth","token":"t","client_type":"CATS","extensions":[{}]}', "$.extensions"),
    ('{"type":"error","payload":["x"]}', "$.payload"),
    # a field inside a list element: the path names the element
    (
        _event(
            "conversion",
            '{"pay_id":1,"adware_id":2,"owner_id":3,"cost":4,"sales":5,"state":"s",'
            '"tier_rewards":[{"tier_level":1,"user_id":499,"amount":true}]}',
        ),
        "$.payload.tier_rewards[0].amount",
    ),
    # a missing required field
    (_event("budget_update", '{"adware_id":1}'), "$.payload.limit"),
    ('{"type":"auth","client_type":"CATS"}', "$.token"),
    # the envelope (protocol.md §4, check 8)
    (_event("click", "{}").replace('"1.0"', '"2.0"'), "$.version"),
    (_event("click", "{}").replace('"CATS"', '""'), "$.sender"),
    (_event("click", "{}").replace('"timestamp":"t"', '"timestamp":5'), "$.timestamp"),
    (_event("click", "{}").replace(',"payload":{}', ""), "$.payload"),
    (_event("click", "7"), "$.payload"),
    (_event("click", "{}").replace('"m-9"', '"' + "m" * 129 + '"'), "$.message_id"),
    # seq is the gateway's (docs/delivery.md): a publisher cannot plant one
    (_event("click", "{}").replace('"payload"', '"seq":5,"payload"'), "$.seq"),
    ('{"type":"ack"}', "$.seq"),
    ('{"type":"ack","seq":"5"}', "$.seq"),
]


@pytest.mark.parametrize(
    ("text", "path"), STRICT_CASES, ids=[f"{i}-{path}" for i, (_, path) in enumerate(STRICT_CASES)]
)
def test_strictness(text: str, path: str) -> None:
    result = outcome(text)
    assert isinstance(result, p.ProtocolError)
    assert result.code is p.ErrorCode.INVALID_MESSAGE
    assert result.close_code is None
    assert path in result.detail
    if '"m-9"' in text:
        assert result.message_id == "m-9"


def test_unknown_type_keeps_the_message_id() -> None:
    result = outcome(_event("no_such_event", "{}"))
    assert isinstance(result, p.ProtocolError)
    assert result.code is p.ErrorCode.UNKNOWN_TYPE
    assert result.close_code is None
    assert result.message_id == "m-9"


@pytest.mark.parametrize(
    ("text", "read", "expected"),
    [
        (_event("promo_push", "[]"), lambda m: m.payload, {}),
        (
            _event("adware_update", '{"adware_id":1,"action":"CREATE","data":[]}'),
            lambda m: m.payload.data,
            p.AdwareData(),
        ),
        (
            '{"type":"auth","token":"t","client_type":"C","extensions":[]}',
            lambda m: m.extensions,
            {},
        ),
    ],
    ids=["payload", "nested object", "extensions"],
)
def test_empty_array_reads_as_empty_object(
    text: str, read: Callable[[Any], Any], expected: Any
) -> None:
    """PHP's json_encode writes an empty associative array as ``[]`` (protocol.md §4)."""
    assert read(S.CODEC.decode(text)) == expected


@given(S.repeated_key_frames())
def test_repeated_keys_are_refused(text: str) -> None:
    """protocol.md §4.2: no object, at any depth, may repeat a key."""
    result = outcome(text)
    assert isinstance(result, p.ProtocolError), result
    assert result.code is p.ErrorCode.INVALID_MESSAGE
    assert result.close_code is None
