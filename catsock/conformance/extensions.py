"""The ``extensions`` profile's hand-written checks: publish acknowledgements
(``acks``: ``accepted``, ``seq`` on delivered events, ``ack``) and ``resume``, as
docs/delivery.md §1 and docs/protocol.md §10.2 define them. The heartbeat
negotiation is checked by the session vectors. Shared helpers for the fault
checks (``publish_acked``, ``seq_of``) live here too.
"""

from __future__ import annotations

import json
from typing import Any

from .conn import _clip, _Conn, _describe, _Msg
from .frames import _conversion, _event, _message_id
from .results import _Fail
from .runner import _Check, _Ctx

ACKS: dict[str, Any] = {"acks": {}}


def extension_checks() -> list[_Check]:
    return [
        _Check(
            "ext.acks_accepted",
            _acks_accepted,
            ("CATS", "AFAD"),
            rule="with acks, a committed publish gets accepted (its message_id, a seq, "
            "duplicate false); a recipient gets the event with that seq as its first key "
            "and the publisher's text after it; an ack gets no answer",
            section="§10.2",
        ),
        _Check(
            "ext.resume",
            _resume,
            ("CATS", "AFAD"),
            rule="resume grants since and head; a connection resuming since N is replayed "
            "what its channels received after seq N",
            section="§10.2",
        ),
    ]


def seq_of(msg: _Msg) -> int | None:
    seq = msg.obj.get("seq") if isinstance(msg.obj, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def granted(conn: _Conn, name: str) -> Any:
    """The parameters the gateway granted for extension ``name``; fails if it did not."""
    if name not in conn.granted:
        raise _Fail(f"{conn.label}: auth_success did not grant {name!r} (granted {conn.granted})")
    return conn.granted[name]


async def expect_accepted(conn: _Conn, text: str) -> tuple[int, bool]:
    """The ``accepted`` for the publish of ``text``: its seq and duplicate flag."""
    msg = await conn.recv("accepted")
    obj = msg.obj if isinstance(msg.obj, dict) else {}
    if obj.get("type") != "accepted":
        raise _Fail(f"{conn.label}: expected accepted, got {_describe(msg)}")
    if obj.get("message_id") != _message_id(text):
        raise _Fail(f"{conn.label}: accepted names {obj.get('message_id')!r}, not the publish's")
    seq = seq_of(msg)
    if seq is None:
        raise _Fail(f"{conn.label}: accepted has no integer seq: {_clip(msg.data)}")
    duplicate = obj.get("duplicate")
    if not isinstance(duplicate, bool):
        raise _Fail(f"{conn.label}: accepted has no boolean duplicate: {_clip(msg.data)}")
    return seq, duplicate


def check_sequenced(conn: _Conn, msg: _Msg, text: str) -> int:
    """``msg`` is ``text`` delivered with the gateway's seq first (delivery.md §1)."""
    seq = seq_of(msg)
    if seq is None or not isinstance(msg.data, str):
        raise _Fail(f"{conn.label}: expected the event with a seq, got {_describe(msg)}")
    if msg.data != '{"seq":' + str(seq) + "," + text[1:]:
        raise _Fail(
            f"{conn.label}: the event should be the publisher's text after "
            f'{{"seq":{seq}, but is {_clip(msg.data)}'
        )
    return seq


async def _acks_accepted(ctx: _Ctx) -> None:
    cats = await ctx.login("CATS", "publisher", extensions=ACKS)
    afad = await ctx.login("AFAD", "recipient", extensions=ACKS)
    granted(cats, "acks")
    granted(afad, "acks")
    text = _event("conversion", "CATS", _conversion(500, 499))
    await cats.send(text)
    seq, duplicate = await expect_accepted(cats, text)
    if duplicate:
        raise _Fail("a first publish was accepted as a duplicate")
    got = await afad.recv("the conversion")
    if check_sequenced(afad, got, text) != seq:
        raise _Fail(f"the recipient's seq {seq_of(got)} is not the accepted seq {seq}")
    await afad.send(json.dumps({"type": "ack", "seq": seq}))
    await afad.quiet()
    await cats.quiet()


async def _resume(ctx: _Ctx) -> None:
    first = await ctx.login("AFAD", "first", extensions={"resume": {}})
    grant = granted(first, "resume")
    head = grant.get("head") if isinstance(grant, dict) else None
    if not isinstance(head, int) or isinstance(head, bool):
        raise _Fail(f"the resume grant has no integer head: {grant!r}")
    await first.aclose()
    cats = await ctx.login("CATS", "publisher", extensions=ACKS)
    text = _event("conversion", "CATS", _conversion(500, 499))
    await cats.send(text)
    seq, _ = await expect_accepted(cats, text)
    back = await ctx.login("AFAD", "returning", extensions={"resume": {"since": head}})
    grant = granted(back, "resume")
    if not isinstance(grant, dict) or grant.get("since") != head:
        raise _Fail(f"resume since {head} was granted as {grant!r}")
    got = await back.recv("the replayed conversion")
    if check_sequenced(back, got, text) != seq:
        raise _Fail(f"the replayed seq {seq_of(got)} is not the accepted seq {seq}")
    await back.quiet()
