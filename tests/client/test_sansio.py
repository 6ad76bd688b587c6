"""The sans-IO client core (catsock/client/sansio.py) on its own: frames in, frames and
events out, time passed in. No gateway, no event loop."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path
from typing import Any

import pytest

from catsock.backoff import Backoff
from catsock.client import Accepted, AuthError, ConnectError, PublishError
from catsock.client.sansio import (
    Answered,
    BadHandshake,
    ClientProtocol,
    GatewayError,
    Incoming,
    Reconnects,
    Refused,
)

SANSIO = Path(__file__).resolve().parents[2] / "catsock" / "client" / "sansio.py"


def grant(**extensions: Any) -> str:
    return json.dumps({"type": "auth_success", "connection_id": "conn_1", "extensions": extensions})


def event(seq: int, message_id: str = "") -> str:
    return json.dumps({"seq": seq, "version": "1.0", "type": "conversion",
                       "message_id": message_id or f"m{seq}", "sender": "CATS",
                       "payload": {"pay_id": seq}})  # fmt: skip


def connected(**options: Any) -> ClientProtocol:
    proto = ClientProtocol("tok", "AFAD", **options)
    proto.connection_made(grant(acks={}, resume={"since": None, "head": 10}), 0.0)
    return proto


def drain(proto: ClientProtocol, now: float) -> list[str]:
    frames = []
    while (frame := proto.next_frame(now)) is not None:
        frames.append(frame)
    return frames


def test_the_core_does_no_io_and_reads_no_clock() -> None:
    tree = ast.parse(SANSIO.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "asyncio", "socket", "time", "threading", "sqlite3",
                           "websockets", "trio_websocket", "os"}  # fmt: skip


def test_auth_asks_for_the_extensions_and_resumes_after_what_was_handled() -> None:
    proto = ClientProtocol("tok", "AFAD", heartbeat=15.0)
    first = json.loads(proto.auth_frame())
    extensions = {"acks": {}, "resume": {}, "heartbeat": {"interval": 15.0}}
    assert first == {"type": "auth", "token": "tok", "client_type": "AFAD",
                     "extensions": extensions}  # fmt: skip
    proto.connection_made(grant(acks={}, resume={"since": None, "head": 10}), 0.0)
    proto.receive_frame(event(11), 1.0)
    (incoming,) = proto.events()
    assert isinstance(incoming, Incoming)
    proto.buffered(11)
    proto.handled(11, 1.0)
    proto.connection_lost()
    assert json.loads(proto.auth_frame())["extensions"]["resume"] == {"since": 11}
    # Live start without anything handled: resume after the head the grant named.
    fresh = ClientProtocol("tok", "AFAD")
    fresh.connection_made(grant(acks={}, resume={"since": None, "head": 10}), 0.0)
    fresh.connection_lost()
    assert json.loads(fresh.auth_frame())["extensions"]["resume"] == {"since": 10}


def test_auth_answers() -> None:
    proto = ClientProtocol("tok")
    failed = {"type": "error", "payload": {"error_code": "AUTH_FAILED", "error_message": "no"}}
    with pytest.raises(AuthError):
        proto.connection_made(json.dumps(failed), 0.0)
    limit = {"type": "error", "payload": {"error_code": "CONNECTION_LIMIT"}}
    with pytest.raises(Refused):
        proto.connection_made(json.dumps(limit), 0.0)
    with pytest.raises(BadHandshake):
        proto.connection_made('{"type":"pong"}', 0.0)
    g = proto.connection_made(grant(acks={}, heartbeat={"interval": 5}), 0.0)
    assert (g.number, g.connection_id, g.acks, g.heartbeat) == (1, "conn_1", True, 5.0)
    assert (proto.ping_at(), proto.dead_at()) == (5.0, 10.0)


def test_a_replay_of_what_was_buffered_is_dropped_but_not_of_what_was_lost() -> None:
    proto = connected()
    proto.receive_frame(event(11), 0.0)
    proto.receive_frame(event(12), 0.0)  # handed out, never buffered (reader cancelled)
    assert [e.event.seq for e in proto.events() if isinstance(e, Incoming)] == [11, 12]
    proto.buffered(11)
    proto.connection_lost()
    proto.connection_made(grant(acks={}, resume={"since": 10}), 1.0)
    for seq in (11, 12, 13):
        proto.receive_frame(event(seq), 1.0)
    assert [e.event.seq for e in proto.events() if isinstance(e, Incoming)] == [12, 13]


def test_answers_name_their_publish() -> None:
    proto = connected()
    for n in range(3):
        assert proto.track(f"p{n}", "conversion", f"text{n}")
    assert not proto.track("p0", "conversion", "again")  # in flight: the first stands
    assert drain(proto, 0.0) == ["text0", "text1", "text2"]
    proto.receive_frame('{"type":"accepted","message_id":"p0","seq":5}', 0.0)
    proto.receive_frame('{"type":"accepted","message_id":"p1","seq":4,"duplicate":true}', 0.0)
    refusal = {"error_code": "EVENT_NOT_ALLOWED", "error_message": "no", "message_id": "p2"}
    proto.receive_frame(json.dumps({"type": "error", "payload": refusal}), 0.0)
    proto.receive_frame('{"type":"accepted","message_id":"p0","seq":9}', 0.0)  # a resend's
    proto.receive_frame('{"type":"error","payload":{"error_code":"X"}}', 0.0)
    events = proto.events()
    assert [type(e) for e in events] == [Answered, Answered, Answered, GatewayError]
    a0, a1, a2 = (e for e in events if isinstance(e, Answered))
    assert a0.outcome == Accepted("p0", 5)
    assert a0.settlement.seq == 5
    assert a1.outcome == Accepted("p1", 4, duplicate=True)
    assert isinstance(a2.outcome, PublishError)
    assert a2.settlement.error == "EVENT_NOT_ALLOWED: no"
    for message_id in ("p0", "p1", "p2"):
        proto.settled(message_id)
    assert proto.unsettled == 0


def test_the_window_bounds_what_is_on_the_wire() -> None:
    proto = connected(max_in_flight=2)
    for n in range(3):
        proto.track(f"p{n}", "conversion", f"text{n}")
    assert drain(proto, 0.0) == ["text0", "text1"]
    proto.receive_frame('{"type":"accepted","message_id":"p0","seq":1}', 0.0)
    assert drain(proto, 0.0) == ["text2"]


def test_a_reconnect_sends_everything_unanswered_again_in_order_as_retries() -> None:
    proto = connected()
    for n in range(3):
        proto.track(f"p{n}", "conversion", f"text{n}")
    assert drain(proto, 0.0) == ["text0", "text1", "text2"]
    proto.receive_frame('{"type":"accepted","message_id":"p1","seq":1}', 0.0)
    assert proto.take_retried() == []
    proto.connection_lost()
    assert proto.next_frame(0.0) is None  # not connected
    proto.connection_made(grant(acks={}), 1.0)
    assert drain(proto, 1.0) == ["text0", "text2"]
    assert proto.take_retried() == ["p0", "p2"]


def test_a_rate_limit_pauses_resends_and_paces() -> None:
    proto = connected()
    for n in range(3):
        proto.track(f"p{n}", "conversion", f"text{n}")
    assert drain(proto, 0.0) == ["text0", "text1", "text2"]
    limited = {"type": "error", "payload": {"error_code": "RATE_LIMIT_EXCEEDED", "retry_after": 2}}
    proto.receive_frame(json.dumps(limited), 0.0)
    assert proto.events() == []
    assert proto.next_frame(1.0) is None
    assert proto.wake_at() == 2.0
    assert proto.next_frame(2.0) == "text0"
    assert proto.next_frame(3.0) is None  # one frame per retry_after
    assert proto.next_frame(4.0) == "text1"
    assert proto.next_frame(6.0) == "text2"


def test_an_unreachable_log_pauses_and_resends_the_named_event_without_pacing() -> None:
    proto = connected()
    for n in range(3):
        proto.track(f"p{n}", "conversion", f"text{n}")
    assert drain(proto, 0.0) == ["text0", "text1", "text2"]
    payload = {"error_code": "OVERLOADED", "message_id": "p1", "retry_after": 2}
    overloaded = {"type": "error", "payload": {**payload, "error_message": "log unreachable"}}
    proto.receive_frame(json.dumps(overloaded), 0.0)
    assert proto.events() == []  # not a failure: it goes again
    assert proto.next_frame(1.0) is None
    proto.track("p3", "conversion", "text3")
    assert drain(proto, 2.0) == ["text1", "text3"]  # the refused one first, then no pace


def test_acks_are_cumulative_batched_and_delayed() -> None:
    proto = connected(ack_delay=0.5, ack_batch=3)
    proto.handled(11, 0.0)
    proto.handled(12, 0.1)
    assert proto.next_frame(0.2) is None
    assert proto.wake_at() == 0.5
    assert proto.next_frame(0.5) == '{"type":"ack","seq":12}'
    for seq in (13, 14, 15):
        proto.handled(seq, 1.0)
    assert proto.next_frame(1.0) == '{"type":"ack","seq":15}'
    proto.handled(15, 1.0)  # already handled: nothing new to ack
    assert proto.closing_ack() is None
    proto.handled(16, 1.0)
    assert proto.closing_ack() == '{"type":"ack","seq":16}'


def test_without_acks_a_send_is_the_answer() -> None:
    proto = ClientProtocol("tok", acks=False)
    proto.connection_made(grant(), 0.0)
    proto.track("p0", "conversion", "text0")
    assert proto.next_frame(0.0) == "text0"
    (answered,) = proto.events()
    assert isinstance(answered, Answered)
    assert answered.outcome == Accepted("p0", None)


def test_reconnect_schedule() -> None:
    schedule = Reconnects(Backoff(base=2.0, factor=2.0, jitter=0.0), random.Random(1), 3, "ws://x")
    assert schedule.delay() == 0.0
    schedule.failed("refused")
    assert schedule.delay() == 2.0
    schedule.failed("refused")
    assert schedule.delay() == 4.0
    with pytest.raises(ConnectError, match="3 attempts"):
        schedule.failed("refused")
    schedule.connected()
    assert schedule.delay() == 2.0  # every reconnect waits, from the start of the schedule


def test_the_envelope_refuses_what_can_never_be_sent() -> None:
    proto = ClientProtocol("tok", "CATS", max_message_size=200)
    text = proto.envelope("conversion", {"pay_id": 1}, "m1", 0.0)
    assert json.loads(text) == {"version": "1.0", "type": "conversion",
                                "timestamp": "1970-01-01T00:00:00Z", "message_id": "m1",
                                "sender": "CATS", "payload": {"pay_id": 1}}  # fmt: skip
    with pytest.raises(PublishError, match="MESSAGE_TOO_LARGE"):
        proto.envelope("conversion", {"blob": "x" * 300}, "m2", 0.0)
    with pytest.raises(TypeError):
        proto.envelope("conversion", [1], "m3", 0.0)  # type: ignore[arg-type]
