"""Retention of cluster mode's shared log (docs/scaling.md, "Retention in Redis").

The embedded log prunes by age and by rows, but only up to the first event some
durable recipient has not had; past ``retention_hard_rows`` the oldest go anyway
and each recipient that missed some gets a ``dropped`` ledger row (storage/events.py).
In Redis the hard bound is the stream's own ``MAXLEN ~`` (the commit script), and
this pass, run by every node now and then, does the rest:

- **soft limits**: trims the stream (``XTRIM MINID``) to ``retention_rows`` and
  ``retention_days``, but never past the lowest durable cursor of the cluster;
- **recorded losses**: a cursor below the stream's first seq means events it had
  not had are gone (trimmed at the hard bound): one ``dropped`` ledger row
  (detail ``retention``) for the range, written once across all nodes (a marker
  per identity in ``{prefix}:lost``, checked and set in one script).

The log is the stream and the events moved out of it (catsock/eventlog/moved.py):
both are trimmed at the same seq.

Cursors are per channel and the stream is no longer there to say which of the
lost events were routed to whom, so a loss row names the whole range the
identity's lowest cursor had not reached: "up to", where the embedded log is exact.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import attrs
from coredis.tokens import PureToken

from storage.events import RETENTION

from . import moved
from .packing import seq_of, unpack

if TYPE_CHECKING:
    from .redis import RedisEventLog

__all__ = ["Retained", "last_created_before", "retain"]

# KEYS: ledger stream, lost markers. ARGV: ledger maxlen, identity, first, last,
# at, detail. Returns how many seqs it recorded as lost (0: recorded before).
_RECORD_LOSS = """
local recorded = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local last = tonumber(ARGV[4])
if last <= recorded then return 0 end
local first = math.max(tonumber(ARGV[3]), recorded + 1)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
  'i', ARGV[2], 'k', 'dropped', 'f', first, 'l', last, 'n', '', 'a', ARGV[5], 'd', ARGV[6])
redis.call('HSET', KEYS[2], ARGV[2], last)
return last - first + 1
"""


@attrs.frozen
class Retained:
    """What one pass did: events trimmed by the soft limits, seqs recorded lost."""

    trimmed: int
    lost: int


async def retain(
    log: RedisEventLog, *, max_age: float, max_rows: int, ledger_maxlen: int, now: float
) -> Retained:
    """One pass over the shared log (raises what the client raises if Redis fails)."""
    client = log.client
    stream = log.key("log")
    ends = await moved.ends(log)
    cursors = await _lowest_cursors(client, log.key("cursors:"))
    trimmed = 0
    if ends is not None:
        first, last = ends
        await _hard_bound(log, last - ledger_maxlen)  # the log's MAXLEN is the ledger's
        cut = last - max(max_rows, 1)  # seqs are dense: a duplicate takes no number
        aged = await last_created_before(log, first, last, now - max_age)
        if aged is not None:
            cut = max(cut, aged)
        if cursors:
            cut = min(cut, min(cursors.values()))
        cut = min(cut, last - 1)  # the newest stays: the head is never lost
        if cut >= first:
            trimmed = int(await client.xtrim(stream, PureToken.MINID, cut + 1))
            trimmed += int(await client.zremrangebyscore(log.key(moved.REDACTED), 0, cut))
    lost = 0
    oldest = await moved.ends(log)
    if oldest is not None and cursors:
        script = client.register_script(_RECORD_LOSS)
        first = oldest[0]
        for identity, seq in cursors.items():
            if seq < first - 1:
                args: list[str | int] = [
                    ledger_maxlen,
                    identity,
                    seq + 1,
                    first - 1,
                    repr(now),
                    RETENTION,
                ]
                lost += int(await script(keys=[log.key("ledger"), log.key("lost")], args=args))
    return Retained(trimmed, lost)


async def _hard_bound(log: RedisEventLog, cut: int) -> None:
    """Past ``retention_hard_rows`` seqs from the head, the events moved out of the
    stream go too: the commit script's ``MAXLEN`` bounds only the stream. Then the
    stream is cut at the same seq, so the log never has a hole (``MAXLEN`` counts
    entries, and with events moved out it may keep some older than the cut)."""
    client = log.client
    if cut < 1 or not await client.zcard(log.key(moved.REDACTED)):
        return  # nothing moved: ``MAXLEN`` alone bounds the log, as it always did
    await client.zremrangebyscore(log.key(moved.REDACTED), 0, cut)
    await client.xtrim(log.key("log"), PureToken.MINID, cut + 1)


async def _lowest_cursors(client: Any, prefix: str) -> dict[str, int]:
    """Each identity with cursors: the lowest of them (the channel furthest behind)."""
    out: dict[str, int] = {}
    async for key in client.scan_iter(match=prefix + "*", count=1000):
        values = await client.hvals(key)
        if values:
            out[str(key)[len(prefix) :]] = min(int(v) for v in values)
    return out


async def last_created_before(
    log: RedisEventLog, first: int, last: int, cut: float, *, stream_only: bool = False
) -> int | None:
    """The highest seq created before ``cut``, bisecting seq (times rise with seq);
    ``stream_only``: of the entries still in the stream."""
    entry_at = functools.partial(_entry_at, log, stream_only)
    best = None
    lo, hi = first, last
    while lo <= hi:
        mid = (lo + hi) // 2
        found = await entry_at(mid)
        if found is None or found[0] > hi:
            hi = mid - 1
            continue
        seq, at = found
        if at < cut:
            best, lo = seq, seq + 1
        else:
            hi = mid - 1
    return best


async def _entry_at(log: RedisEventLog, stream_only: bool, seq: int) -> tuple[int, float] | None:
    """The first entry at or after ``seq``: its seq and creation time."""
    if stream_only:
        entries = list(await log.client.xrange(log.key("log"), f"{seq}-0", "+", count=1))
    else:
        entries = await moved.forward(log, seq, None, 1)
    if not entries:
        return None
    return seq_of(entries[0].identifier), unpack(str(entries[0].field_values["e"]))[5]
