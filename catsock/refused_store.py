"""Where refused events are kept: the node's SQLite file, or the cluster's Redis.

``RefusedStore`` is what the CLI (``python -m catsock refused``) and the console
(``/api/admin/refused``, the retry) read, and what a cluster node writes:

- ``SqliteRefusedStore``: the ``refused`` table of one database file
  (storage/refused.py); embedded mode, and each node's fallback (below).
- ``RedisRefusedStore``: cluster mode, written by every node, so any node or the
  CLI lists every node's refusals. Keys, under the cluster's hash tag:
  ``{prefix}:refused:next`` the id counter, ``{prefix}:refused`` a sorted set of
  the ids, ``{prefix}:refused:<id>`` a hash with the row's columns. The same
  bounds as the SQLite table: each row expires after ``log.retention_days``, and
  the oldest go beyond ``log.retention_rows`` (trimmed as rows are added).
  ``{prefix}:refused-moved:<mark>`` the id a row of a node's file got when it
  was handed over (``move``, catsock/refused_handover.py), so it is stored once.

Rows come back as the SQLite table's ``SELECT *`` gives them (same keys, ISO
times), whichever store holds them. A Redis that does not answer raises
``LogUnavailable`` (catsock/eventlog).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import trio

import storage
from storage import EventRefused, RefusedRetried
from storage.refused import write_refused

from .eventlog import LogUnavailable
from .lag import read_aside

if TYPE_CHECKING:
    import coredis  # the cluster extra: imported only where a RedisRefusedStore runs

__all__ = ["COLUMNS", "RedisRefusedStore", "RefusedStore", "SqliteRefusedStore"]

#: The refused table's columns, in its order (storage/db.py, migration 6).
COLUMNS = (
    "id", "at", "identity", "client_type", "user_id", "connection_id", "transport", "reason",
    "detail", "type", "message_id", "size", "body", "retried_at", "retry_result", "retry_seq",
)  # fmt: skip
_INTS = frozenset({"id", "size", "retry_seq"})
_RETRY = frozenset({"retried_at", "retry_result", "retry_seq"})
#: How long a moved row's mark lives when rows do not expire (no ``log.retention_days``).
MARK_TTL = 30 * 86400
#: Rows one read of ``find`` fetches from Redis.
PAGE = 500

Filters = dict[str, str | None]


class RefusedStore(Protocol):
    async def add(self, rows: Sequence[EventRefused | RefusedRetried]) -> None:
        """Keep refusals and note retries' outcomes (a retry of an id no longer
        kept is ignored)."""

    async def find(self, *, limit: int, **filters: str | None) -> list[dict[str, Any]]:
        """Newest first; ``filters``: ``since`` (ISO time), ``reason``, ``identity``,
        ``message_id``."""

    async def get(self, id: int) -> dict[str, Any] | None:
        """One row by its id; None if never kept or past retention."""


class SqliteRefusedStore:
    """The ``refused`` table of ``database``, read and written on connections of
    their own (never the log writer's)."""

    def __init__(self, database: str, body_of: Callable[[str | None], str | None]) -> None:
        self.database = database
        self._body_of = body_of

    async def add(self, rows: Sequence[EventRefused | RefusedRetried]) -> None:
        def write(db: Any) -> None:
            with db.conn:
                write_refused(db.conn, rows, self._body_of)

        await read_aside(self.database, write)

    async def find(self, *, limit: int, **filters: str | None) -> list[dict[str, Any]]:
        def read(db: Any) -> list[dict[str, Any]]:
            return storage.list_refused(db, limit=limit, **filters)

        found: list[dict[str, Any]] = await read_aside(self.database, read)
        return found

    async def get(self, id: int) -> dict[str, Any] | None:
        row: dict[str, Any] | None = await read_aside(self.database, storage.get_refused, id)
        return row


# ARGV: max rows, ttl seconds, next key, index key, row prefix; n rows, each as
# m then m field/value pairs; n retries, each as id, retried_at, result, seq.
_ADD = """
local max_rows, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local nextk, index, prefix = ARGV[3], ARGV[4], ARGV[5]
local i = 6
local n = tonumber(ARGV[i]); i = i + 1
for r = 1, n do
  local id = redis.call('INCR', nextk)
  local key = prefix .. id
  local m = tonumber(ARGV[i]); i = i + 1
  local fields = {'id', id}
  for f = 0, 2 * m - 1 do fields[#fields + 1] = ARGV[i + f] end
  i = i + 2 * m
  redis.call('HSET', key, unpack(fields))
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
  redis.call('ZADD', index, id, id)
end
n = tonumber(ARGV[i]); i = i + 1
for r = 1, n do
  local key = prefix .. ARGV[i]
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'retried_at', ARGV[i + 1], 'retry_result', ARGV[i + 2])
    if ARGV[i + 3] ~= '' then redis.call('HSET', key, 'retry_seq', ARGV[i + 3]) end
  end
  i = i + 4
end
"""

# The bounds, kept after every write; needs the locals max_rows, index, prefix.
_TRIM = """
local over = redis.call('ZCARD', index) - max_rows
if over > 0 then
  for _, id in ipairs(redis.call('ZRANGE', index, 0, over - 1)) do
    redis.call('DEL', prefix .. id)
  end
  redis.call('ZREMRANGEBYRANK', index, 0, over - 1)
end
-- Rows that expired leave their ids behind: drop a few of the oldest per call.
for _, id in ipairs(redis.call('ZRANGE', index, 0, 99)) do
  if redis.call('EXISTS', prefix .. id) == 1 then break end
  redis.call('ZREM', index, id)
end
"""
_ADD += _TRIM + "return 0"

# ARGV: max rows, next key, index key, row prefix, mark prefix; n rows, each as
# its mark, its ttl (0: none), its mark's ttl, m, then m field/value pairs. A row
# whose mark exists was moved before and is skipped. Returns how many were stored.
_MOVE = """
local max_rows = tonumber(ARGV[1])
local nextk, index, prefix, marks = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local i = 6
local n = tonumber(ARGV[i]); i = i + 1
local moved = 0
for r = 1, n do
  local mark, ttl, m = marks .. ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 3])
  local mark_ttl = ARGV[i + 2]
  i = i + 4
  if redis.call('EXISTS', mark) == 0 then
    local id = redis.call('INCR', nextk)
    local fields = {'id', id}
    for f = 0, 2 * m - 1 do fields[#fields + 1] = ARGV[i + f] end
    redis.call('HSET', prefix .. id, unpack(fields))
    if ttl > 0 then redis.call('EXPIRE', prefix .. id, ttl) end
    redis.call('SET', mark, id, 'EX', mark_ttl)
    redis.call('ZADD', index, id, id)
    moved = moved + 1
  end
  i = i + 2 * m
end
"""
_MOVE += _TRIM + "return moved"

# ARGV: index key, row prefix, the id to read below (exclusive, or +inf), count.
# Returns id, then the hash's flat field/value list, for each id (empty if expired).
_PAGE = """
local ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[3], '-inf', 'LIMIT', 0, ARGV[4])
local out = {}
for r, id in ipairs(ids) do
  out[r] = {id, redis.call('HGETALL', ARGV[2] .. id)}
end
return out
"""


class RedisRefusedStore:
    """The cluster's refused events. ``client()`` gives the node's coredis pool
    (``RedisEventLog.client``); ``key(name)`` a key under the cluster's hash tag."""

    def __init__(
        self,
        client: Callable[[], coredis.Redis[str]],
        key: Callable[[str], str],
        *,
        body_of: Callable[[str | None], str | None],
        max_age: float,
        max_rows: int,
        timeout: float,
        where: str,
    ) -> None:
        self._client = client
        self._next, self._index, self._prefix = key("refused:next"), key("refused"), key("refused:")
        self._marks = key("refused-moved:")
        self._body_of = body_of
        self._ttl = max(1, math.ceil(max_age)) if math.isfinite(max_age) else 0
        self._max_rows = max(max_rows, 0)
        self._timeout = timeout
        self.where = where

    async def add(self, rows: Sequence[EventRefused | RefusedRetried]) -> None:
        args: list[str | int] = [self._max_rows, self._ttl, self._next, self._index, self._prefix]
        refused = [r for r in rows if isinstance(r, EventRefused)]
        args.append(len(refused))
        for r in refused:
            values = {
                "at": storage.iso(r.at), "identity": r.identity, "client_type": r.client_type,
                "user_id": r.user_id, "connection_id": r.connection_id,
                "transport": r.transport, "reason": r.reason, "detail": r.detail,
                "type": r.type, "message_id": r.message_id, "size": r.size,
                "body": self._body_of(r.body),
            }  # fmt: skip
            pairs = [(k, v) for k, v in values.items() if v is not None]
            args.append(len(pairs))
            for k, v in pairs:
                args += (k, v)
        retried = [r for r in rows if isinstance(r, RefusedRetried)]
        args.append(len(retried))
        for t in retried:
            args += (t.id, storage.iso(t.at), t.result, "" if t.seq is None else t.seq)
        await self._call(_ADD, [self._next, self._index], args)

    async def move(self, rows: Sequence[dict[str, Any]], *, now: float) -> int:
        """Store rows of a node's SQLite table (``SELECT *``, as kept there: body
        already as the log's policy left it) under new ids, every other column as
        it is; returns how many were new. Each row leaves a mark keyed on its
        ``id`` and the columns that never change, so a row moved again (the file
        not yet cleared when the node stopped) is stored once. A row lives on
        for what is left of its ``log.retention_days``."""
        args: list[str | int] = [
            self._max_rows, self._next, self._index, self._prefix, self._marks, len(rows)
        ]  # fmt: skip
        for row in rows:
            ttl = self._ttl and max(1, math.ceil(_time(row["at"], now) + self._ttl - now))
            pairs = [(c, row[c]) for c in COLUMNS[1:] if row.get(c) is not None]
            args += (_mark(row), ttl, ttl or MARK_TTL, len(pairs))
            for k, v in pairs:
                args += (k, v)
        moved: int = await self._call(_MOVE, [self._next, self._index], args)
        return moved

    async def find(self, *, limit: int, **filters: str | None) -> list[dict[str, Any]]:
        since = filters.pop("since", None)
        wanted = {k: v for k, v in filters.items() if v is not None}
        found: list[dict[str, Any]] = []
        below = "+inf"
        while len(found) < limit:
            page = await self._call(_PAGE, [self._index], [self._index, self._prefix, below, PAGE])
            if not page:
                break
            for id_, flat in page:
                below = f"({id_}"
                row = _row(flat)
                if row is None:
                    continue
                if since is not None and row["at"] < since:
                    continue
                if all(row[k] == v for k, v in wanted.items()):
                    found.append(row)
                    if len(found) >= limit:
                        break
        return found

    async def get(self, id: int) -> dict[str, Any] | None:
        flat = await self._call(
            "return redis.call('HGETALL', ARGV[1])", [], [self._prefix + str(id)]
        )
        return _row(flat)

    async def _call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        import coredis.exceptions

        try:
            with trio.fail_after(self._timeout + 1):
                return await self._client().eval(script, keys=keys, args=args)
        except LogUnavailable:
            raise
        except (coredis.exceptions.RedisError, OSError, trio.TooSlowError) as exc:
            why = "no answer in time" if isinstance(exc, trio.TooSlowError) else str(exc)
            raise LogUnavailable(f"cannot reach Redis at {self.where}: {why}") from None


def _mark(row: dict[str, Any]) -> str:
    """A moved row's mark: its node-local id and the columns no retry changes. Two
    files' rows share one only if they agree in every one, time to the millisecond."""
    fixed = [row.get(c) for c in COLUMNS if c not in _RETRY]
    return hashlib.sha256(json.dumps(fixed).encode()).hexdigest()[:32]


def _time(at: object, now: float) -> float:
    """A stored ISO time as a unix time (``now`` if it is not one)."""
    try:
        return datetime.fromisoformat(str(at)).timestamp()
    except ValueError:
        return now


def _row(flat: list[str]) -> dict[str, Any] | None:
    if not flat:
        return None
    stored = dict(zip(flat[::2], flat[1::2], strict=True))
    return {
        c: (int(stored[c]) if c in _INTS else stored[c]) if c in stored else None for c in COLUMNS
    }
