"""Cluster mode's event log: one Redis shared by every gateway node (docs/scaling.md).

Keys (all under one hash tag, ``{prefix}``, so they stay in one slot):

- ``{prefix}:seq`` the cluster-wide counter; ``{prefix}:log`` a stream whose entry
  IDs are ``<seq>-0``, so the stream is the log in seq order;
- ``{prefix}:dedup:<sender>\\n<message_id>`` the seq a publish got, expiring after
  ``delivery.retention_days``: the same message published twice, on one node or on
  two at once, gets one seq;
- ``{prefix}:cursors:<identity>`` a hash ``channel -> seq`` (cursors never move back);
- ``{prefix}:ledger`` a stream of ledger rows (bounded like the log).

A batch (events, cursor moves, ledger rows) is one Lua script, so it is stored
all or nothing and numbered atomically; the publisher is answered after the
script returned (and, with ``cluster.wait_replicas``, after ``WAIT``). Each node
reads the stream back (``follow``, XREAD BLOCK) and fans out everything in seq
order, its own events included. No RESP code here: coredis speaks Redis, on trio
through anyio.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import coredis
import coredis.exceptions
import coredis.retry
import trio

import storage
from catsock.config import ClusterConfig, redacted_url

from . import Committed, LogUnavailable, moved, privacy, reads
from .packing import pack, seq_of, unpack
from .retention import Retained, retain

if TYPE_CHECKING:
    from catsock.groupcommit import GroupCommit

__all__ = ["RedisEventLog"]

logger = logging.getLogger("catsock.eventlog.redis")

#: Milliseconds one XREAD of ``follow`` blocks: how soon a silent outage is seen.
FOLLOW_BLOCK_MS = 500
#: Events one XREAD of ``follow`` or one XRANGE of ``read_after`` returns at most.
READ_COUNT = 1000
#: Seconds between two attempts to reach Redis again.
RECONNECT_DELAY = 0.25


class TooFewReplicas(Exception):
    """Redis ``WAIT`` saw fewer replicas take the batch than ``cluster.wait_replicas``."""


#: What a call to Redis that failed raises (the other shared stores catch these too,
#: with ``LogUnavailable`` for a pool not open).
CALL_ERRORS = (coredis.exceptions.RedisError, OSError, trio.TooSlowError)
_ERRORS = (*CALL_ERRORS, TooFewReplicas)

# ARGV: floor, log maxlen, dedup ttl, ledger maxlen, dedup prefix, cursor prefix,
# then n events (4 values each: sender, message_id, attempt, the rest packed, see
# ``pack``), n cursor moves (3 each), n ledger rows (7 each).
# Returns the seq of each event, negative (-earlier) for a duplicate. The dedup
# key holds "seq attempt": a batch sent again after its answer was lost (same
# attempt) gets its own seqs back, not "duplicate of itself".
_COMMIT = """
local floor = tonumber(ARGV[1])
local maxlen, ttl, ledger_maxlen = ARGV[2], ARGV[3], ARGV[4]
local dedup, cursors = ARGV[5], ARGV[6]
local out = {}
local n = tonumber(ARGV[7])
local base = 8
local keys = {}
for r = 1, n do
  local j = base + (r - 1) * 4
  keys[r] = dedup .. ARGV[j] .. '\\n' .. ARGV[j + 1]
end
-- Which events were published before: one MGET per thousand, not a GET each.
local stored = {}
for from = 1, n, 1000 do
  local part = redis.call('MGET', unpack(keys, from, math.min(n, from + 999)))
  for k = 1, #part do stored[from + k - 1] = part[k] end
end
-- The new ones are numbered with one INCRBY (a repeat within the batch is not new).
local new, seen = 0, {}
for r = 1, n do
  if not stored[r] and not seen[keys[r]] then new = new + 1; seen[keys[r]] = true end
end
local seq = 0
if new > 0 then
  seq = redis.call('INCRBY', KEYS[1], new) - new
  if seq < floor then
    -- Redis lost its data (restarted without AOF): never reuse a seq a node has seen.
    seq = floor
    redis.call('SET', KEYS[1], floor + new)
  end
end
local batch = {}
for r = 1, n do
  local j = base + (r - 1) * 4
  local key, attempt = keys[r], ARGV[j + 2]
  local earlier = stored[r] or batch[key]
  if earlier then
    local at, by = string.match(earlier, '^(%d+) (.*)$')
    if by == attempt then out[r] = tonumber(at) else out[r] = -tonumber(at) end
  else
    seq = seq + 1
    redis.call('XADD', KEYS[2], string.format('%d-0', seq),
      's', ARGV[j], 'm', ARGV[j + 1], 'e', ARGV[j + 3])
    local value = string.format('%d ', seq) .. attempt
    redis.call('SET', key, value, 'EX', ttl)
    batch[key] = value
    out[r] = seq
  end
end
if new > 0 then redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', maxlen) end
local i = base + n * 4
n = tonumber(ARGV[i]); i = i + 1
for r = 1, n do
  local key, channel, seq = cursors .. ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local now = tonumber(redis.call('HGET', key, channel) or '-1')
  if seq > now then redis.call('HSET', key, channel, seq) end
  i = i + 3
end
n = tonumber(ARGV[i]); i = i + 1
for r = 1, n do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ledger_maxlen, '*',
    'i', ARGV[i], 'k', ARGV[i + 1], 'f', ARGV[i + 2], 'l', ARGV[i + 3],
    'n', ARGV[i + 4], 'a', ARGV[i + 5], 'd', ARGV[i + 6])
  i = i + 7
end
return out
"""


class RedisEventLog:
    """The shared log of one cluster. ``open()`` holds its connections: one pool
    for commands, one connection for ``follow``'s blocking reads."""

    shared = True

    def __init__(
        self,
        cluster: ClusterConfig,
        *,
        retention_rows: int,
        retention_days: float,
        patient: bool = True,
    ) -> None:
        self._url = cluster.redis
        # A gateway's reads wait for Redis to come back; a CLI's fail (LogUnavailable).
        self._patient = patient
        self._timeout = cluster.timeout
        self._wait_replicas = cluster.wait_replicas
        self._wait_timeout_ms = cluster.wait_timeout_ms
        tag = "{" + cluster.key_prefix + "}"
        self._tag = tag
        self._seq_key = f"{tag}:seq"
        self._log_key = f"{tag}:log"
        self._ledger_key = f"{tag}:ledger"
        self._dedup_prefix = f"{tag}:dedup:"
        self._cursor_prefix = f"{tag}:cursors:"
        self._maxlen = str(max(retention_rows, 1))
        self._ttl = str(max(1, math.ceil(retention_days * 86400)))
        self._client: coredis.Redis[str] | None = None
        self._follower: coredis.Redis[str] | None = None
        self._script: Any = None
        self._problem: str | None = None
        self.where = redacted_url(self._url)
        # Names this process's publish attempts: a row's seq before the log numbers
        # it is unique within the process (delivery's counter), not across nodes.
        self._node = secrets.token_hex(8)

    @property
    def unavailable(self) -> str | None:
        return self._problem

    def _connect(self, stream_timeout: float) -> coredis.Redis[str]:
        if self._wait_replicas:
            stream_timeout += self._wait_timeout_ms / 1000  # WAIT answers that late
        return coredis.Redis.from_url(
            self._url,
            decode_responses=True,
            connect_timeout=self._timeout,
            stream_timeout=stream_timeout,
            # A command is sent once: a retried script could run twice (its
            # events would then answer as duplicates of themselves).
            retry_policy=coredis.retry.NoRetryPolicy(),
        )

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[object]:
        client = self._connect(self._timeout)
        follower = self._connect(self._timeout + FOLLOW_BLOCK_MS / 1000)
        async with client, follower:
            self._client, self._follower = client, follower
            self._script = client.register_script(_COMMIT)
            try:
                yield self
            finally:
                self._client = self._follower = self._script = None

    async def probe(self) -> str | None:
        try:
            with trio.fail_after(self._timeout + 1):
                async with self._connect(self._timeout) as client:
                    try:
                        await client.ping()
                    except _ERRORS as exc:
                        return f"cannot reach Redis at {self.where}: {_why(exc)}"
        except Exception as exc:  # the client's task group wraps what it raises
            return f"cannot reach Redis at {self.where}: {_why(exc)}"
        return None

    def _redis(self) -> coredis.Redis[str]:
        if self._client is None:
            raise LogUnavailable("the Redis event log is not open")
        return self._client

    @property
    def client(self) -> coredis.Redis[str]:
        """The command pool, for the other shared stores of cluster mode (tokens,
        presence, ...) so a node keeps one pool; LogUnavailable while not open."""
        return self._redis()

    @property
    def node(self) -> str:
        """This process's random name among the cluster's nodes."""
        return self._node

    def key(self, name: str) -> str:
        """The cluster's key ``name``, under its hash tag (``{prefix}:name``)."""
        return f"{self._tag}:{name}"

    async def head(self) -> int:
        last = await self._guarded(functools.partial(moved.backward, self, None, None, 1))
        return seq_of(str(last[0].identifier)) if last else 0

    async def commit(
        self,
        commits: GroupCommit,
        rows: Sequence[storage.EventRow],
        cursors: Mapping[tuple[str, str], int],
        ledger: Sequence[storage.LedgerRow],
        floor: int,
    ) -> Committed:
        args: list[str | int | float] = [
            floor, self._maxlen, self._ttl, self._maxlen, self._dedup_prefix,
            self._cursor_prefix, len(rows),
        ]  # fmt: skip
        for e in rows:
            args += (e.sender, e.message_id, f"{self._node}.{e.seq}", pack(e))
        args.append(len(cursors))
        for (identity, channel), seq in cursors.items():
            args += (identity, channel, seq)
        args.append(len(ledger))
        for row in ledger:
            args += (
                row.identity, row.kind, row.first_seq, row.last_seq, row.connection_id or "",
                repr(row.at), row.detail or "",
            )  # fmt: skip
        what = f"commit of {len(rows)} events to Redis"
        try:
            self._redis()
            seqs = await commits.write_async(self._run_script, args, rows=len(rows), what=what)
        except _ERRORS as exc:
            self._down(exc)
            raise LogUnavailable(self._problem) from None
        return Committed({}, seqs)

    async def _run_script(self, args: list[str | int | float]) -> list[int]:
        keys = [self._seq_key, self._log_key, self._ledger_key]
        with trio.fail_after(self._timeout + 1 + self._wait_timeout_ms / 1000):
            if not self._wait_replicas:
                seqs = await self._script(keys=keys, args=args)
                return [int(s) for s in seqs]
            # coredis sends WAIT after the script, in this task only.
            replicated = self._redis().ensure_replication(
                self._wait_replicas, self._wait_timeout_ms
            )
            try:
                with replicated:
                    seqs = await self._script(keys=keys, args=args)
            except coredis.exceptions.ReplicationError as exc:
                raise TooFewReplicas(
                    f"fewer than {self._wait_replicas} replicas have the batch after"
                    f" {self._wait_timeout_ms} ms (cluster.wait_replicas): {exc}"
                ) from None
        return [int(s) for s in seqs]

    async def load_cursors(self, identity: str) -> dict[str, int]:
        key = self._cursor_prefix + identity
        stored = await self._guarded(lambda: self._redis().hgetall(key))
        return {channel: int(seq) for channel, seq in stored.items()}

    async def first_seq(self) -> int | None:
        first = await self._guarded(functools.partial(moved.forward, self, 0, None, 1))
        return seq_of(str(first[0].identifier)) if first else None

    async def read_after(
        self,
        positions: Mapping[str, int],
        *,
        upto: int,
        exclude_sender: str | None,
        limit: int,
    ) -> tuple[list[storage.StoredEvent], int]:
        # The same scan as storage.read_after, over the stream.
        start = min(positions.values(), default=upto)
        found: list[storage.StoredEvent] = []
        scanned = start
        while scanned < upto and len(found) < limit:
            entries = await self._guarded(
                functools.partial(moved.forward, self, scanned + 1, upto, max(limit, 256))
            )
            if not entries:
                scanned = upto
                break
            for entry in entries:
                event = _stored(entry)
                scanned = event.seq
                if event.sender != exclude_sender and any(
                    c in positions and event.seq > positions[c] for c in event.channels
                ):
                    found.append(event)
                    if len(found) >= limit:
                        break
        return found, scanned

    async def retain(self, *, max_age: float, max_rows: int, now: float) -> Retained | None:
        """Apply the soft retention limits and record losses (catsock/eventlog/
        retention.py); None if Redis did not answer (the next pass tries again)."""
        try:
            with trio.fail_after(10 * (self._timeout + 1)):
                return await retain(
                    self,
                    max_age=max_age,
                    max_rows=max_rows,
                    ledger_maxlen=int(self._maxlen),
                    now=now,
                )
        except (*_ERRORS, LogUnavailable) as exc:
            # Not an outage of its own: commits and reads notice those.
            logger.info("event log: retention pass skipped: %s", _why(exc))
            return None

    async def strip_personal(self, fields: Collection[str], *, before: float) -> int | None:
        """The personal fields' lifetime (catsock/eventlog/privacy.py): how many
        events changed; None if Redis did not answer or another node ran it."""
        try:
            with trio.fail_after(100 * (self._timeout + 1)):
                return await privacy.strip_personal(self, fields, before=before)
        except (*_ERRORS, LogUnavailable) as exc:
            logger.info("event log: personal-field lifetime skipped: %s", _why(exc))
            return None

    async def start_cursors(self, identity: str, positions: Mapping[str, int]) -> None:
        # HSETNX: a cursor that exists (moved by another node meanwhile) stays.
        key = self._cursor_prefix + identity
        for channel, seq in positions.items():
            await self._guarded(functools.partial(self._redis().hsetnx, key, channel, seq))

    # -- reads for the console and the CLI (catsock/eventlog/reads.py) --------------

    async def recent(
        self, channels: Collection[str], since: float, limit: int, scan: int
    ) -> tuple[list[storage.Recent], bool]:
        return await reads.recent(self, channels, since, limit, scan)

    async def events_by_message_id(self, message_id: str) -> list[storage.EventRow]:
        return await reads.events_by_message_id(self, message_id)

    async def ledger_since(self, at: float, cap: int) -> list[storage.LedgerRow]:
        return await reads.ledger_since(self, at, cap)

    async def ledger_newest(self, count: int) -> list[storage.LedgerRow]:
        return await reads.ledger_newest(self, count)

    async def cursors_all(self) -> dict[str, dict[str, int]]:
        return await reads.cursors_all(self)

    async def behind(
        self, positions: Mapping[str, int], exclude_sender: str, cap: int, scan: int
    ) -> storage.Behind:
        return await reads.behind(self, positions, exclude_sender, cap, scan)

    async def guarded(self, request: Callable[[], Any]) -> Any:
        """``request()`` as the log's own reads run it (``_guarded``)."""
        return await self._guarded(request)

    async def _guarded(self, request: Callable[[], Any]) -> Any:
        """A read (or a login's cursor write): while Redis does not answer, it waits
        and tries again, as a publish waits; a login or a catch-up resumes then.
        Not ``patient`` (the CLI's log): raises LogUnavailable instead."""
        while True:
            try:
                with trio.fail_after(self._timeout + 1):
                    return await request()
            except _ERRORS as exc:
                self._down(exc)
                if not self._patient:
                    raise LogUnavailable(self._problem) from None
            await trio.sleep(RECONNECT_DELAY)

    async def follow(
        self,
        after: int,
        deliver: Callable[[list[storage.StoredEvent]], None],
        state: Callable[[str | None], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        last = after
        task_status.started()
        while True:
            follower = self._follower
            if follower is None:
                raise LogUnavailable("the Redis event log is not open")
            try:
                with trio.fail_after(self._timeout + FOLLOW_BLOCK_MS / 1000 + 1):
                    found = await follower.xread(
                        {self._log_key: f"{last}-0"}, count=READ_COUNT, block=FOLLOW_BLOCK_MS
                    )
                entries = list(found.get(self._log_key) or ()) if found else None
                if entries:
                    # Events moved out of the stream meanwhile (docs/privacy.md) leave
                    # a gap in the seqs: filled from where they went.
                    with trio.fail_after(self._timeout + 1):
                        entries = await moved.fill_gaps(self, last, entries)
            except _ERRORS as exc:
                if self._down(exc):
                    state(self._problem)
                await trio.sleep(RECONNECT_DELAY)
                continue
            if self._problem is not None:
                self._problem = None
                logger.warning("event log: Redis at %s answers again", self.where)
                state(None)
            if entries:
                events = [_stored(entry) for entry in entries]
                last = events[-1].seq
                deliver(events)

    def _down(self, exc: BaseException) -> bool:
        """Note an outage; True if it is news (logged once per outage)."""
        if isinstance(exc, TooFewReplicas):
            problem = f"Redis at {self.where}: {exc}"
        else:
            problem = f"cannot reach Redis at {self.where}: {_why(exc)}"
        news = self._problem is None
        if news:
            logger.warning("event log: %s; publishes wait until it answers", problem)
        self._problem = problem
        return news


def _why(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


def _stored(entry: Any) -> storage.StoredEvent:
    f = entry.field_values
    kind, channels, priority, expires, _, created, body = unpack(f["e"])
    return storage.StoredEvent(
        seq_of(entry.identifier),
        kind,
        f["s"],
        tuple(channels.split()),
        priority,
        float(expires) if expires else None,
        body,
        created,
    )
