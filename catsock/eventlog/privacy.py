"""Personal data in cluster mode's Redis: its lifetime, and erasing one person.

The counterparts of storage/privacy.py for the shared log (docs/privacy.md):

- ``strip_personal``: every node runs it with the retention pass. Events older
  than ``privacy.personal_retention_hours`` are moved out of the stream
  (catsock/eventlog/moved.py) without their personal fields, every one of them,
  changed or not, so that the stream's nodes they filled are freed whole
  (a deleted stream entry's bytes stay in its node, in memory and in snapshots,
  until every entry of the node is gone). A lock with a TTL lets one node do a
  pass at a time, and the last seq done (``{prefix}:privacy:stripped``) only
  moves forward, in the script that moves the events: nodes running it at once,
  or one dying half-way, do no harm.
- ``forget``: ``python -m catsock forget`` with ``cluster.redis`` set. It redacts
  the matching events, wherever they are (stream or moved), and the matching
  refused events (catsock/refused_store.py), matching as storage/privacy.py does
  (``storage.privacy.Erasure``).

Refused events' bodies have no lifetime to apply: the personal fields are
"[redacted]" before a body is written to Redis.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs
from coredis.response.types import StreamEntry
from coredis.tokens import PureToken

from protocol.privacy import Projection, fold, may_contain, project
from storage.privacy import STRIP_BATCH, Erasure

from . import moved
from .packing import SEP, seq_of, unpack
from .retention import last_created_before

if TYPE_CHECKING:
    from .redis import RedisEventLog

__all__ = ["ForgetIncomplete", "ForgottenShared", "forget", "strip_personal"]

#: Entries one read and one moving script handle.
PAGE = 500
#: Seconds a node holds the lifetime's lock at most (if it dies, another takes over).
LOCK_TTL = 300
#: Times ``forget`` reads an event again that moved while it was redacting it.
RETRIES = 5

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: the refused row. ARGV: the body read, the body to write. Written only if
# the row is still there with that body (it may have expired meanwhile).
_REDACT_REFUSED = """
if redis.call('HGET', KEYS[1], 'body') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'body', ARGV[2])
return 1
"""


def _with_body(packed: str, body: str) -> str:
    # The body is the last packed field and never holds the separator raw.
    return packed.rpartition(SEP)[0] + SEP + body


def _move_of(entry: StreamEntry, stream: bool, body: str) -> moved.Move:
    seq, fields = seq_of(entry.identifier), entry.field_values
    new = {**fields, "e": _with_body(str(fields["e"]), body)}
    return seq, "" if stream else moved.member(seq, fields), moved.member(seq, new)


async def strip_personal(
    log: RedisEventLog, fields: Iterable[str], *, before: float, batch: int = STRIP_BATCH
) -> int | None:
    """Move the events created before ``before`` out of the stream without ``fields``
    (any case, any depth); how many changed, or None if another node holds the
    pass. At most ``batch`` events a call, as the embedded prune."""
    folded = fold(fields)
    if not folded:
        return 0
    client, lock = log.client, log.key("privacy:lock")
    if not await client.set(lock, log.node, condition=PureToken.NX, ex=LOCK_TTL):
        return None
    try:
        return await _strip(log, Projection(deny=folded), before, batch)
    finally:
        await client.eval(_UNLOCK, keys=[lock], args=[log.node])


async def _strip(log: RedisEventLog, projection: Projection, before: float, batch: int) -> int:
    client, stream = log.client, log.key("log")
    mark = int(await client.get(log.key(moved.MARK)) or 0)
    first = await client.xrange(stream, f"{mark + 1}-0", "+", count=1)
    last = await client.xrevrange(stream, "+", "-", count=1)
    if not first or not last:
        return 0
    lo, hi = seq_of(first[0].identifier), seq_of(last[0].identifier)
    upto = await last_created_before(log, lo, hi, before, stream_only=True)
    if upto is None:
        return 0
    upto = min(upto, lo - 1 + batch)  # from the first event left: trimmed seqs cost nothing
    changed = 0
    while lo <= upto:
        entries = list(await client.xrange(stream, f"{lo}-0", f"{upto}-0", count=PAGE))
        moves = []
        for entry in entries:
            body = unpack(str(entry.field_values["e"]))[6]
            stripped = body
            if may_contain(body, projection.deny):
                stripped = project(body, projection)
            changed += stripped is not body
            moves.append(_move_of(entry, True, stripped))
        done = len(entries) < PAGE
        lo = upto + 1 if done else seq_of(entries[-1].identifier) + 1
        # What another node (or forget) moved meanwhile was stripped there: skipped.
        await moved.move(log, moves, mark=lo - 1)
    return changed


class ForgetIncomplete(Exception):
    """Some events kept moving (other passes redacting them) while forget ran."""


@attrs.frozen
class ForgottenShared:
    """What ``forget`` redacted in Redis."""

    events: int
    refused: int


async def forget(log: RedisEventLog, erasure: Erasure) -> ForgottenShared:
    """Redact every event of the log and every refused event in Redis that names
    the person (as ``storage.forget`` does in the file)."""
    events = 0
    lo = 0
    while True:
        # The stream and the moved events, in seq order, a page at a time.
        entries = await moved.forward(log, lo, None, PAGE)
        if not entries:
            break
        stream = {e.identifier for e in await _stream_part(log, entries)}
        moves = []
        for entry in entries:
            new = _forgotten(erasure, entry)
            if new is not None:
                events += 1
                if new != unpack(str(entry.field_values["e"]))[6]:
                    moves.append(_move_of(entry, entry.identifier in stream, new))
        await _move_all(log, erasure, moves)
        lo = seq_of(entries[-1].identifier) + 1
    return ForgottenShared(events, await _forget_refused(log, erasure))


async def _stream_part(log: RedisEventLog, entries: list[StreamEntry]) -> list[StreamEntry]:
    """Which of ``entries`` are in the stream (the others were moved)."""
    lo, hi = seq_of(entries[0].identifier), seq_of(entries[-1].identifier)
    return list(await log.client.xrange(log.key("log"), f"{lo}-0", f"{hi}-0", count=len(entries)))


def _forgotten(erasure: Erasure, entry: StreamEntry) -> str | None:
    """The entry's body once forgotten, or None if it does not name the person."""
    _, channels, _, _, _, _, body = unpack(str(entry.field_values["e"]))
    if erasure.routed(channels.split()) or erasure.matches(body):
        return erasure.event(body)
    return None


async def _move_all(log: RedisEventLog, erasure: Erasure, moves: list[moved.Move]) -> None:
    """Do ``moves``; one that raced with another move (the lifetime's, another
    forget) is redone on the event as it now is, until it holds."""
    for _ in range(RETRIES):
        if not moves:
            return
        done = await moved.move(log, moves)
        again = []
        for (seq, _, _), ok in zip(moves, done, strict=True):
            if ok:
                continue
            now = await moved.forward(log, seq, seq, 1)
            if not now:
                continue  # trimmed meanwhile: nothing left to redact
            stream = bool(await _stream_part(log, now))
            new = _forgotten(erasure, now[0])
            if new is not None and new != unpack(str(now[0].field_values["e"]))[6]:
                again.append(_move_of(now[0], stream, new))
        moves = again
    if moves:
        raise ForgetIncomplete(f"{len(moves)} events kept moving while forget ran; run it again")


async def _forget_refused(log: RedisEventLog, erasure: Erasure) -> int:
    client, index, prefix = log.client, log.key("refused"), log.key("refused:")
    count = 0
    below: int | str = "+inf"
    while True:
        ids = await client.zrange(
            index, below, "-inf", sortby=PureToken.BYSCORE, rev=True, offset=0, count=PAGE
        )
        if not ids:
            return count
        for id_ in ids:
            key = prefix + str(id_)
            body, user_id = await client.hmget(key, ["body", "user_id"])
            if body is None:
                continue
            by_user = erasure.user_id is not None and user_id == erasure.user_id
            if by_user or erasure.matches(str(body)):
                new = erasure.text(str(body))
                count += 1
                if new != body:
                    await client.eval(_REDACT_REFUSED, keys=[key], args=[str(body), new])
        below = int(ids[-1]) - 1
