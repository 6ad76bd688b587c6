"""The event log at run time: number each event, commit a batch, then fan it out.

``Delivery.append`` gives an accepted event the next ``seq`` and queues it; the
``run`` task commits everything queued in one transaction off the event loop
(group commit: while one batch is written the next one gathers, and two
commits are at least ``delivery.commit_interval`` apart), together with the
cursor moves and ledger rows recorded meanwhile. Only after the commit
is an event fanned out and its publisher answered, so nothing a recipient saw
can be missing from the log after a crash. docs/delivery.md states the
guarantees; docs/architecture.md shows where this sits.

Where the log lives is the ``EventLog``'s business (catsock/eventlog/): the
gateway's SQLite file, or in cluster mode a Redis every node shares. A shared log
numbers events itself; its publishers are answered once it has them, and every
node fans out what it reads back from the log, in seq order (``_follow``).
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, TypeVar

import attrs
import sqlite_utils
import trio

import storage
from protocol import Principal, encode, subscriptions_for
from protocol import messages as m

from .admission import Admission
from .config import DeliveryConfig
from .entries import PRIORITIES, PRIORITY_NAMES, Entry, Publisher, Run
from .eventlog import Committed, EventLog, SharedEventLog
from .eventlog.sqlite import SqliteEventLog
from .groupcommit import GroupCommit
from .pacer import Pacer, Pumpable

if TYPE_CHECKING:
    from .hub import Hub, Subscriber

__all__ = ["PRIORITIES", "PRIORITY_NAMES", "Delivery", "DeliveryStatistics", "Entry"]

logger = logging.getLogger("catsock.delivery")

T = TypeVar("T")

#: Cursor moves and ledger rows alone wait this long to share a transaction.
IDLE_FLUSH = 0.05
MAX_BATCH = 5000
MAX_KNOWN_CURSORS = 100_000
#: Seconds between two retention passes over a shared log (the embedded log's
#: prune runs as often: GroupCommit's ``prune_interval``).
SHARED_RETENTION_EVERY = 60.0
#: Upper bounds (seconds) of the publish-to-write latency histogram.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@attrs.frozen
class DeliveryStatistics:
    head: int
    pending: int
    batches: int
    last_batch_size: int
    last_commit_seconds: float
    committed: int
    duplicates: int
    expired: int
    dropped: int
    replayed: int
    catchups: int
    unconfirmed: int
    #: Events pruned past a durable recipient's cursor (delivery.retention_hard_rows).
    lost_to_retention: int
    commit_errors: int
    latency_buckets: tuple[tuple[float, int], ...]  # cumulative, Prometheus style
    latency_sum: float
    latency_count: int
    lag: float
    live_lag: float
    live_budget: int | None
    overloaded: bool
    overload_episodes: int
    overload_seconds: float


class Delivery:
    """Owns the log's writes. ``db`` and ``lock`` are shared with the LogSink, so the
    two writers take turns on one connection instead of fighting over SQLite's lock."""

    def __init__(
        self,
        config: DeliveryConfig,
        hub: Hub,
        db: sqlite_utils.Database,
        lock: trio.Lock,
        read_path: str,
        *,
        wall_clock: Callable[[], float] = time.time,
        personal_fields: Iterable[str] = (),
        personal_max_age: float | None = None,
        shared_log: SharedEventLog | None = None,
    ) -> None:
        self.config = config
        self._personal_fields = tuple(personal_fields)
        self._personal_max_age = personal_max_age
        self.enabled = config.log
        self.hub = hub
        self.admission = Admission(config.admission_lag)
        self.pacer = Pacer(
            config.live_interval, lag=lambda: self.admission.lag, limit=config.admission_lag
        )
        self._commits = GroupCommit(
            "event log",
            db if self.enabled else None,
            lock,
            due=self._due,
            write_next=self._commit_next,
            prune=self._prune,
            wall_clock=wall_clock,
            logger=logger,
        )
        self._db = db
        self._read_path = read_path
        self._reader: sqlite_utils.Database | None = None
        self._read_lock = trio.Lock()
        #: Where events are stored: the SQLite file, or (cluster mode) a shared log.
        self._log: EventLog = shared_log or SqliteEventLog(db, self._read)
        self._shared = shared_log
        self._wall = wall_clock
        self._durable = frozenset(config.durable_types)
        self._priority = {t: PRIORITIES[p] for t, p in config.priority.items()}
        self.head = 0
        self._next = 1
        self._pending: list[Entry] = []
        self._cursors: dict[tuple[str, str], int] = {}  # moves not yet committed
        # Every move this process made (bounded): a reconnect must not start behind
        # a move whose commit is still in flight or not yet visible to the reader.
        self._known: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()
        self._ledger: list[storage.LedgerRow] = []
        self._last_commit = -math.inf
        # When cursor moves or ledger rows began to wait with no event to ride on.
        self._quiet_since = math.inf
        self._committed = trio.Event()
        self._room = trio.Event()
        #: When an outage of the log was first seen (trio clock), for ``room(hold)``.
        self._down_since: float | None = None
        self.committed_count = 0
        self.duplicates = 0
        self.expired = 0
        self.dropped = 0
        self.replayed = 0
        self.catchups = 0
        self.unconfirmed = 0
        self.lost_to_retention = 0
        self._latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0

    # -- policy ------------------------------------------------------------------------

    def is_durable(self, principal: Principal) -> bool:
        return self.enabled and principal.client_type in self._durable

    def priority(self, event_type: str) -> int:
        return self._priority.get(event_type, PRIORITIES["NORMAL"])

    # -- publishing ----------------------------------------------------------------------

    def append(
        self,
        event: m.Event,
        channels: tuple[str, ...],
        sender: str,
        *,
        publisher: Publisher | None = None,
        connection_id: str | None = None,
    ) -> Entry:
        """Accept a validated event. With the log on it is committed, then fanned out;
        with it off it is fanned out with the next batch (and ``seq`` stays 0)."""
        now = self._wall()
        ttl = self.config.ttl.get(event.type)
        entry = Entry(
            seq=0,
            type=event.type,
            message_id=event.message_id,
            sender=sender,
            channels=channels,
            priority=self.priority(event.type),
            expires_at=None if ttl is None else now + ttl,
            body=event.raw or encode(event),
            publisher=publisher,
            connection_id=connection_id,
            created_at=now,
            appended_at=trio.current_time(),
        )
        if self.enabled:
            entry.seq = self._next
            self._next += 1
        if not self._pending:
            self._commits.poke()
        self._pending.append(entry)
        self.admission.poke()
        return entry

    async def publish(
        self,
        event: m.Event,
        channels: tuple[str, ...],
        principal: Principal,
        connection_id: str | None = None,
    ) -> Entry:
        """``append`` and wait until committed (the HTTP publish path)."""
        entry = self.append(event, channels, principal.identity, connection_id=connection_id)
        if self.enabled:
            entry.committed = trio.Event()
            await entry.committed.wait()
        return entry

    @property
    def congested(self) -> bool:
        """Publishers must wait: the log writer is ``max_pending`` events behind, the
        gateway is overloaded (catsock/admission.py), or the log is unreachable."""
        return (
            len(self._pending) >= self.config.max_pending
            or self.admission.overloaded
            or self._log.unavailable is not None
        )

    @property
    def unavailable(self) -> str | None:
        """Why the event log cannot take events now (cluster mode: Redis is down)."""
        return self._log.unavailable

    async def room(self, hold: float | None = None) -> str | None:
        """Wait until none holds (a connection, before it takes an event in).

        With ``hold``: once the log has been unreachable for ``hold`` seconds (since
        the outage was first seen, not since this call), stop waiting and say why,
        so the publisher is refused rather than held for the whole outage."""
        while self.congested:
            if hold is not None and self._log.unavailable is not None:
                left = hold - self._outage_age()
                if left <= 0:
                    return self._log.unavailable
                with trio.move_on_after(left):
                    await self._room.wait()
            elif self.admission.overloaded:
                await self.admission.wait()
            else:
                await self._room.wait()
        return None

    def _outage_age(self) -> float:
        now = trio.current_time()
        if self._down_since is None:
            self._down_since = now
        return now - self._down_since

    # -- cursors and the ledger ------------------------------------------------------------

    def advance(self, identity: str, channels: Iterable[str], seq: int) -> None:
        """``identity`` has everything on ``channels`` up to ``seq`` (stored with the
        next commit; cursors never move back)."""
        if not self.enabled:
            return
        for channel in channels:
            key = (identity, channel)
            if seq > self._cursors.get(key, -1):
                self._cursors[key] = seq
            if seq > self._known.get(key, -1):
                self._known[key] = seq
                self._known.move_to_end(key)
                if len(self._known) > MAX_KNOWN_CURSORS:
                    self._known.popitem(last=False)
        self._quiet()

    def note(
        self,
        identity: str,
        kind: str,
        first: int,
        last: int,
        connection_id: str | None,
        detail: str | None = None,
        *,
        at: float | None = None,
    ) -> None:
        """Add a ledger row (written, acked, expired, dropped, duplicate), dated
        ``at`` (wall time; default now)."""
        if not (self.enabled and self.config.ledger):
            return
        if not self._ledger:
            self._quiet()
        self._ledger.append(
            storage.LedgerRow(
                identity,
                kind,
                first,
                last,
                connection_id,
                self._wall() if at is None else at,
                detail,
            )
        )

    def expire(self, entry: Entry, identity: str, connection_id: str | None) -> None:
        self.expired += 1
        self.note(identity, "expired", entry.seq, entry.seq, connection_id)

    def count_dropped(self, events: int = 1) -> None:
        """Events were shed for a recipient (its ledger row is the connection's)."""
        self.dropped += events

    def count_catchup(self) -> None:
        """A live recipient fell behind and reads from the log again."""
        self.catchups += 1

    def count_unconfirmed(self, events: int) -> None:
        """A client without acks left with ``events`` written to it that were never
        known to be taken in: its next connection is sent them again."""
        self.unconfirmed += events

    def observe_latency(self, entry: Entry) -> None:
        if math.isnan(entry.appended_at):
            return
        seconds = trio.current_time() - entry.appended_at
        self._latency_sum += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self._latency[i] += 1
                return
        self._latency[-1] += 1

    # -- reading the log ---------------------------------------------------------------

    async def start_positions(
        self,
        principal: Principal,
        channels: tuple[str, ...],
        since: int | None,
        *,
        others_online: bool = False,
    ) -> dict[str, int] | None:
        """Where a new connection's replay starts, per channel; ``None``: go live now.

        The replay of what a durable identity missed goes to the connection that
        finds it offline; while another connection of it is open, a new one starts
        live (the identity is not returning: it never left)."""
        if not self.enabled or not channels:
            return None
        if since is not None:
            return {channel: min(since, self.head) for channel in channels}
        if not self.is_durable(principal) or others_online:
            return None
        identity = principal.identity
        stored = await self._log.load_cursors(identity)
        start = stored.get(storage.LOG_START, self.head)
        # Moves of this process may be newer than what the reader sees (a connection
        # of this identity that just ended; a commit still in flight).
        positions = {
            channel: max(stored.get(channel, start), self._known.get((identity, channel), -1))
            for channel in channels
        }
        if self._shared is not None and not stored.keys() >= positions.keys():
            # A shared log has no LOG_START (it is written with the token, into one
            # node's file): an identity's first connection marks where its log
            # starts, stored before it is sent anything, so that another node
            # resumes it from there and not from its own head.
            new = {c: positions[c] for c in positions.keys() - stored.keys()}
            await self._shared.start_cursors(identity, new)
        return positions

    async def gap(self, positions: Mapping[str, int]) -> tuple[int, int] | None:
        """The seqs a replay from ``positions`` can no longer give, because retention
        pruned them (first, last), or None. Some may not have been routed to the
        reader; the ones that were are lost to it (docs/delivery.md, "Retention")."""
        lowest = min(positions.values(), default=None)
        if lowest is None:
            return None
        first = await self._log.first_seq()
        if first is None or lowest >= first - 1:
            return None
        return lowest + 1, first - 1

    async def read(
        self, positions: Mapping[str, int], exclude_sender: str | None, limit: int
    ) -> tuple[list[Entry], int]:
        """Committed events after ``positions`` (see ``storage.read_after``), as entries."""
        upto = self.head
        stored, scanned = await self._log.read_after(
            positions, upto=upto, exclude_sender=exclude_sender, limit=limit
        )
        self.replayed += len(stored)
        return _entries(stored), scanned

    def cursor(self, identity: str, channel: str) -> int | None:
        """Where this process last moved ``identity``'s cursor on ``channel`` (None:
        it has not; the database may know an older position)."""
        return self._known.get((identity, channel))

    async def wait_commit(self) -> None:
        """Return after the next commit (events, cursor moves or ledger rows)."""
        await self._committed.wait()

    async def wait_beyond(self, seq: int) -> None:
        """Return once the committed head is past ``seq``."""
        while self.head <= seq:
            await self._committed.wait()

    async def query(self, func: Callable[..., T], *args: object) -> T:
        """``func(db, *args)`` on the log's reader connection, in a worker thread
        (the HTTP API's lookups: a refused event to retry)."""
        return await self._read(func, *args)

    async def _read(self, func: Callable[..., T], *args: object) -> T:
        async with self._read_lock:
            if self._reader is None:
                self._reader = await trio.to_thread.run_sync(storage.open_db, self._read_path)
            return await trio.to_thread.run_sync(func, self._reader, *args)

    # -- the writer task ---------------------------------------------------------------

    def later(self, recipient: Pumpable) -> None:
        """Write for ``recipient`` within ``delivery.live_interval`` (catsock/pacer.py)."""
        self.pacer.later(recipient)

    def wrote_within(self, seconds: float) -> bool:
        """The log committed within the last ``seconds`` and no commit failed since:
        the database takes writes (``/health`` needs no probe of its own)."""
        return self._commits.wrote_within(seconds)

    @property
    def live_budget(self) -> int | None:
        """Bytes a live-only recipient is written per round of the pacer (None: all)."""
        return self.pacer.budget

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit batches until cancelled; then commit what is left (bounded).

        The pacer of live-only recipients and the admission watch run beside it,
        and with a shared log the task that fans out what the log holds."""
        async with self._log.open(), trio.open_nursery() as nursery:
            nursery.start_soon(self.pacer.run)
            nursery.start_soon(self.admission.run)
            await self._write(task_status, nursery)

    async def _write(self, task_status: trio.TaskStatus[None], nursery: trio.Nursery) -> None:
        if self.enabled:
            self.head = await self._log.head()
            self._next = self.head + 1
            if self._shared is not None:
                await nursery.start(self._shared.follow, self.head, self._follow, self._log_state)
                nursery.start_soon(self._retain_shared, self._shared)
        try:
            await self._commits.run(task_status=task_status)
        finally:
            # A replay read may still run in a worker thread on the reader's
            # connection: close it only once that read is over (issue 20, bug 9).
            with trio.CancelScope(shield=True):
                async with self._read_lock:
                    if self._reader is not None:
                        self._reader.close()
                        self._reader = None

    async def wait_pruned(self, count: int = 1) -> None:
        """Return once ``count`` retention runs have completed (the first one runs
        at start-up)."""
        await self._commits.wait_pruned(count)

    async def flush(self) -> None:
        """Commit everything appended or recorded so far."""
        await self._commits.flush()

    def _quiet(self) -> None:
        if self._quiet_since == math.inf:
            self._quiet_since = trio.current_time()
            self._commits.poke()

    def _due(self) -> float:
        # A commit costs about the same for one event as for a hundred (a thread
        # hop and a WAL write); spacing them lets a trickle of events share one,
        # which at 1,000 msg/s halved the server's CPU.
        spaced = self._last_commit + self.config.commit_interval
        if self._pending:
            return spaced
        if self._cursors or self._ledger:
            # Only cursor moves and ledger rows: gather more of them, but an event
            # ends the wait (a publisher is waiting for its answer).
            return max(spaced, self._quiet_since + IDLE_FLUSH)
        return math.inf

    async def _commit_next(self) -> bool:
        self._last_commit = trio.current_time()
        self._quiet_since = math.inf
        if not self.enabled:
            # No log: the batch is only what arrived meanwhile, fanned out together
            # so that each recipient writes once for it, as after a commit.
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            self._after_commit(batch, {})
            return True
        async with self._commits.turn():
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            cursors, self._cursors = self._cursors, {}
            ledger, self._ledger = self._ledger, []
            rows = [
                storage.EventRow(
                    e.seq,
                    e.message_id,
                    e.sender,
                    e.connection_id,
                    e.type,
                    e.channels,
                    e.priority,
                    e.created_at,
                    e.expires_at,
                    e.body,
                )
                for e in batch
            ]
            try:
                committed = await self._log.commit(self._commits, rows, cursors, ledger, self.head)
            except storage.SeqTaken as taken:
                # Another process wrote this log: number what is not committed yet
                # (nobody has seen those seqs) after its head, and go on.
                self._put_back(batch, cursors, ledger)
                logger.warning(
                    "event log: another process writes this database? renumbering"
                    " %d uncommitted events after seq %d",
                    len(self._pending),
                    taken.head,
                )
                for entry in self._pending:
                    taken.head += 1
                    entry.seq = taken.head
                self._next = taken.head + 1
                return True
            except Exception:
                self._put_back(batch, cursors, ledger)
                return False
        if committed.seqs is None:
            self._after_commit(batch, committed.duplicates)
        else:
            self._answer(batch, committed)
        return True

    def _put_back(
        self,
        batch: list[Entry],
        cursors: dict[tuple[str, str], int],
        ledger: list[storage.LedgerRow],
    ) -> None:
        self._pending[:0] = batch
        for key, seq in cursors.items():
            self._cursors[key] = max(seq, self._cursors.get(key, -1))
        self._ledger[:0] = ledger
        if (self._cursors or self._ledger) and not self._pending:
            self._quiet()

    def _after_commit(self, batch: list[Entry], duplicates: Mapping[int, int]) -> None:
        # Synchronous from here to the end: the head moves and each event fans out
        # in seq order with no await between, which is what lets a catching-up
        # connection switch to live without a gap (connection.py). Each recipient
        # writes once for the whole batch, after it.
        recipients: dict[Subscriber, None] = {}
        publishers: dict[Publisher, None] = {}
        run: list[Entry] = []
        for entry in batch:
            earlier = duplicates.get(entry.seq)
            if earlier is None:
                self.head = entry.seq
                self.committed_count += self.enabled
                if run and run[-1].channels != entry.channels:
                    recipients.update(dict.fromkeys(self.hub.publish(Run.of(run))))
                    run = []
                run.append(entry)
            else:
                entry.duplicate_of = earlier
                self.duplicates += 1
                self.note(entry.sender, "duplicate", earlier, earlier, entry.connection_id)
            if entry.publisher is not None:
                entry.publisher.accepted(entry)
                publishers[entry.publisher] = None
            if entry.committed is not None:
                entry.committed.set()
        if run:
            recipients.update(dict.fromkeys(self.hub.publish(Run.of(run))))
        for publisher in publishers:
            publisher.pump()  # answers go out at once
        for recipient in recipients:
            recipient.deliver()
        self._committed.set()
        self._committed = trio.Event()
        if len(self._pending) < self.config.max_pending:
            self._room.set()
            self._room = trio.Event()

    def _answer(self, batch: list[Entry], committed: Committed) -> None:
        """A shared log has the batch: answer its publishers. Its events reach local
        recipients at once when nothing is unread before them, else when ``_follow``
        reads them back, in the log's order."""
        assert committed.seqs is not None
        seqs = committed.seqs
        if seqs and seqs[0] == self.head + 1 and min(seqs) > 0:
            # Nothing of the log is still unread before the batch (its seqs are
            # consecutive: one script numbered them): fan it out now, as the
            # embedded log does, instead of after reading it back (``_follow``
            # skips it then). It saved the read-back's wait on every commit.
            for entry, seq in zip(batch, seqs, strict=True):
                entry.seq = seq
            self._after_commit(batch, {})
            self._log_state(None)
            return
        publishers: dict[Publisher, None] = {}
        for entry, seq in zip(batch, seqs, strict=True):
            if seq > 0:
                entry.seq = seq
            else:
                entry.seq = entry.duplicate_of = -seq
                self.duplicates += 1
                self.note(entry.sender, "duplicate", -seq, -seq, entry.connection_id)
            if entry.publisher is not None:
                entry.publisher.accepted(entry)
                publishers[entry.publisher] = None
            if entry.committed is not None:
                entry.committed.set()
        for publisher in publishers:
            publisher.pump()
        self._log_state(None)

    def _follow(self, stored: list[storage.StoredEvent]) -> None:
        # Events of every node, read back from the shared log in seq order: fanned
        # out as the embedded log fans out a commit (head, runs, one write each).
        # This node's own batches may have been fanned out already (``_answer``).
        if stored and stored[0].seq <= self.head:
            stored = [event for event in stored if event.seq > self.head]
            if not stored:
                return
        entries = _entries(stored)
        # The latency histogram times from acceptance, on whichever node that was:
        # its wall clock, kept in the stream, moved onto this node's trio clock (a
        # clock behind the publisher's counts as no time since, never as negative).
        now, wall = trio.current_time(), self._wall()
        for entry, event in zip(entries, stored, strict=True):
            if event.created_at is not None:
                entry.appended_at = now - max(0.0, wall - event.created_at)
        self._after_commit(entries, {})

    def _log_state(self, problem: str | None) -> None:
        if problem is None:
            self._down_since = None
        if problem is None and not self.congested:
            self._room.set()  # publishers held while the log was unreachable go on
            self._room = trio.Event()

    async def _retain_shared(self, log: SharedEventLog) -> None:
        """Retention of the shared log and its personal fields' lifetime: every node
        runs it (a pass is idempotent, and a loss is recorded once across nodes), first
        at start-up."""
        config = self.config
        while True:
            retained = await log.retain(
                max_age=config.retention_days * 86400,
                max_rows=config.retention_rows,
                now=self._wall(),
            )
            if retained is not None and retained.lost:
                self.lost_to_retention += retained.lost
                logger.warning(
                    "event log: %d events were trimmed from Redis before every durable"
                    " recipient had them (recorded in the ledger)",
                    retained.lost,
                )
            if self._personal_max_age is not None:
                # Personal fields have a shorter life than the events (docs/privacy.md).
                await log.strip_personal(
                    self._personal_fields, before=self._wall() - self._personal_max_age
                )
            await trio.sleep(SHARED_RETENTION_EVERY)

    def _prune(self, db: sqlite_utils.Database, now: float) -> int:
        # In a worker thread, under the writer's lock; the counter is only read
        # on the event loop (metrics), and an int assignment is atomic.
        config = self.config
        pruned = storage.prune_events(
            db,
            max_age=config.retention_days * 86400,
            max_rows=config.retention_rows,
            hard_rows=config.retention_hard_rows,
            wants=durable_wants(db, config.durable_types),
            now=now,
        )
        if self._personal_max_age is not None:
            # Personal fields have a shorter life than the events (docs/privacy.md).
            storage.strip_personal(db, self._personal_fields, before=now - self._personal_max_age)
        if pruned.lost:
            self.lost_to_retention += pruned.lost
            logger.warning(
                "event log: over delivery.retention_hard_rows, %d events were pruned before"
                " every durable recipient had them (recorded in the ledger)",
                pruned.lost,
            )
        return pruned.deleted

    def statistics(self) -> DeliveryStatistics:
        cumulative, total = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, math.inf), self._latency, strict=True):
            total += count
            cumulative.append((bound, total))
        return DeliveryStatistics(
            head=self.head,
            pending=len(self._pending),
            batches=self._commits.batches,
            last_batch_size=self._commits.last_batch_size,
            last_commit_seconds=self._commits.last_commit_seconds,
            committed=self.committed_count,
            duplicates=self.duplicates,
            expired=self.expired,
            dropped=self.dropped,
            replayed=self.replayed,
            catchups=self.catchups,
            unconfirmed=self.unconfirmed,
            lost_to_retention=self.lost_to_retention,
            commit_errors=self._commits.errors,
            latency_buckets=tuple(cumulative),
            latency_sum=self._latency_sum,
            latency_count=total,
            lag=self.admission.lag,
            live_lag=self.pacer.lag(),
            live_budget=self.pacer.budget,
            overloaded=self.admission.overloaded,
            overload_episodes=self.admission.episodes,
            overload_seconds=self.admission.held_seconds,
        )


def durable_wants(
    db: sqlite_utils.Database, durable_types: Iterable[str]
) -> dict[str, dict[str, int]]:
    """Where every durable recipient stands, ``{identity: {channel: seq}}``: the
    channels its token listens on, each with the seq it has had (its cursor, or
    where its log starts while it has none). Revoked and publish-only tokens want
    nothing."""
    durable = frozenset(durable_types)
    wants = {}
    for credential in storage.list_tokens(db):
        if credential.revoked_at or credential.publish_only:
            continue
        if credential.client_type not in durable:
            continue
        cursors = storage.load_cursors(db, credential.name)
        start = cursors.get(storage.LOG_START)
        positions = {
            channel: seq
            for channel in subscriptions_for(credential.client_type, credential.user_id)
            if (seq := cursors.get(channel, start)) is not None
        }
        if positions:
            wants[credential.name] = positions
    return wants


def _entries(stored: list[storage.StoredEvent]) -> list[Entry]:
    return [
        Entry(
            seq=s.seq,
            type=s.type,
            message_id="",
            sender=s.sender,
            channels=s.channels,
            priority=s.priority,
            expires_at=s.expires_at,
            body=s.body,
        )
        for s in stored
    ]
