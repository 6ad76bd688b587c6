"""Events moved out of cluster mode's stream: the log is the stream and one sorted set.

A stream entry cannot be rewritten, and XADD cannot add an ID again, so an event
whose text must change (its personal fields past their lifetime, a person
forgotten: catsock/eventlog/privacy.py) is *moved*: its new text goes to the
sorted set ``{prefix}:log:redacted`` (score: the seq; member: ``member``) and
the stream entry is deleted, in one script (``move``), so a reader never sees
the event in neither place nor in both. Readers take the union:

- ``forward`` and ``fill_gaps`` ask the sorted set only where the stream's seqs
  leave a gap (seqs are dense: a duplicate takes no number), so following the
  head, where nothing is moved, costs what it cost before;
- ``backward`` and ``ends`` (the console's reads, retention, start-up) always
  ask both.

Entries from the set come back as coredis ``StreamEntry`` values, so every
reader unpacks them as it unpacks the stream's (catsock/eventlog/packing.py).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from coredis.response.types import StreamEntry
from coredis.tokens import PureToken

from .packing import seq_of

if TYPE_CHECKING:
    from .redis import RedisEventLog

__all__ = ["MARK", "REDACTED", "Move", "backward", "ends", "fill_gaps", "forward", "member", "move"]

#: The sorted set's name under the cluster's hash tag (``log.key(REDACTED)``).
REDACTED = "log:redacted"

#: One move: the seq, where the event is now (``""``: the stream; else its member
#: in the set), and its new member.
Move = tuple[int, str, str]

# KEYS: stream, set, mark. ARGV: the mark to store ('' for none), then a move as
# three values each. A move whose event is no longer where the caller read it
# (moved or trimmed meanwhile) is not done: 0 in its place of the answer.
_MOVE = """
local out = {}
local i = 2
while i <= #ARGV do
  local seq, old, new = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local there
  if old == '' then
    there = redis.call('XDEL', KEYS[1], seq .. '-0') == 1
  else
    there = redis.call('ZREM', KEYS[2], old) == 1
  end
  if there then
    redis.call('ZADD', KEYS[2], seq, new)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  i = i + 3
end
if ARGV[1] ~= '' then
  local now = tonumber(redis.call('GET', KEYS[3]) or '0')
  if tonumber(ARGV[1]) > now then redis.call('SET', KEYS[3], ARGV[1]) end
end
return out
"""


def member(seq: int, fields: Any) -> str:
    """The set's member for an entry's fields (``s``, ``m``, ``e``); the seq makes
    it unique."""
    return orjson.dumps([seq, fields["s"], fields["m"], fields["e"]]).decode()


def entry(text: str) -> StreamEntry:
    """A member as the stream entry it was."""
    seq, sender, message_id, packed = orjson.loads(text)
    fields: OrderedDict[str | bytes, str | bytes] = OrderedDict(s=sender, m=message_id, e=packed)
    return StreamEntry(f"{seq}-0", fields)


#: The lifetime's mark (catsock/eventlog/privacy.py): every seq up to it is done.
MARK = "privacy:stripped"


async def move(log: RedisEventLog, moves: Sequence[Move], *, mark: int | None = None) -> list[bool]:
    """Do ``moves`` in one script, and raise the lifetime's mark to ``mark``; whether
    each was done (False: the event had moved or gone meanwhile)."""
    args: list[str | int] = ["" if mark is None else mark]
    for seq, old, new in moves:
        args += (seq, old, new)
    keys = [log.key("log"), log.key(REDACTED), log.key(MARK)]
    done: Any = await log.client.eval(_MOVE, keys=keys, args=args)
    return [bool(int(d)) for d in done]


def _merge(a: list[StreamEntry], b: list[StreamEntry], reverse: bool = False) -> list[StreamEntry]:
    return sorted([*a, *b], key=lambda e: seq_of(e.identifier), reverse=reverse)


async def _moved(log: RedisEventLog, lo: float, hi: float, count: int) -> list[StreamEntry]:
    found = await log.client.zrange(
        log.key(REDACTED), _bound(lo), _bound(hi), sortby=PureToken.BYSCORE, offset=0, count=count
    )
    return [entry(str(text)) for text in found]


def _bound(score: float) -> int | str:
    return int(score) if math.isfinite(score) else ("+inf" if score > 0 else "-inf")


def _dense(entries: Sequence[StreamEntry], first: int) -> bool:
    # IDs rise strictly, so the two ends tell whether a seq is missing between them.
    if not entries:
        return True
    return seq_of(entries[0].identifier) == first and seq_of(entries[-1].identifier) == (
        first + len(entries) - 1
    )


async def forward(log: RedisEventLog, lo: int, hi: int | None, count: int) -> list[StreamEntry]:
    """The log's entries with ``lo <= seq <= hi`` (None: to its end), oldest first,
    at most ``count``. One XRANGE; the set is asked only if the seqs have a gap."""
    if hi is not None and hi < lo:
        return []
    top = "+" if hi is None else f"{hi}-0"
    entries = list(await log.client.xrange(log.key("log"), f"{lo}-0", top, count=count))
    full = len(entries) >= count
    last = seq_of(entries[-1].identifier) if entries else lo - 1
    if _dense(entries, lo) and (full or (hi is not None and last >= hi)):
        return entries
    upper: float = last if full else (math.inf if hi is None else hi)
    return _merge(entries, await _moved(log, lo, upper, count))[:count]


async def fill_gaps(
    log: RedisEventLog, after: int, entries: list[StreamEntry]
) -> list[StreamEntry]:
    """``follow``'s read (entries after ``after``) with the moved ones between them."""
    if not entries or _dense(entries, after + 1):
        return entries
    last = seq_of(entries[-1].identifier)
    return _merge(entries, await _moved(log, after + 1, last, last - after))


async def backward(
    log: RedisEventLog, hi: int | None, lo: int | None, count: int
) -> list[StreamEntry]:
    """The log's entries with ``lo <= seq <= hi`` (None: no bound), newest first, at
    most ``count``."""
    top = "+" if hi is None else f"{hi}-0"
    bottom = "-" if lo is None else f"{lo}-0"
    entries = list(await log.client.xrevrange(log.key("log"), top, bottom, count=count))
    floor: float = -math.inf if lo is None else lo
    if len(entries) >= count:
        floor = seq_of(entries[-1].identifier)
    ceiling: float = math.inf if hi is None else hi
    found = await log.client.zrange(
        log.key(REDACTED), _bound(ceiling), _bound(floor), sortby=PureToken.BYSCORE, rev=True,
        offset=0, count=count,
    )  # fmt: skip
    return _merge(entries, [entry(str(t)) for t in found], reverse=True)[:count]


async def ends(log: RedisEventLog) -> tuple[int, int] | None:
    """The log's first and last seq (None: empty)."""
    first = await forward(log, 0, None, 1)
    last = await backward(log, None, None, 1)
    if not first or not last:
        return None
    return seq_of(first[0].identifier), seq_of(last[0].identifier)
