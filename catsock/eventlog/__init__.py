"""The event log as delivery sees it: one interface, two backends.

``catsock/delivery.py`` numbers, commits, reads and follows the log through
``EventLog`` and never asks which backend runs:

- ``SqliteEventLog`` (eventlog/sqlite.py), the embedded default: the gateway's
  SQLite file (storage/events.py). Delivery numbers events in memory and fans a
  batch out as soon as it is committed.
- ``RedisEventLog`` (eventlog/redis.py), cluster mode (``cluster.redis``): one
  log shared by every node. The log numbers events as it stores them (one seq
  across the cluster), and a node fans out what it *reads back* from the log, its
  own events and other nodes' alike, in seq order (``follow``).

What differs is said by two attributes, not by the type: ``shared`` (the log
numbers events, and fan-out follows the log) and ``unavailable`` (why the log
cannot take events right now, or None). docs/scaling.md states what is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

import storage

if TYPE_CHECKING:
    from catsock.config import Config
    from catsock.groupcommit import GroupCommit

    from .redis import RedisEventLog
    from .retention import Retained

__all__ = [
    "ClientMissing",
    "Committed",
    "EventLog",
    "LogUnavailable",
    "SharedEventLog",
    "client_missing",
    "cluster_log",
]


class LogUnavailable(Exception):
    """The log cannot be reached (cluster mode: Redis is down); the message says why.
    Nothing of the batch is known to be stored: it is kept and tried again."""


@attrs.frozen
class Committed:
    """What a commit did. ``duplicates``: ``{row seq: earlier seq}`` for rows that
    repeat an earlier (sender, message_id). ``seqs``: for a log that numbers events
    itself, the seq each row got, in row order, negative for a duplicate (``-earlier``);
    None where the rows kept the seqs they came with."""

    duplicates: Mapping[int, int]
    seqs: Sequence[int] | None = None


class EventLog(Protocol):
    """What delivery needs of the log. Reads may run concurrently with a commit."""

    #: True: the log numbers events and delivery fans out what ``follow`` reads.
    shared: bool

    @property
    def unavailable(self) -> str | None:
        """Why the log cannot take events now (None: it can)."""

    def open(self) -> AbstractAsyncContextManager[object]:
        """Hold the backend's connections for as long as delivery runs."""

    async def head(self) -> int:
        """The highest seq in the log (0: empty)."""

    async def commit(
        self,
        commits: GroupCommit,
        rows: Sequence[storage.EventRow],
        cursors: Mapping[tuple[str, str], int],
        ledger: Sequence[storage.LedgerRow],
        floor: int,
    ) -> Committed:
        """Store a batch (events deduplicated by (sender, message_id), cursor moves,
        ledger rows) all or nothing, inside ``commits.turn()``. ``floor``: the seq
        the caller has seen; a log that numbers events never numbers at or below it.
        Raises on failure (the caller keeps the batch and retries)."""

    async def load_cursors(self, identity: str) -> dict[str, int]:
        """``{channel: seq}`` of ``identity`` (``storage.LOG_START`` included if set)."""

    async def first_seq(self) -> int | None:
        """The oldest seq still in the log (None: empty)."""

    async def read_after(
        self,
        positions: Mapping[str, int],
        *,
        upto: int,
        exclude_sender: str | None,
        limit: int,
    ) -> tuple[list[storage.StoredEvent], int]:
        """As ``storage.read_after``: events on ``positions``' channels past each
        channel's seq, up to ``upto``, and the last seq examined."""


class SharedEventLog(EventLog, Protocol):
    """A log several nodes write: each follows it to fan out what any node stored."""

    async def follow(
        self,
        after: int,
        deliver: Callable[[list[storage.StoredEvent]], None],
        state: Callable[[str | None], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``deliver`` with every event stored after ``after``, in seq order
        without gaps, until cancelled; ``state(problem)`` when the log becomes
        unreachable (``problem``) or reachable again (None)."""

    async def start_cursors(self, identity: str, positions: Mapping[str, int]) -> None:
        """Store ``positions`` as ``identity``'s cursors where it has none yet: where
        its log starts (the shared log's ``LOG_START``), before it is sent anything."""

    async def retain(self, *, max_age: float, max_rows: int, now: float) -> Retained | None:
        """One retention pass (soft limits, recorded losses); None if it failed."""

    async def strip_personal(self, fields: Collection[str], *, before: float) -> int | None:
        """Remove ``fields`` from events created before ``before`` (docs/privacy.md);
        how many changed, None if it did not run."""

    async def probe(self) -> str | None:
        """Why the log cannot be reached (None: it answers); for start-up."""

    # Reads for the console and the CLI (catsock/views.py), never on delivery's
    # path. The embedded log needs none: its views query the SQLite file on
    # connections of their own (catsock/lag.py ``read_aside``), as they always did.

    async def recent(
        self, channels: Collection[str], since: float, limit: int, scan: int
    ) -> tuple[list[storage.Recent], bool]:
        """As ``storage.recent_events``: ``GET /api/history``'s window."""

    async def events_by_message_id(self, message_id: str) -> list[storage.EventRow]:
        """As ``storage.events_by_message_id``, for the ledger's explanation."""

    async def ledger_since(self, at: float, cap: int) -> list[storage.LedgerRow]:
        """Ledger rows stored from about ``at`` (unix time) on, at most ``cap``."""

    async def ledger_newest(self, count: int) -> list[storage.LedgerRow]:
        """The newest ``count`` ledger rows, oldest first."""

    async def cursors_all(self) -> dict[str, dict[str, int]]:
        """Every identity's cursors, ``{identity: {channel: seq}}``."""

    async def behind(
        self, positions: Mapping[str, int], exclude_sender: str, cap: int, scan: int
    ) -> storage.Behind:
        """As ``storage.behind``, looking at no more than ``scan`` events."""


class ClientMissing(Exception):
    """``cluster.redis`` is set but the Redis client (coredis) is not installed."""


def client_missing(exc: ImportError) -> ClientMissing:
    """The error for ``cluster.redis`` set while importing the client failed."""
    return ClientMissing(
        f"cluster.redis is set but the Redis client is missing ({exc}):"
        " pip install 'catsock[cluster]'"
    )


def cluster_log(config: Config, *, patient: bool = True) -> RedisEventLog:
    """The cluster's log for ``config`` (``cluster.redis`` set), not yet open.
    Imported here, late, so that embedded mode never needs the Redis client."""
    try:
        from .redis import RedisEventLog
    except ImportError as exc:
        raise client_missing(exc) from None
    return RedisEventLog(
        config.cluster,
        retention_rows=config.delivery.retention_hard_rows,
        retention_days=config.delivery.retention_days,
        patient=patient,
    )

