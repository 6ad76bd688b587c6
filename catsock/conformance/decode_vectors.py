"""Checks from the decode vectors (``protocol/vectors``): each vector's frame is
sent by an authenticated client, and the gateway's answer (a refusal, a control
reply, or a published event an observer receives) is what the vector implies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

import attrs

from protocol import DEFAULT_ROUTES, ErrorCode
from protocol.conformance import DecodeVector

from .frames import _fresh_id, _message_id
from .results import _Skip
from .runner import _Check, _Ctx
from .tokens import DEFAULT_MAX_MESSAGE_SIZE

#: The default routing table by event type: who may publish a vector's event, who gets it.
_ROUTES: Final = {route.event_type: route for route in DEFAULT_ROUTES}

#: What an accepted control message gets once authenticated (§7 ACTIVE), ``None``: nothing.
_CONTROL_REPLY: Final[Mapping[str, tuple[str, str | None] | None]] = {
    "auth": ("error", ErrorCode.ALREADY_AUTHENTICATED),
    "auth_success": ("error", ErrorCode.INVALID_MESSAGE),
    "auth_failed": ("error", ErrorCode.INVALID_MESSAGE),
    "ping": ("pong", None),
    "pong": None,
    "error": None,
    # The conformance login negotiates no extensions, so acks are not granted.
    "ack": ("error", ErrorCode.INVALID_MESSAGE),
    "accepted": ("error", ErrorCode.INVALID_MESSAGE),
}


#: Which profile a decode vector belongs to, by a part of its name (first match);
#: the rest are ``strict``. size.json is ``limits`` (catsock's default size).
_PROFILE_BY_NAME: Final = (("ack", "extensions"), ("accepted", "extensions"), ("seq", "extensions"))

#: The section of docs/protocol.md a decode vector pins, by a part of its name
#: (first match), else by its file.
_SECTION_BY_NAME: Final = (
    ("ack", "§10.2"),
    ("accepted", "§10.2"),
    ("seq", "§10.2"),
    ("duplicate", "§4.2"),
    ("not_json", "§4.2"),
    ("deep", "§4.2"),
    ("depth", "§4.2"),
    ("utf8", "§4"),
    ("not_object", "§4"),
    ("type_", "§4"),
    ("envelope", "§3.2"),
    ("event_", "§3.2"),
    ("payload_", "§3.2"),
    ("id_", "§4.3"),
)
_SECTION_BY_FILE: Final = {
    "compat.json": "§11",
    "control.json": "§3.1",
    "events.json": "§3.3",
    "invalid.json": "§4.3",
    "size.json": "§4.1",
}


def decode_vector_profile(vector: DecodeVector) -> str:
    if vector.file == "size.json":
        return "limits"
    return next((p for part, p in _PROFILE_BY_NAME if part in vector.name), "strict")


def _section(vector: DecodeVector) -> str:
    by_name = (s for part, s in _SECTION_BY_NAME if part in vector.name)
    return next(by_name, _SECTION_BY_FILE.get(vector.file, "§12.1"))


def _decode_vector_check(vector: DecodeVector, index: int) -> _Check:
    check = _plain_check(vector, index)
    section = _section(vector)
    if decode_vector_profile(vector) == "limits":
        # The vector pins catsock's default size limit.
        inner = check.run

        async def run_if_default(ctx: _Ctx) -> None:
            if ctx.runner.limits.max_message_size != DEFAULT_MAX_MESSAGE_SIZE:
                raise _Skip(_NOT_DEFAULT)
            await inner(ctx)

        check = attrs.evolve(check, run=run_if_default)
    return attrs.evolve(check, rule=vector.description, section=section)


#: Why a vector pinning a default limit is skipped for a target with other limits.
_NOT_DEFAULT: Final = (
    "the vector assumes catsock's default limits; the limits.* checks cover the target's"
)


def _plain_check(vector: DecodeVector, index: int) -> _Check:
    name = f"vector.{vector.name}"
    if vector.error is not None or vector.type in _CONTROL_REPLY:
        # Refusals and control messages do not depend on the client type: spread
        # them over CATS and AFAD, whose buckets are the largest.
        kind = ("CATS", "AFAD")[index % 2]

        async def run_control(ctx: _Ctx) -> None:
            await _replay_decode_vector(ctx, vector, kind)

        return _Check(name, run_control, (kind,))
    publisher, outcome, observer = _event_plan(vector)
    needs = (publisher,)

    async def run_event(ctx: _Ctx) -> None:
        await _replay_event_vector(ctx, vector, publisher, outcome, observer)

    return _Check(name, run_event, needs)


async def _replay_decode_vector(ctx: _Ctx, vector: DecodeVector, kind: str) -> None:
    await ctx.ensure_budget(kind, 2)
    conn = await ctx.login(kind)
    await conn.send(vector.data())
    if vector.error is not None:
        await conn.expect_error(vector.error)
        if vector.close is not None:
            await conn.expect_closed(vector.close)
            return
        await conn.quiet()  # the connection stays open and nothing else came
        return
    assert vector.type is not None
    reply = _CONTROL_REPLY[vector.type]
    if reply is None:
        await conn.quiet()
    elif reply[0] == "error":
        assert reply[1] is not None
        await conn.expect_error(reply[1])
        await conn.quiet()
    else:
        await conn.expect_type(reply[0])


def _event_plan(vector: DecodeVector) -> tuple[str, str | None, str | None]:
    """Who publishes an accepted event vector, the refusal expected (``None``:
    published) and whose type channel observes it (``None``: nobody we have)."""
    assert vector.type is not None
    route = _ROUTES[vector.type]
    sender = json.loads(vector.data()).get("sender")
    if sender in ("CATS", "AFAD", "DASHBOARD"):
        publisher = sender
        outcome = None if sender in route.senders else ErrorCode.EVENT_NOT_ALLOWED
    else:
        publisher = sorted(route.senders)[0]
        outcome = ErrorCode.SENDER_MISMATCH
    observers = [t for t in route.to_types if t in ("CATS", "AFAD", "DASHBOARD")]
    return publisher, outcome, observers[0] if observers else None


async def _replay_event_vector(
    ctx: _Ctx, vector: DecodeVector, publisher: str, outcome: str | None, observer: str | None
) -> None:
    text = _fresh_id(vector.data())
    assert isinstance(text, str)
    watcher = None
    if outcome is None and observer is not None:
        if ctx.has(observer):
            watcher = await ctx.login(observer, "observer")
        else:
            ctx.notes.append(f"delivery not checked (no {observer} token)")
    await ctx.ensure_budget(publisher, 2)
    conn = await ctx.login(publisher, "publisher")
    await conn.send(text)
    if outcome is not None:
        await conn.expect_error(outcome, message_id=_message_id(text))
    await conn.quiet()
    if watcher is not None:
        await watcher.expect_text(text)
