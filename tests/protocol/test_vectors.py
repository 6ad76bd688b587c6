"""The conformance vectors of protocol/vectors/ through the real codec and machine.

Decode vectors go through ``Codec().decode``; session vectors drive a
``ConnectionMachine`` with the default ``MachineConfig`` on fake clocks (a step's
``wait`` moves both clocks forward; nothing sleeps). The coverage tests keep the
vectors honest: every error code the codec or the machine can produce, every
message type and every default route has a vector.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import orjson
import pytest

import protocol
from protocol import codec as codec_module
from protocol import machine as machine_module
from protocol import messages as m
from protocol.conformance import (
    MISSING,
    SESSIONS_FILE,
    DecodeVector,
    Expectation,
    ExpectClose,
    ExpectError,
    ExpectHeartbeat,
    ExpectPublish,
    ExpectSend,
    ExpectSubscribe,
    ExpectVerify,
    SessionStep,
    SessionVector,
    load_decode_vectors,
    load_session_vectors,
    lookup,
    vector_files,
)

DECODE = load_decode_vectors()
SESSIONS = load_session_vectors()
CODEC = protocol.Codec()
#: 2025-10-29T12:34:56Z, the timestamp of the seed's examples.
WALL_START = 1761741296.0


def same(actual: Any, expected: Any) -> bool:
    """JSON equality that tells ``1`` from ``true`` and ``"500"`` from ``500``."""
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and actual.keys() == expected.keys()
            and all(same(actual[k], v) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list | tuple)
            and len(actual) == len(expected)
            and all(same(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return type(actual) is type(expected) and actual == expected


def text_of(data: str | bytes) -> str:
    return data.decode("utf-8") if isinstance(data, bytes) else data


# --- decode vectors ----------------------------------------------------------------


@pytest.mark.parametrize("vector", DECODE, ids=lambda v: v.name)
def test_decode_vector(vector: DecodeVector) -> None:
    data = vector.data()
    if not vector.accepts:
        with pytest.raises(protocol.ProtocolError) as info:
            CODEC.decode(data)
        assert info.value.code is vector.error, info.value.detail
        assert info.value.close_code == vector.close
        return
    message = CODEC.decode(data)
    assert message.type == vector.type
    for path, expected in vector.fields.items():
        actual = lookup(message, path)
        assert actual is not MISSING, f"{path} names nothing in {message!r}"
        assert same(actual, expected), f"{path}: {actual!r} != {expected!r}"
    if isinstance(message, m.Event):
        # Forwarding: what the publisher sent is what recipients get.
        assert CODEC.encode(message) == text_of(data)


def test_there_are_enough_decode_vectors() -> None:
    assert len(DECODE) >= 60


def test_vector_names_are_unique_across_all_files() -> None:
    names = [v.name for v in DECODE] + [v.name for v in SESSIONS]
    assert len(names) == len(set(names))


def test_vectors_are_split_by_theme() -> None:
    files = vector_files()
    assert SESSIONS_FILE in files
    assert {"control.json", "events.json", "invalid.json", "compat.json"} <= set(files)
    assert {v.file for v in DECODE} == set(files) - {SESSIONS_FILE}


def _names_used(module: Any, enum_name: str) -> set[str]:
    return set(re.findall(rf"\b{enum_name}\.([A-Z_0-9]+)", inspect.getsource(module)))


def test_every_codec_error_code_has_a_vector() -> None:
    codes = _names_used(codec_module, "ErrorCode")
    assert codes >= {"INVALID_MESSAGE", "UNKNOWN_TYPE", "MESSAGE_TOO_LARGE"}
    covered = {v.error.name for v in DECODE if v.error is not None}
    assert codes <= covered


def test_every_codec_close_code_has_a_vector() -> None:
    closes = _names_used(codec_module, "CloseCode")
    covered = {v.close.name for v in DECODE if v.close is not None}
    assert closes <= covered


def test_every_message_type_has_an_accepting_vector() -> None:
    accepted = {v.type for v in DECODE if v.accepts}
    assert set(protocol.CONTROL_TYPES) <= accepted
    assert set(protocol.EventRegistry()) <= accepted


def test_refused_vectors_cover_every_json_kind_at_top_level() -> None:
    refused = [v for v in DECODE if v.error is protocol.ErrorCode.INVALID_MESSAGE]
    kinds = set()
    for vector in refused:
        try:
            kinds.add(type(orjson.loads(vector.data())).__name__)
        except orjson.JSONDecodeError:
            kinds.add("not JSON")
    assert kinds >= {"list", "str", "int", "NoneType", "bool", "dict", "not JSON"}


# --- session vectors ---------------------------------------------------------------


class FakeClocks:
    def __init__(self) -> None:
        self.elapsed = 0.0

    def monotonic(self) -> float:
        return self.elapsed

    def wall(self) -> float:
        return WALL_START + self.elapsed


def feed(
    machine: protocol.ConnectionMachine, step: SessionStep, vector: SessionVector
) -> list[Any]:
    """What a runtime does with one step: decode, feed, answer a ``Verify``."""
    if step.is_timeout:
        return machine.timeout()
    try:
        message = CODEC.decode(step.data())
    except protocol.ProtocolError as exc:
        return machine.receive_invalid(exc)
    actions: list[Any] = machine.receive(message)
    if any(isinstance(a, protocol.Verify) for a in actions):
        assert step.auth is not None, "an auth step must say how verification ends"
        if step.auth == "accept":
            principal = protocol.Principal(
                identity=f"conformance:{vector.name}",
                client_type=vector.client_type,
                user_id=vector.user_id,
            )
            actions += machine.auth_accepted(principal)
        else:
            actions += machine.auth_rejected(code=step.reject_code)
    else:
        assert step.auth is None, "the step sets 'auth' but the machine verified nothing"
    return actions


def observe(actions: list[Any]) -> list[tuple[Expectation, Any]]:
    """Actions as expectations, each with the JSON sent (or the event published)."""
    out: list[tuple[Expectation, Any]] = []
    pending = list(actions)
    while pending:
        action = pending.pop(0)
        if isinstance(action, protocol.Send) and isinstance(action.message, m.Error):
            close = None
            if pending and isinstance(pending[0], protocol.Close):
                close = pending.pop(0).code
            payload = action.message.payload
            exp: Expectation = ExpectError(
                code=protocol.ErrorCode(payload.error_code),
                close=close,
                retry_after=payload.retry_after,
            )
            out.append((exp, None))
        elif isinstance(action, protocol.Send):
            sent = orjson.loads(CODEC.encode(action.message))
            out.append((ExpectSend(type=action.message.type), sent))
        elif isinstance(action, protocol.Close):
            out.append((ExpectClose(code=action.code), None))
        elif isinstance(action, protocol.Publish):
            out.append((ExpectPublish(channels=action.channels), action.event))
        elif isinstance(action, protocol.Subscribe):
            out.append((ExpectSubscribe(channels=action.channels), None))
        elif isinstance(action, protocol.Verify):
            out.append((ExpectVerify(), None))
        elif isinstance(action, protocol.StartHeartbeat):
            out.append((ExpectHeartbeat(interval=action.interval), None))
        else:  # pragma: no cover - a new action kind needs a vector format
            raise AssertionError(f"unexpected action {action!r}")
    return out


def check(expected: Expectation, observed: Expectation, extra: Any, step: SessionStep) -> None:
    if isinstance(expected, ExpectSend):
        assert isinstance(observed, ExpectSend)
        assert observed.type == expected.type
        for path, value in expected.fields.items():
            assert same(lookup(extra, path), value), f"{path} in {extra!r}"
        for path in expected.absent:
            assert lookup(extra, path) is MISSING, f"{path} present in {extra!r}"
    elif isinstance(expected, ExpectError):
        assert isinstance(observed, ExpectError)
        assert (observed.code, observed.close) == (expected.code, expected.close)
        if expected.retry_after is not None:
            assert observed.retry_after == pytest.approx(expected.retry_after)
    else:
        assert observed == expected
        if isinstance(expected, ExpectPublish):
            assert extra.raw == text_of(step.data()), "the publisher's text is forwarded as is"


def _summary(exp: Expectation) -> str:
    if isinstance(exp, ExpectSend):
        return f"send {exp.type}"
    if isinstance(exp, ExpectError):
        return f"error {exp.code.value} close={exp.close}"
    return repr(exp)


@pytest.mark.parametrize("vector", SESSIONS, ids=lambda v: v.name)
def test_session_vector(vector: SessionVector) -> None:
    clocks = FakeClocks()
    machine = protocol.ConnectionMachine(
        "conn_conformance",
        protocol.MachineConfig(),
        clock=clocks.monotonic,
        wall_clock=clocks.wall,
    )
    for number, step in enumerate(vector.steps):
        clocks.elapsed += step.wait
        for _ in range(step.repeat):
            observed = observe(feed(machine, step, vector))
            where = f"step {number}"
            assert [_summary(o) for o, _ in observed] == [_summary(e) for e in step.expect], where
            for expected, (got, extra) in zip(step.expect, observed, strict=True):
                check(expected, got, extra, step)
            closes = any(
                isinstance(o, ExpectClose) or getattr(o, "close", None) for o, _ in observed
            )
            assert (machine.state is protocol.State.CLOSED) == closes, where


def test_there_are_enough_session_vectors() -> None:
    assert len(SESSIONS) >= 12


def _session_expectations() -> list[Expectation]:
    return [e for v in SESSIONS for s in v.steps for e in s.expect]


def test_every_machine_error_code_has_a_session_vector() -> None:
    codes = _names_used(machine_module, "ErrorCode")
    assert codes >= {
        "AUTH_REQUIRED",
        "AUTH_FAILED",
        "SENDER_MISMATCH",
        "EVENT_NOT_ALLOWED",
        "RATE_LIMIT_EXCEEDED",
        "ALREADY_AUTHENTICATED",
        "CONNECTION_TIMEOUT",
    }
    covered = {e.code.name for e in _session_expectations() if isinstance(e, ExpectError)}
    assert codes - NEEDS_AN_EXPIRING_CREDENTIAL <= covered


#: A vector runs with the runner's tokens, which need not expire: expiry and refresh
#: are checked by tests/protocol/test_machine.py, tests/catsock/test_jwt_live.py and,
#: against a live gateway given expiring tokens, catsock/conformance/expiry.py.
NEEDS_AN_EXPIRING_CREDENTIAL = {"TOKEN_EXPIRED"}


def test_every_machine_close_code_has_a_session_vector() -> None:
    closes = _names_used(machine_module, "CloseCode") - NEEDS_AN_EXPIRING_CREDENTIAL
    covered = {
        e.close.name for e in _session_expectations() if isinstance(e, ExpectError) and e.close
    }
    covered |= {e.code.name for e in _session_expectations() if isinstance(e, ExpectClose)}
    assert closes <= covered


def test_every_default_route_is_published_by_a_session_vector() -> None:
    published = set()
    for vector in SESSIONS:
        for step in vector.steps:
            if any(isinstance(e, ExpectPublish) for e in step.expect):
                published.add(CODEC.decode(step.data()).type)
    assert {r.event_type for r in protocol.DEFAULT_ROUTES} <= published
