"""One client connection: the event protocol on a ``transport.Session``.

The session (catsock/transport/session.py) reads in slices, writes a queue and
does the close handshake; this module gives each message to
``protocol.ConnectionMachine`` and carries out the actions it returns. What
goes out — replies, and events the hub offers — waits in the session's bounded
queue until ``pump`` hands it to the link, one write at a time: written at once
when the kernel takes it, or finished by a drain task that calls back. The
connection's nursery holds the reader (its own task) and, only while needed, a
drain task and a catch-up task. Deadlines are cancel scopes on the reader's
wait: the auth deadline until authenticated, then (if negotiated) the
heartbeat, which pings every interval and closes 4000 after two silent ones,
and the credential's expiry (``Principal.expires_at``): at it the connection
gets ``TOKEN_EXPIRED`` and close 4002, unless an ``auth`` with a fresh token
for the same identity (a refresh) moved it on. No message pays for it: it is
one more deadline in ``deadline``, read once per wait.

Delivery (docs/delivery.md): a connection is either *live* (the hub offers it
each committed event) or *catching up* (a task reads the log from its positions,
and live offers are ignored because the log has them). Catching up ends when a
read reaches the committed head with no await in between, so the switch to live
has no gap and no reordering.
"""

from __future__ import annotations

import logging
import math
from collections import deque

import trio

from protocol import (
    Acknowledge,
    Action,
    Close,
    CloseCode,
    ConnectionMachine,
    ErrorCode,
    Principal,
    ProtocolError,
    Publish,
    Send,
    StartHeartbeat,
    State,
    Subscribe,
    Verify,
    iso_timestamp,
)
from protocol import messages as m
from protocol.privacy import Projector
from storage import ConnectionClosed as ClosedRow
from storage import ConnectionHeartbeat, ConnectionOpened, MessageLogged

from .entries import PRIORITIES, PRIORITY_NAMES, Entry, Run
from .refusals import refusal
from .services import ConnectionContext, DeliveryView, Registry, StatsSink
from .takenin import TakenIn
from .transport.frames import frame as ws_frame
from .transport.link import Link
from .transport.session import CLOSE_GRACE, Session

__all__ = ["Connection", "ConnectionContext", "DeliveryView", "Registry", "StatsSink"]

logger = logging.getLogger("catsock.connection")

#: At most one heartbeat row per connection per this many seconds in the log.
HEARTBEAT_LOG_EVERY = 60.0
#: Writes within this many seconds share one "written" ledger row.
LEDGER_SPAN = 1.0
CRITICAL = PRIORITIES["CRITICAL"]
LOW = PRIORITIES["LOW"]
#: How often a client without acks is checked for what it has taken in.
CONFIRM_EVERY = 0.05
#: How long a shed recipient (close 4001) is kept so that its ``SLOW_CONSUMER``
#: error and close frame reach it. Its socket is full, so they go out only once it
#: reads again: a paused tab or process that comes back within this finds them
#: instead of a bare hang-up (issue 19). Its queue is dropped; it holds a socket.
SHED_GRACE = 30.0
#: Seconds into an outage of the event log (cluster mode: Redis) during which a
#: publisher is held, as for any congestion; after it, its events are refused with
#: ``OVERLOADED`` (and kept as refused) until the log answers again.
UNREACHABLE_HOLD = 2.0

#: What ``render`` hands the session for ``written``: first seq, last seq, the batch.
Written = tuple[int, int, list["bytes | Entry | Run"]]


class Connection(Session):
    def __init__(
        self,
        ctx: ConnectionContext,
        registry: Registry,
        delivery: DeliveryView,
        link: Link,
        connection_id: str,
        remote: str,
    ) -> None:
        super().__init__(link, max_size=ctx.max_frame_size, max_fragments=ctx.max_fragments)
        self.ctx = ctx
        self.registry = registry
        self.delivery = delivery
        self.id = connection_id
        self.remote = remote
        self.machine = ConnectionMachine(
            connection_id, ctx.machine_config, clock=trio.current_time, wall_clock=ctx.wall_clock
        )
        self.connected_at = ctx.wall_clock()
        self._auth_deadline = trio.current_time() + ctx.auth_timeout
        self._events = 0  # events in the queue (entries, and the entries of runs)
        self._bytes = 0  # and their text
        self._levels = [0] * (LOW + 1)  # of those, how many of each priority
        self._urgent = False  # a CRITICAL event is queued: write without pacing
        self._full_since: float | None = None
        # Delivery state, set once authenticated (see the module docstring).
        self._identity: str | None = None
        self._channels: tuple[str, ...] = ()
        self._durable = False
        self._room_for = ctx.live_send_queue  # events the queue may hold (set at auth)
        self._acks = False
        self._with_seq = False
        # What this recipient's class is sent of each event (None: everything as
        # published, the original bytes; docs/privacy.md).
        self._projector: Projector | None = None
        self._start: dict[str, int] | None = None
        self._positions: dict[str, int] | None = None  # not None: catching up
        self._catching_up = False  # the catch-up task is running
        self._written = 0  # the highest seq written (or expired) for this connection
        self._acked = 0
        # Written, not yet in the ledger: first and last seq, and when the first was
        # written (trio time, for the span; wall time, for the row).
        self._range: tuple[int, int, float, float] | None = None
        # Shed, not yet in the ledger: first seq, last seq, why, since (see _overflow).
        self._dropping: tuple[int, int, str, float] | None = None
        # A pong answers after everything before it: this connection's earlier
        # publishes are committed and fanned out, and its first replay is queued.
        self._uncommitted = 0
        self._replaying = False
        self._held: list[m.ControlMessage] = []
        # A durable client without acks: what it was written and has not taken in.
        self._taken_in: TakenIn | None = None
        self._confirm_at = math.inf
        self._heartbeat = 0.0  # the negotiated interval; 0: no heartbeat
        self._silent_at = math.inf  # heartbeat: close if nothing arrives by then
        self._ping_at = math.inf
        self._expires_at = math.inf  # the credential's expiry, on trio's clock
        self._last_heartbeat_log = 0.0

    @property
    def principal(self) -> Principal | None:
        return self.machine.principal

    @property
    def queued(self) -> int:
        """Events waiting for the link (for metrics)."""
        return self._events

    # -- called by others --------------------------------------------------------

    def offer(self, run: Run) -> None:
        """Queue committed events for writing; never blocks, never grows memory past
        the queue bound (see ``_overflow``). The caller ``pump``s afterwards."""
        if self.closing or self._positions is not None:
            return  # closing, or catching up: the log has it
        ctx = self.ctx
        if (
            self._identity in run.senders
            or self._events + len(run.entries) > self._room_for
            or self._bytes + run.size > ctx.send_queue_bytes
        ):
            # Its own events are in the run (a publisher that also receives), or the
            # queue is (nearly) full: under overload, every dashboard's case. What
            # fits is queued one by one; once full, the rest is shed at once when
            # one by one would shed each of it anyway (``_shed_whole``).
            for i, entry in enumerate(run.entries):
                if self._events >= self._room_for and self._shed_whole(run, i):
                    return
                self._offer_entry(entry)
            return
        self._queue.append(run)
        self._count(run, 1)
        if self._dropping is not None:
            self._note_drops()
        self._urgent = self._urgent or run.priority <= CRITICAL

    def _shed_whole(self, run: Run, start: int) -> bool:
        """Shed ``run.entries[start:]`` at once, if that is what offering them one by
        one would do: a live-only queue full by count, and nothing in the run more
        important than the least important queued (one priority, so one reason).
        Each event of a run would otherwise cost every full dashboard a call: under
        overload a thousand dashboards fell behind together (issue 19)."""
        if (
            self._durable
            or self.closing
            or self._identity in run.senders
            or run.levels[run.priority] != len(run.entries)
        ):
            return False
        least = max(level for level in range(LOW + 1) if self._levels[level] or level == 0)
        if run.priority < least:
            return False
        now = trio.current_time()
        if self._full_since is None:
            self._full_since = now
        if now - self._full_since >= self.ctx.queue_full_grace:
            self._slow_consumer()
            return True
        self.delivery.count_dropped(len(run.entries) - start)
        why = f"queue full: shed {PRIORITY_NAMES.get(run.priority, '?')} priority first"
        first, last = run.entries[start].seq, run.entries[-1].seq
        dropping = self._dropping
        if dropping is not None and dropping[2] == why and now - dropping[3] < LEDGER_SPAN:
            self._dropping = (dropping[0], last, why, dropping[3])
        else:
            self._note_drops()
            self._dropping = (first, last, why, now)
        return True

    def _offer_entry(self, entry: Entry) -> None:
        if self.closing or self._positions is not None:
            return
        if entry.sender == self._identity:
            return  # nobody receives its own events
        if (
            self._events >= self._room_for
            or self._bytes + len(entry.body) > self.ctx.send_queue_bytes
        ):
            self._overflow(entry)
            return
        self._queue.append(entry)
        self._count(entry, 1)
        if self._dropping is not None:
            self._note_drops()
        self._urgent = self._urgent or entry.priority <= CRITICAL

    def deliver(self) -> None:
        """After a commit's fan-out: durable recipients (and anyone with a CRITICAL
        event queued) write now, live-only ones with the pacer's next round."""
        if self._durable or self._urgent:
            self._urgent = False
            self.pump()
        else:
            self.delivery.later(self)

    def accepted(self, entry: Entry) -> None:
        """Our publish is committed: tell the client, if it negotiated acks."""
        self._uncommitted -= 1
        if self._acks and not self.closing:
            self._send(
                m.Accepted(
                    message_id=entry.message_id,
                    seq=entry.effective_seq,
                    duplicate=entry.duplicate_of is not None,
                    timestamp=iso_timestamp(self.ctx.wall_clock()),
                )
            )
        self._release_held()

    def close(self, code: int, reason: str, grace: float = CLOSE_GRACE) -> None:
        """Write what is queued, then close with ``code``; bounded by ``grace`` seconds."""
        self._ping_at = self._silent_at = self._expires_at = math.inf
        super().close(code, reason, grace)

    # -- the session's hooks (catsock/transport/session.py) ---------------------------

    def item_size(self, item: Entry | Run) -> int:
        return item.size if isinstance(item, Run) else len(item.body)

    def split(self, item: Entry | Run, room: int) -> tuple[Entry | Run, Run | None]:
        if isinstance(item, Run):
            return item.split(room, self._with_seq, self._projector)
        return item, None

    def render(self, batch: list[bytes | Entry | Run]) -> tuple[list[bytes | memoryview], object]:
        for item in batch:
            if not isinstance(item, bytes):
                self._count(item, -1)
        self._full_since = None
        frames, first, last = self._frames(batch)
        self.ctx.stats.count_delivered(len(frames))
        return frames, (first, last, batch)

    def write_budget(self) -> int | None:
        # Live-only recipients get what the pacer's budget allows while the gateway
        # runs behind (catsock/pacer.py); durable ones, and a close, never wait on it.
        if self._durable or self.closing:
            return None
        return self.delivery.live_budget

    def defer(self) -> None:
        self.delivery.later(self)

    def paced(self) -> bool:
        # A live-only recipient's writes go on only in the pacer's rounds, never in a
        # task of their own; a durable one's, and a close, as soon as there is room.
        return not (self._durable or self.closing)

    def written(self, token: object) -> None:
        if token is not None:
            written: Written = token  # type: ignore[assignment]
            self._written_up_to(*written)

    def dropped(self) -> None:
        self._forget_queued()

    def idle(self) -> None:
        if self._positions is not None:
            self._start_catch_up()
        else:
            self._note_range_soon()
            self._note_drops()  # drained without another event arriving

    def deadline(self) -> float:
        if self.machine.state is State.AWAITING_AUTH:
            return self._auth_deadline
        return min(
            self._ping_at, self._silent_at, self._confirm_at, self._expires_at, self._range_due()
        )

    def deadline_passed(self) -> None:
        now = trio.current_time()
        if now >= self._range_due():
            self._note_range()
        if now >= self._expires_at:
            self._expires_at = math.inf
            for action in self.machine.expired():
                if isinstance(action, Send):
                    self._send(action.message)
                elif isinstance(action, Close):
                    self.close(action.code, action.reason)
            self.pump()
            return
        if now >= self._confirm_at:
            self._confirm(now)
        if self.machine.state is State.AWAITING_AUTH or now >= self._silent_at:
            self._silent_at = self._ping_at = math.inf
            for action in self.machine.timeout():
                if isinstance(action, Send):
                    self._send(action.message)
                elif isinstance(action, Close):
                    self.close(action.code, action.reason)
            self.pump()
        elif now >= self._ping_at:
            self._ping_at = now + self._heartbeat
            self.send_reply(ws_frame(0x9, b""))
            self._log_heartbeat()
            self.pump()

    def received(self) -> None:
        if self._heartbeat:
            self._silent_at = trio.current_time() + 2 * self._heartbeat

    def ended(self) -> None:
        self._forget_queued()
        self._note_range()
        self._note_drops()
        if self._taken_in:
            # Written, never known to be taken in: the next connection gets them again.
            self.delivery.count_unconfirmed(self._taken_in.events)
        self.registry.connection_ended(self)
        if self.machine.state is not State.CLOSED:
            self.machine.closed()
        self._log_close()

    async def on_message(self, frame: str | bytes) -> None:
        try:
            message = self.ctx.codec.decode(frame)
        except ProtocolError as error:
            self.ctx.stats.count_in("other")
            actions = self.machine.receive_invalid(error)
            self._note_refused(frame, None, actions)
        else:
            self.ctx.stats.count_in(message.type)
            actions = self.machine.receive(message)
            self._log_inbound(message, frame, actions)
        await self._execute(actions, frame)

    async def _execute(self, actions: list[Action], frame: str | bytes = "") -> None:
        for action in actions:
            if isinstance(action, Publish):
                if self.delivery.congested:
                    # The log writer is behind or the gateway overloaded: take this
                    # event in later, and read nothing more meanwhile (TCP pushes
                    # back on the publisher). Recipients' reads (acks, pongs) go on.
                    # The wait was ours, not the peer's silence. A log that stays
                    # unreachable (cluster mode: Redis) refuses instead, so the
                    # connection is read again and keeps heartbeating.
                    unreachable = await self.delivery.room(hold=UNREACHABLE_HOLD)
                    self.received()
                    if unreachable is not None:
                        self._refuse_unreachable(action.event, frame)
                        continue
                self._uncommitted += 1
                self.registry.publish(action.event, action.channels, self)
            elif isinstance(action, Send):
                if isinstance(action.message, m.Pong) and (self._uncommitted or self._replaying):
                    self._held.append(action.message)
                else:
                    self._send(action.message)
            elif isinstance(action, Verify):
                await self._verify(action)
            elif isinstance(action, Subscribe):
                self._join()
                self._log_open()
            elif isinstance(action, Acknowledge):
                self._acknowledge(action.seq)
            elif isinstance(action, StartHeartbeat):
                self._heartbeat = action.interval
                now = trio.current_time()
                self._ping_at = now + action.interval
                self._silent_at = now + 2 * action.interval
            elif isinstance(action, Close):
                self.close(action.code, action.reason)

    async def _verify(self, action: Verify) -> None:
        if action.refresh:
            await self._refresh(action)
            return
        principal = await self.registry.authenticate(self, action.token, action.client_type)
        if isinstance(principal, Principal):
            bucket = self.registry.identity_bucket(principal)
            more = self.machine.auth_accepted(principal, bucket)
            self._expire_at(principal)
            await self._plan_delivery(principal, more)
        else:
            more = self.machine.auth_rejected(*principal)
        await self._execute(more)

    async def _refresh(self, action: Verify) -> None:
        """A new ``auth`` on this active connection: a good token for the same
        identity moves the expiry on; anything else is refused, and the old
        credential keeps its deadline."""
        result = await self.registry.reauthenticate(self, action.token, action.client_type)
        if self.closing:
            return  # expired, revoked or shut down while the token was checked
        if isinstance(result, Principal):
            more = self.machine.refresh_accepted(result)
            if self.machine.principal is result:
                self._expire_at(result)
        else:
            more = self.machine.refresh_rejected(result[0])
        await self._execute(more)

    def _expire_at(self, principal: Principal) -> None:
        """Set the expiry deadline from the credential's Unix time, on trio's clock."""
        if principal.expires_at is None:
            self._expires_at = math.inf
        else:
            left = principal.expires_at - self.ctx.wall_clock()
            self._expires_at = trio.current_time() + max(0.0, left)

    # -- delivery ------------------------------------------------------------------

    async def _plan_delivery(self, principal: Principal, actions: list[Action]) -> None:
        """Decide, before ``auth_success`` goes out, where this connection's events
        start: replay from the log (durable identity or ``resume``) or live."""
        delivery = self.delivery
        extensions = self.machine.extensions or {}
        self._identity = principal.identity
        self._channels = next((a.channels for a in actions if isinstance(a, Subscribe)), ())
        self._durable = delivery.is_durable(principal)
        self._room_for = self.ctx.send_queue if self._durable else self.ctx.live_send_queue
        self._acks = "acks" in extensions
        self._with_seq = self._acks or "resume" in extensions
        self._projector = self.ctx.projections.for_recipient(
            principal.client_type, principal.user_id is not None
        )
        if self._durable and not self._acks and self.ctx.legacy_confirm > 0:
            self._taken_in = TakenIn(self.ctx.legacy_confirm)
        resume = extensions.get("resume")
        since = resume.get("since") if isinstance(resume, dict) else None
        others = self.registry.connections_of(principal.identity) > 1  # this one counts too
        self._start = await delivery.start_positions(
            principal, self._channels, since, others_online=others
        )
        if isinstance(resume, dict):
            # The grant is the dict the queued-to-be auth_success holds: fill it in.
            start = min(self._start.values(), default=delivery.head) if self._start else None
            resume["since"] = delivery.head if start is None else start
            resume["head"] = delivery.head
            gap = await delivery.gap(self._start) if self._start else None
            if gap is not None:
                # Retention took these before this client had them: the replay
                # starts after them, and the grant says so instead of hiding it.
                resume["since"] = gap[1]
                resume["gap"] = {"first": gap[0], "last": gap[1]}

    def _join(self) -> None:
        # Synchronous with subscribing: positions and the live head agree.
        self._positions = self._start
        base = self.delivery.head if self._start is None else min(self._start.values(), default=0)
        self._written = self._acked = base
        self.registry.subscribe(self, self._channels)
        if self._positions is not None:
            self._replaying = True
            self._start_catch_up()

    def _start_catch_up(self) -> None:
        if not self._catching_up and self._nursery is not None and not self.closing:
            self._catching_up = True
            self._nursery.start_soon(self._catch_up)

    async def _catch_up(self) -> None:
        """Read the log from ``_positions`` into the queue, a page at a time, each page
        once the last one is written, until a read reaches the committed head."""
        try:
            delivery = self.delivery
            limit = max(1, min(self.ctx.replay_batch, self.ctx.send_queue))
            while self._positions is not None and not self.closing:
                await self.wait_for_room(empty=True)
                positions = self._positions
                if positions is None or self.closing:
                    return
                entries, scanned = await delivery.read(positions, self._identity, limit)
                if entries:
                    run = Run.of(entries)
                    self._queue.append(run)
                    self._count(run, 1)
                if self._positions is not positions:
                    return  # cannot happen today; guards a future second writer of _positions
                if scanned >= delivery.head:
                    self._positions = None  # caught up: live from the next fan-out on
                    if self._replaying:
                        self._replaying = False
                        self._release_held()
                else:
                    self._positions = {c: max(p, scanned) for c, p in positions.items()}
                if not entries and scanned > self._written:
                    self._written = scanned
                    self._delivered_up_to(scanned, 0)
                self.pump()
        finally:
            self._catching_up = False

    def _overflow(self, entry: Entry) -> None:
        if self._durable:
            # Everything before this entry is queued; it and what follows are in
            # the log. Memory stays bounded and nothing is lost.
            self._positions = dict.fromkeys(self._channels, entry.seq - 1)
            self.delivery.count_catchup()
            return
        now = trio.current_time()
        if self._full_since is None:
            self._full_since = now
        if now - self._full_since >= self.ctx.queue_full_grace:
            self._slow_consumer()
            return
        # Shed the least important event: the newest of the lowest priority. Most
        # often that is the one arriving, decided without looking at the queue.
        least = max(level for level in range(LOW + 1) if self._levels[level] or level == 0)
        victim = entry
        if entry.priority < least:
            self._explode_runs()
            last = len(self._queue) - 1
            for back, item in enumerate(reversed(self._queue)):
                if isinstance(item, Entry) and item.priority == least:
                    victim = item
                    del self._queue[last - back]
                    self._queue.append(entry)
                    self._count(victim, -1)
                    self._count(entry, 1)
                    break
        why = f"queue full: shed {PRIORITY_NAMES.get(victim.priority, '?')} priority first"
        self.delivery.count_dropped()
        # One ledger row per run of drops: while every event arriving for this
        # connection is shed (nothing queued in between), they extend one range.
        # A row per event was millions of rows a minute when a thousand dashboards
        # fell behind, and the log writer's work starved the event loop (issue 19).
        dropping = self._dropping
        if (
            victim is entry
            and dropping is not None
            and dropping[2] == why
            and now - dropping[3] < LEDGER_SPAN
        ):
            self._dropping = (dropping[0], entry.seq, why, dropping[3])
            return
        self._note_drops()
        self._dropping = (victim.seq, victim.seq, why, now)
        if victim is not entry:
            self._note_drops()  # the arriving one was queued: the range ends here

    def _note_drops(self) -> None:
        if self._dropping is not None and self._identity is not None:
            first, last, why, _ = self._dropping
            self.delivery.note(self._identity, "dropped", first, last, self.id, why)
        self._dropping = None

    def _count(self, item: Entry | Run, sign: int) -> None:
        """``item`` joins (1) or leaves (-1) the queue: this connection's counts and
        the gateway's backlog, per priority, without walking any queue."""
        backlog = self.ctx.stats.backlog
        if isinstance(item, Run):
            self._events += sign * len(item.entries)
            self._bytes += sign * item.size
            for level, n in enumerate(item.levels):
                self._levels[level] += sign * n
                backlog[level] += sign * n
        else:
            self._events += sign
            self._bytes += sign * len(item.body)
            self._levels[item.priority] += sign
            backlog[item.priority] += sign

    def _forget_queued(self) -> None:
        backlog = self.ctx.stats.backlog
        for level, n in enumerate(self._levels):
            backlog[level] -= n
        self._events = self._bytes = 0
        self._levels = [0] * (LOW + 1)

    def _explode_runs(self) -> None:
        """Turn queued runs into their entries, so shedding can pick single events."""
        if any(isinstance(item, Run) for item in self._queue):
            items: list[bytes | Entry | Run] = []
            for item in self._queue:
                if isinstance(item, Run):
                    items.extend(item.entries)
                else:
                    items.append(item)
            self._queue = deque(items)

    def _slow_consumer(self) -> None:
        self.ctx.stats.count_slow_consumer()
        self._queue.clear()
        self._replies = 0
        self._forget_queued()
        # The error and the close wait behind one frame, not a whole write.
        self.cut_short()
        self._send(
            m.Error(
                payload=m.ErrorPayload(
                    error_code=ErrorCode.SLOW_CONSUMER.value,
                    error_message="too slow to keep up; disconnected",
                )
            )
        )
        self.close(CloseCode.SLOW_CONSUMER, ErrorCode.SLOW_CONSUMER.value, SHED_GRACE)

    def _refuse_unreachable(self, event: m.Event, frame: str | bytes) -> None:
        """Answer ``OVERLOADED`` for an event the log could not take, and keep it
        among the refused events (the seed's clients never read the error)."""
        refused = m.Error(
            payload=m.ErrorPayload(
                error_code=ErrorCode.OVERLOADED.value,
                error_message="the event log is unreachable; nothing was published, retry later",
                message_id=event.message_id,
                retry_after=UNREACHABLE_HOLD,
            )
        )
        self._send(refused)
        self._note_refused(frame or event.raw, event, [Send(refused)])

    def _release_held(self) -> None:
        if self._held and not self._uncommitted and not self._replaying:
            held, self._held = self._held, []
            for message in held:
                self._send(message)
            self.pump()

    def _range_due(self) -> float:
        """When the open range goes to the ledger however busy or quiet the
        connection is: ``LEDGER_SPAN`` after it began."""
        return math.inf if self._range is None else self._range[2] + LEDGER_SPAN

    def _note_range_soon(self) -> None:
        """The queue is empty: the open range goes to the ledger once ``LEDGER_SPAN``
        has passed since it began (now, if it has; else the reader wakes for it). A
        dashboard drains every pacer round: noting its range each time was 20 rows
        a second per connection, 3 million rows in three minutes of issue 19's soak."""
        due = self._range_due()
        if trio.current_time() >= due:
            self._note_range()
        else:
            self.wake_at(due)

    def _note_range(self) -> None:
        if self._range is not None and self._identity is not None:
            first, last, _, at = self._range
            # The row says when the range began: its events were written from then
            # on, so "written at" never comes after an ack of one of them.
            self.delivery.note(self._identity, "written", first, last, self.id, at=at)
        self._range = None

    def _acknowledge(self, seq: int) -> None:
        # Only what was written can be acked; an ack never moves anything back.
        seq = min(seq, self._written)
        if seq <= self._acked or self._identity is None:
            return
        self._note_range_before(seq)
        self.delivery.note(self._identity, "acked", self._acked + 1, seq, self.id)
        self._acked = seq
        if self._durable:
            self._advance(seq)

    def _advance(self, seq: int) -> None:
        """A durable recipient's cursor moves to ``seq``: after the row that says those
        events were written (``_note_range_before``)."""
        assert self._identity is not None
        self._note_range_before(seq)
        self.delivery.advance(self._identity, self._channels, seq)

    def _note_range_before(self, seq: int) -> None:
        """Note the open range now if ``seq`` is in it. A kill -9 loses a range still
        open; an event whose ack or cursor move was committed is never written again,
        so its "written" row must be in the ledger first (tests/faults/test_kill.py)."""
        if self._range is not None and self._range[0] <= seq:
            self._note_range()

    def _frames(
        self, batch: list[bytes | Entry | Run]
    ) -> tuple[list[bytes | memoryview], int, int]:
        """The frames to write for ``batch``, and the first and last event seq among them
        (expired events are dropped here, and count as handled)."""
        frames: list[bytes | memoryview] = []
        first = last = 0
        now = self.ctx.wall_clock()
        stats = self.ctx.stats
        for item in batch:
            if isinstance(item, bytes):
                frames.append(item)
            elif isinstance(item, Run) and (item.expires_at is None or now <= item.expires_at):
                frames.append(item.frames(self._with_seq, self._projector))
                for type_, n in item.types.items():
                    stats.count_out(type_, n)
                first = first or item.first
                last = item.last
            else:
                for entry in item.entries if isinstance(item, Run) else (item,):
                    last = entry.seq
                    if entry.expires_at is not None and now > entry.expires_at:
                        assert self._identity is not None
                        self.delivery.expire(entry, self._identity, self.id)
                        continue
                    first = first or entry.seq
                    frames.append(entry.view(self._projector, self._with_seq))
                    stats.count_out(entry.type)
        return frames, first, last

    def _written_up_to(self, first: int, last: int, batch: list[bytes | Entry | Run]) -> None:
        if last <= 0 or self._identity is None:
            return
        self._written = max(self._written, last)
        if first:
            # One ledger row per connection per LEDGER_SPAN seconds, not per write: a
            # range says "everything routed here in it was written", so ranges join.
            now = trio.current_time()
            if self._range is not None and now - self._range[2] < LEDGER_SPAN:
                self._range = (self._range[0], last, self._range[2], self._range[3])
            else:
                self._note_range()
                self._range = (first, last, now, self.ctx.wall_clock())
        events = sum(
            len(item.entries) if isinstance(item, Run) else 1
            for item in batch
            if not isinstance(item, bytes)
        )
        self._delivered_up_to(last, events)
        for item in batch:
            if isinstance(item, Entry | Run):
                self.delivery.observe_latency(item if isinstance(item, Entry) else item.entries[0])
                break

    # -- when a client without acks has its events (docs/delivery.md, "Clients without acks")

    def _delivered_up_to(self, seq: int, events: int) -> None:
        """Everything for this connection up to ``seq`` has been written: a durable
        recipient's cursor moves once it counts as delivered (catsock/takenin.py)."""
        if not self._durable or self._acks or self._identity is None:
            return
        if self._taken_in is None:
            self._advance(seq)
            return
        self._taken_in.written(self.link.sent, seq, events)
        now = trio.current_time()
        if now >= self._confirm_at:
            self._confirm(now)  # a busy stream is checked as it goes, not only when idle
        elif self._confirm_at == math.inf:
            self._confirm_at = now + CONFIRM_EVERY
            self.wake_at(self._confirm_at)

    def _confirm(self, now: float) -> None:
        assert self._taken_in is not None
        seq = self._taken_in.check(now, self.link.sent, self.link.peer_progress())
        if seq is not None and self._identity is not None:
            self._advance(seq)
        self._confirm_at = now + CONFIRM_EVERY if self._taken_in else math.inf
        self.wake_at(self._confirm_at)

    def _send(self, message: m.ControlMessage) -> None:
        text = self.ctx.codec.encode(message)
        self.ctx.stats.count_out(message.type)
        if isinstance(message, m.Error):
            self.ctx.stats.count_error(message.payload.error_code)
            self.ctx.record_log(
                MessageLogged("out", "error", None, self.id, len(text), text, self.ctx.wall_clock())
            )
        self.send_reply(ws_frame(0x1, text.encode("utf-8")))

    # -- logging (rows are buffered; the writer commits them off the loop) -----------

    def _log_open(self) -> None:
        p = self.principal
        assert p is not None
        self.ctx.record_log(
            ConnectionOpened(self.id, p.client_type, p.identity, self.remote, self.connected_at)
        )

    def _log_close(self) -> None:
        if self.principal is None:
            # Never authenticated: still worth a row (failed auths are how attacks show).
            self.ctx.record_log(
                ConnectionOpened(self.id, None, None, self.remote, self.connected_at)
            )
        self.ctx.record_log(
            ClosedRow(self.id, self.ctx.wall_clock(), self.close_code, self.close_reason)
        )

    def _log_inbound(self, message: m.Message, frame: str | bytes, actions: list[Action]) -> None:
        size = len(frame)
        if isinstance(message, m.Event):
            published = any(isinstance(a, Publish) for a in actions)
            if not published:
                self._note_refused(frame, message, actions)
            elif self.ctx.events_logged:
                return  # one write per event: the event log's row is its record
            row = MessageLogged(
                "in",
                message.type,
                message.message_id,
                self.id,
                size,
                message.raw,
                self.ctx.wall_clock(),
            )
        elif isinstance(message, m.Auth):
            # The auth message carries the token: its content is never logged.
            row = MessageLogged("in", "auth", None, self.id, size, None, self.ctx.wall_clock())
        else:
            if isinstance(message, m.Ping):
                self._log_heartbeat()
            return
        self.ctx.record_log(row)

    def _note_refused(
        self, frame: str | bytes, event: m.Event | None, actions: list[Action]
    ) -> None:
        """Keep a refused event (catsock/refusals.py): the seed's clients never read
        the ``error`` that says so."""
        error = next(
            (a.message for a in actions if isinstance(a, Send) and isinstance(a.message, m.Error)),
            None,
        )
        if error is None:
            return
        row = refusal(
            self.principal,
            error.payload.error_code,
            error.payload.error_message,
            frame,
            event,
            connection_id=self.id,
            transport="websocket",
            at=self.ctx.wall_clock(),
            max_body=self.ctx.codec.max_size,
        )
        if row is not None:
            self.ctx.record_log(row)
            self.ctx.stats.count_refused(row.reason)

    def _log_heartbeat(self) -> None:
        now = self.ctx.wall_clock()
        if self.principal is not None and now - self._last_heartbeat_log >= HEARTBEAT_LOG_EVERY:
            self._last_heartbeat_log = now
            self.ctx.record_log(ConnectionHeartbeat(self.id, now))
