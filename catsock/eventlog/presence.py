"""Cluster mode's presence: how many connections an identity holds on all nodes.

It makes ``limits.per_identity`` and the "another connection of this identity is
online, so start live" rule hold across nodes (docs/scaling.md). Keys, under the
cluster's hash tag:

- ``{prefix}:presence:<node>``: a hash ``identity -> connections`` this node holds.
  It expires ``PRESENCE_TTL`` seconds after the node's last heartbeat (one every
  ``HEARTBEAT`` seconds): the bound for a node whose machine vanished;
- ``{prefix}:alive:<node>``: a pub/sub channel the node stays subscribed to. Redis
  drops the subscription as soon as the process's connection closes, kill -9
  included, and from then on the node's connections do not count;
- ``{prefix}:nodes``: the nodes that may hold connections; a member whose hash has
  expired is dropped by the next login that looks.

A login is one script (``_TAKE``, one round trip): it sums the identity's count on
the other nodes and, if that plus this node's own count (the node's memory is the
truth about its own connections) is within the limit, stores this node's new
count. Connections that end are written by ``run`` in batches, as absolute counts,
so the order in which writes arrive does not matter.

While Redis does not answer, a login is checked against this node's connections
only (logged once per outage), and what changed meanwhile is written once Redis
answers again.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import trio

from . import LogUnavailable
from .redis import CALL_ERRORS

if TYPE_CHECKING:
    from .redis import RedisEventLog

__all__ = ["HEARTBEAT", "PRESENCE_TTL", "Presence"]

logger = logging.getLogger("catsock.eventlog.presence")

#: Seconds a node's presence outlives its last heartbeat: the bound within which
#: the connections of a node killed with -9 stop counting.
PRESENCE_TTL = 5
#: Seconds between two heartbeats (and at most between a connection's end and
#: the write that says so, while Redis answers).
HEARTBEAT = 1.0
#: After a failed call, logins skip Redis this long (they would each wait for the
#: timeout) and count this node's connections only.
RETRY_AFTER = 1.0

_ERRORS = (*CALL_ERRORS, LogUnavailable)

# KEYS: the node set, this node's hash. ARGV: identity, limit, this node's count
# with the new connection, ttl, the hash prefix, this node, the alive channel
# prefix. Returns {taken, others}. A node counts while its hash lives and it is
# subscribed to its alive channel (a process that died has no subscription).
_TAKE = """
local identity, limit, mine = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local others = 0
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= ARGV[6] then
    local key = ARGV[5] .. node
    if redis.call('EXISTS', key) == 0 then
      redis.call('SREM', KEYS[1], node)
    elseif redis.call('PUBSUB', 'NUMSUB', ARGV[7] .. node)[2] > 0 then
      others = others + tonumber(redis.call('HGET', key, identity) or '0')
    end
  end
end
if others + mine > limit then return {0, others} end
redis.call('HSET', KEYS[2], identity, mine)
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[1], ARGV[6])
return {1, others}
"""

# KEYS: the node set, this node's hash. ARGV: ttl, this node, then identity/count
# pairs (0: none left). Returns whether the hash existed before (0: it expired, or
# Redis lost it: the caller writes every count again).
_WRITE = """
local existed = redis.call('EXISTS', KEYS[2])
for i = 3, #ARGV, 2 do
  if ARGV[i + 1] == '0' then
    redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[1], ARGV[2])
return existed
"""


class Presence:
    """One node's view of the cluster's presence. ``take`` at login, ``release``
    when an authenticated connection ends, ``run`` for as long as the node serves."""

    def __init__(self, log: RedisEventLog, *, timeout: float) -> None:
        self._log = log
        self._timeout = timeout
        self._node = log.node
        self._nodes_key = log.key("nodes")
        self._prefix = log.key("presence:")
        self._mine = self._prefix + self._node
        self._alive = log.key("alive:")
        #: This node's authenticated connections, by identity (the truth about them).
        self._local: dict[str, int] = {}
        #: Other nodes' connections of an identity, as the latest login here saw them.
        self._others: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._wake = trio.Event()
        self._skip_until = -math.inf
        self._problem: str | None = None
        self._scripts: tuple[Any, Any] | None = None

    def online(self, identity: str) -> int:
        """Connections of ``identity`` on every node: this node's now, the others' as
        counted at the latest login of ``identity`` here."""
        return self._local.get(identity, 0) + self._others.get(identity, 0)

    async def take(self, identity: str, limit: int) -> bool:
        """Count one more connection of ``identity`` if the cluster holds fewer than
        ``limit``; False (nothing counted) otherwise. One round trip to Redis; while
        Redis does not answer, this node's connections alone are counted."""
        # Counted before the round trip, so two logins here at once see each other.
        mine = self._local.get(identity, 0) + 1
        self._local[identity] = mine
        others = 0
        if trio.current_time() >= self._skip_until:
            try:
                taken, others = await self._take(identity, limit, mine)
            except _ERRORS as exc:
                self._down(exc)
                taken = mine <= limit
            except BaseException:
                self.release(identity)  # cancelled: the connection is gone
                raise
            else:
                self._up()
        else:
            taken = mine <= limit
        if not taken:
            self.release(identity)
            return False
        self._others[identity] = others
        # A later release's write may reach Redis before this one: write the count again.
        self._mark(identity)
        return True

    def release(self, identity: str) -> None:
        """One connection of ``identity`` on this node ended; written within ``HEARTBEAT``."""
        left = self._local.get(identity, 0) - 1
        if left > 0:
            self._local[identity] = left
        else:
            self._local.pop(identity, None)
            self._others.pop(identity, None)
        self._mark(identity)

    def _mark(self, identity: str) -> None:
        self._dirty.add(identity)
        self._wake.set()

    async def _take(self, identity: str, limit: int, mine: int) -> tuple[bool, int]:
        take, _ = self._loaded()
        with trio.fail_after(self._timeout + 1):
            taken, others = await take(
                keys=[self._nodes_key, self._mine],
                args=[identity, limit, mine, PRESENCE_TTL, self._prefix, self._node, self._alive],
            )
        return bool(int(taken)), int(others)

    def _loaded(self) -> tuple[Any, Any]:
        if self._scripts is None:
            client = self._log.client  # LogUnavailable until the log is open
            self._scripts = (client.register_script(_TAKE), client.register_script(_WRITE))
        return self._scripts

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stay subscribed to this node's alive channel, heartbeat and write what
        changed, until cancelled. A node that stops leaves its hash to expire
        (``flush`` first writes what its ends changed)."""
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(self._timeout + 1):
                await nursery.start(self._stay_alive)
            task_status.started()
            await self._beat()

    async def _stay_alive(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold a subscription to ``alive:<node>`` for as long as the node runs: Redis
        drops it the moment the process's connection closes (kill -9 included), so
        the other nodes stop counting this node's connections at once. The client
        subscribes again by itself after an outage."""
        channel = self._alive + self._node
        while True:
            try:
                async with self._log.client.pubsub(
                    channels=[channel], ignore_subscribe_messages=True
                ):
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED
                    await trio.sleep_forever()
            except BaseException as exc:
                # Cancelled while the pool closes, the client's task group wraps the
                # cancellation with its failure to unsubscribe: only the first goes on.
                cancelled = _cancellation(exc)
                if cancelled is not None:
                    raise cancelled from None
                if not isinstance(exc, Exception):
                    raise
                self._down(exc)
            await trio.sleep(RETRY_AFTER)

    async def _beat(self) -> None:
        while True:
            with trio.move_on_after(HEARTBEAT):
                await self._wake.wait()
            self._wake = trio.Event()
            if not await self._write():
                await trio.sleep(RETRY_AFTER)

    async def flush(self) -> None:
        """Write what changed now (at shutdown, once the connections have ended)."""
        if self._dirty:
            await self._write()

    async def _write(self) -> bool:
        """Heartbeat and write the counts that changed; False if Redis did not answer."""
        dirty, self._dirty = self._dirty, set()
        args: list[str | int] = [PRESENCE_TTL, self._node]
        for identity in dirty:
            args += (identity, self._local.get(identity, 0))
        try:
            _, write = self._loaded()
            with trio.fail_after(self._timeout + 1):
                existed = await write(keys=[self._nodes_key, self._mine], args=args)
        except _ERRORS as exc:
            self._dirty |= dirty
            self._down(exc)
            return False
        self._up()
        if not int(existed) and self._local.keys() - dirty:
            # The hash had expired (this node stalled, or Redis lost it): all again.
            self._dirty |= self._local.keys()
            self._wake.set()
        return True

    def _down(self, exc: BaseException) -> None:
        self._skip_until = trio.current_time() + RETRY_AFTER
        if isinstance(exc, LogUnavailable):
            # Its scripts belonged to the client that closed (or was never open).
            self._scripts = None
        if self._problem is None:
            self._problem = str(exc) or type(exc).__name__
            logger.warning(
                "presence: Redis at %s does not answer (%s); per-identity limits count"
                " this node's connections only until it does",
                self._log.where,
                self._problem,
            )

    def _up(self) -> None:
        if self._problem is not None:
            self._problem = None
            logger.warning("presence: Redis at %s answers again", self._log.where)


def _cancellation(exc: BaseException) -> BaseException | None:
    """The cancellation in ``exc`` (alone, or the group of them), or None."""
    if isinstance(exc, trio.Cancelled):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        cancelled, _ = exc.split(trio.Cancelled)
        return cancelled
    return None
