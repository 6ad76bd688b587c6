"""The ``faults`` profile (opt-in): what a durable gateway promises when things
go wrong, checked Jepsen-style from outside. It needs control of the target's
process (``ServerControl``, from ``--server-cmd``) for the kill; the target must
grant ``acks`` and ``resume`` (docs/delivery.md §1).

- ``faults.duplicate_message_id``: the same message_id published twice is
  delivered once (and acknowledged the second time as a duplicate).
- ``faults.slow_consumer``: a recipient that stops reading does not stall
  another recipient of the same events.
- ``faults.recipient_returns``: a recipient that drops mid-stream is replayed,
  on its return, everything published meanwhile.
- ``faults.kill9``: the gateway is killed (SIGKILL by default) while a publisher
  streams; after a restart, every event it had acknowledged reaches the recipient.
"""

from __future__ import annotations

import json
from typing import Final

import trio
import trio_websocket

from .conn import _Msg, _open_stream
from .extensions import ACKS, expect_accepted, granted, seq_of
from .frames import _conversion, _event, _message_id
from .results import _Fail, _Skip
from .runner import _Check, _Ctx

#: Events each streaming check publishes (within CATS's default burst, 1000).
STREAM: Final = 60
#: Events, and their size, the slow consumer is sent: more than a loopback
#: socket's buffers hold, so a gateway writing to it in turn would block.
SLOW_EVENTS: Final = 90
SLOW_EVENT_BYTES: Final = 60_000
#: Seconds between publishes of a stream, so a kill lands mid-stream.
STREAM_GAP: Final = 0.002
RECIPIENT: Final[dict[str, object]] = {"acks": {}, "resume": {}}


def fault_checks() -> list[_Check]:
    return [
        _Check(
            "faults.duplicate_message_id",
            _duplicate,
            ("CATS", "AFAD"),
            rule="an event published twice with the same message_id is delivered once",
            section="§12.5",
        ),
        _Check(
            "faults.slow_consumer",
            _slow_consumer,
            ("CATS", "AFAD"),
            rule="a recipient that stops reading does not stall another recipient",
            section="§12.5",
        ),
        _Check(
            "faults.recipient_returns",
            _recipient_returns,
            ("CATS", "AFAD"),
            rule="a recipient that drops mid-stream gets everything on its return (resume)",
            section="§12.5",
        ),
        _Check(
            "faults.kill9",
            _kill9,
            ("CATS", "AFAD"),
            rule="after the gateway is killed mid-stream and restarted, every event it had "
            "acknowledged (accepted) reaches the recipient",
            section="§12.5",
        ),
    ]


def _numbered(i: int, **extra: object) -> str:
    return _event("conversion", "CATS", {**_conversion(500), "pay_id": i, **extra})


async def _duplicate(ctx: _Ctx) -> None:
    cats = await ctx.login("CATS", "publisher", extensions=ACKS)
    afad = await ctx.login("AFAD", "recipient")
    acks = "acks" in cats.granted
    text, sentinel = _numbered(1), _numbered(2)
    for each in (text, text, sentinel):
        await cats.send(each)
    if acks:
        first, _ = await expect_accepted(cats, text)
        second, duplicate = await expect_accepted(cats, text)
        if not duplicate or second != first:
            raise _Fail(
                f"the second publish was accepted with seq {second}, duplicate {duplicate}; "
                f"expected seq {first}, duplicate true"
            )
    else:
        ctx.notes.append("acks not granted: only the delivery was checked")
    # The sentinel comes after both publishes, so any second copy arrives before it.
    copies = 0
    while True:
        msg = await afad.recv("the sentinel event")
        if isinstance(msg.obj, dict) and msg.obj.get("message_id") == _message_id(sentinel):
            break
        if isinstance(msg.obj, dict) and msg.obj.get("message_id") == _message_id(text):
            copies += 1
    if copies != 1:
        raise _Fail(f"the event published twice was delivered {copies} times")


async def _slow_consumer(ctx: _Ctx) -> None:
    limit = ctx.runner.limits.max_message_size
    size = min(SLOW_EVENT_BYTES, limit - 2_000)
    cats = await ctx.login("CATS", "publisher")
    fast = await ctx.login("AFAD", "reading recipient")
    release = trio.Event()
    await ctx.nursery.start(_hold_not_reading, ctx, "AFAD", release)
    try:
        texts = [_numbered(i, filler="x" * size) for i in range(SLOW_EVENTS)]
        for text in texts:
            await cats.send(text)
        ids = {_message_id(t) for t in texts}
        while ids:
            msg = await fast.recv(f"the {len(ids)} events still due")
            if isinstance(msg.obj, dict):
                ids.discard(msg.obj.get("message_id"))
    finally:
        release.set()
    ctx.notes.append(f"{SLOW_EVENTS * size // 1_000_000} MB reached the reader past the slow one")


async def _hold_not_reading(
    ctx: _Ctx,
    kind: str,
    release: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """An authenticated connection that reads ``auth_success`` and then nothing
    until ``release``: trio-websocket stops reading the socket once its
    one-message queue is full, so the gateway's writes to it back up."""
    target = ctx.runner.target
    stream = await _open_stream(target)
    try:
        async with trio.open_nursery() as inner:
            ws = await trio_websocket.wrap_client_stream(
                inner, stream, target.host_header, target.resource
            )
            token = ctx.runner.tokens[kind]
            auth = {"type": "auth", "token": token, "client_type": kind}
            await ws.send_message(json.dumps(auth))
            reply = json.loads(await ws.get_message())
            if reply.get("type") != "auth_success":
                raise _Fail(f"slow {kind}: expected auth_success, got {reply.get('type')!r}")
            task_status.started()
            await release.wait()
            inner.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


async def _recipient_returns(ctx: _Ctx) -> None:
    cats = await ctx.login("CATS", "publisher", extensions=ACKS)
    granted(cats, "acks")
    afad = await ctx.login("AFAD", "recipient", extensions=RECIPIENT)
    since = _head(afad.granted)
    texts = [_numbered(i) for i in range(STREAM)]
    seen: set[str | None] = set()
    last = since
    for i, text in enumerate(texts):
        await cats.send(text)
        if i == STREAM // 3:
            # Take what has arrived, then drop without a close handshake.
            for msg in await afad.until_barrier():
                seen.add(_message_id(msg.data) if isinstance(msg.data, str) else None)
                last = max(last, seq_of(msg) or last)
            await afad.abort()
    for text in texts:
        await expect_accepted(cats, text)
    back = await ctx.login("AFAD", "returning", extensions={**RECIPIENT, "resume": {"since": last}})
    due = {_message_id(t) for t in texts} - seen
    while due:
        msg = await back.recv(f"the {len(due)} events published while it was away")
        if isinstance(msg.data, str):
            due.discard(_message_id(msg.data))
    ctx.notes.append(f"{STREAM - len(seen)} of {STREAM} events replayed on return")


def _head(extensions: dict[str, object]) -> int:
    grant = extensions.get("resume")
    head = grant.get("head") if isinstance(grant, dict) else None
    if not isinstance(head, int) or isinstance(head, bool):
        raise _Fail(f"the resume grant has no integer head: {grant!r}")
    return head


async def _kill9(ctx: _Ctx) -> None:
    server = ctx.runner.server
    if server is None:
        raise _Skip("needs control of the target's process (--server-cmd)")
    # The recipient only learns where the log stands, and is away during the
    # stream: everything acknowledged must come back from the restarted gateway.
    first = await ctx.login("AFAD", "recipient", extensions=RECIPIENT)
    since = _head(first.granted)
    await first.aclose()
    cats = await ctx.login("CATS", "publisher", extensions=ACKS)
    granted(cats, "acks")
    texts = [_numbered(i) for i in range(STREAM)]
    acked: set[str | None] = set()
    sent = 0
    for text in texts:
        try:
            await cats.send(text)
        except _Fail:
            break  # the kill landed: the rest was never sent
        sent += 1
        await ctx.sleep(STREAM_GAP)
        acked |= _accepted_ids(cats.drain())
        if len(acked) >= STREAM // 3 and server.alive:
            await server.kill()
    if server.alive:
        await server.kill()  # the acknowledgements lag the sends: still mid-stream
    acked |= _accepted_ids(cats.drain())
    ctx.waiting = "the gateway's restart"
    await server.start()
    resume = {**RECIPIENT, "resume": {"since": since}}
    back = await ctx.login("AFAD", "after the restart", extensions=resume)
    due = set(acked)
    while due:
        msg = await back.recv(f"the {len(due)} acknowledged events not yet delivered")
        if isinstance(msg.data, str):
            due.discard(_message_id(msg.data))
    ctx.notes.append(
        f"killed when {len(acked)} of the {sent} events sent were acknowledged; "
        "all of those were delivered after the restart"
    )


def _accepted_ids(messages: list[_Msg]) -> set[str | None]:
    return {
        msg.obj.get("message_id")
        for msg in messages
        if isinstance(msg.obj, dict) and msg.obj.get("type") == "accepted"
    }
