"""One client connection: a nursery with a reader, a writer and (if negotiated) a heartbeat.

The reader decodes frames and feeds ``protocol.ConnectionMachine``; this module
only carries out the actions the machine returns. The writer drains the
connection's bounded queue, writing everything pending in one system call. When
any task ends, the connection's scope ends and ``finally`` does the cleanup
(unsubscribe, log the disconnect).

Delivery (docs/delivery.md): a connection is either *live* (the hub offers it
each committed event) or *catching up* (its writer reads the log from its
positions, and live offers are ignored because the log has them). Catching up
ends when a read reaches the committed head with no await in between, so the
switch to live has no gap and no reordering.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

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
from storage import ConnectionClosed as ClosedRow
from storage import ConnectionHeartbeat, ConnectionOpened, MessageLogged

from .delivery import PRIORITY_NAMES, Entry
from .wsadapter import check_internals, send_frames, text_frame

if TYPE_CHECKING:
    from .server import Gateway

__all__ = ["Connection"]

logger = logging.getLogger("catsock.connection")

#: How long a closing connection may take to flush and finish the close handshake.
CLOSE_GRACE = 5.0
#: At most one heartbeat row per connection per this many seconds in the log.
HEARTBEAT_LOG_EVERY = 60.0
#: Writes within this many seconds share one "written" ledger row.
LEDGER_SPAN = 1.0


class Connection:
    def __init__(
        self, gateway: Gateway, ws: WebSocketConnection, connection_id: str, remote: str
    ) -> None:
        self.gateway = gateway
        self.ws = ws
        self.id = connection_id
        self.remote = remote
        self.machine = ConnectionMachine(
            connection_id,
            gateway.machine_config,
            clock=trio.current_time,
            wall_clock=gateway.wall_clock,
        )
        self.connected_at = gateway.wall_clock()
        self._queue: deque[bytes | Entry] = deque()
        self._max_queue = gateway.config.limits.send_queue
        self._grace = gateway.config.delivery.queue_full_grace
        self._full_since: float | None = None
        # Delivery state, set once authenticated (see the module docstring).
        self._identity: str | None = None
        self._channels: tuple[str, ...] = ()
        self._durable = False
        self._acks = False
        self._with_seq = False
        self._start: dict[str, int] | None = None
        self._positions: dict[str, int] | None = None  # not None: catching up
        self._written = 0  # the highest seq written (or expired) for this connection
        self._acked = 0
        self._range: tuple[int, int, float] | None = None  # written, not yet in the ledger
        # A pong answers after everything before it: this connection's earlier
        # publishes are committed and fanned out, and its first replay is queued.
        self._uncommitted = 0
        self._replaying = False
        self._held: list[m.ControlMessage] = []
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._close: Close | None = None
        self._scope = trio.CancelScope()
        self._heartbeat_scope: trio.CancelScope | None = None
        self._heartbeat_window = 0.0
        self._last_heartbeat_log = 0.0
        self.close_code: int | None = None
        self.close_reason: str | None = None

    @property
    def principal(self) -> Principal | None:
        return self.machine.principal

    @property
    def queued(self) -> int:
        """Frames waiting for the writer (for metrics)."""
        return len(self._queue)

    # -- called by others --------------------------------------------------------

    def offer(self, entry: Entry) -> None:
        """Queue a committed event for writing; never blocks, never grows memory past
        the queue bound (see ``_overflow``)."""
        if self._close is not None or self._positions is not None:
            return  # closing, or catching up: the log has it
        if entry.sender == self._identity:
            return  # nobody receives its own events
        if len(self._queue) >= self._max_queue:
            self._overflow(entry)
            return
        self._queue.append(entry)
        self._writer_lot.unpark()

    def accepted(self, entry: Entry) -> None:
        """Our publish is committed: tell the client, if it negotiated acks."""
        self._uncommitted -= 1
        if self._acks and self._close is None:
            self._send(
                m.Accepted(
                    message_id=entry.message_id,
                    seq=entry.effective_seq,
                    duplicate=entry.duplicate_of is not None,
                    timestamp=iso_timestamp(self.gateway.wall_clock()),
                )
            )
        self._release_held()

    def _release_held(self) -> None:
        if self._held and not self._uncommitted and not self._replaying:
            held, self._held = self._held, []
            for message in held:
                self._send(message)

    def _overflow(self, entry: Entry) -> None:
        delivery = self.gateway.delivery
        if self._durable:
            # Everything before this entry is queued; it and what follows are in
            # the log. Memory stays bounded and nothing is lost.
            self._positions = dict.fromkeys(self._channels, entry.seq - 1)
            delivery.catchups += 1
            self._writer_lot.unpark()
            return
        now = trio.current_time()
        if self._full_since is None:
            self._full_since = now
        if now - self._full_since >= self._grace:
            self._slow_consumer()
            return
        # Shed the least important event: the newest of the lowest priority.
        victim, index = entry, -1
        last = len(self._queue) - 1
        for back, item in enumerate(reversed(self._queue)):
            if isinstance(item, Entry) and item.priority > victim.priority:
                victim, index = item, last - back
        if index >= 0:
            del self._queue[index]
            self._queue.append(entry)
        why = f"queue full: shed {PRIORITY_NAMES.get(victim.priority, '?')} priority first"
        assert self._identity is not None
        delivery.drop(victim, self._identity, self.id, why)

    def _slow_consumer(self) -> None:
        self.gateway.stats.slow_consumers += 1
        self._queue.clear()
        self._send(
            m.Error(
                payload=m.ErrorPayload(
                    error_code=ErrorCode.SLOW_CONSUMER.value,
                    error_message="too slow to keep up; disconnected",
                )
            )
        )
        self.close(CloseCode.SLOW_CONSUMER, ErrorCode.SLOW_CONSUMER.value)

    def close(self, code: int, reason: str) -> None:
        """Flush what is queued, then close with ``code``; bounded by ``CLOSE_GRACE``."""
        if self._close is not None:
            return
        self._close = Close(CloseCode(code), reason)
        self._writer_lot.unpark()
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + CLOSE_GRACE)

    # -- the connection's life ---------------------------------------------------------

    async def run(self) -> None:
        check_internals(self.ws)
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._reader, nursery)
        finally:
            self._note_range()
            self.gateway.connection_ended(self)
            if self.machine.state is not State.CLOSED:
                self.machine.closed()
            self._log_close()
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await self.ws.aclose()

    async def _reader(self, nursery: trio.Nursery) -> None:
        try:
            with trio.move_on_after(self.gateway.config.auth_timeout) as auth_deadline:
                while self.machine.state is not State.ACTIVE:
                    if not await self._receive_one(nursery):
                        return
            if auth_deadline.cancelled_caught:
                await self._execute(self.machine.timeout(), nursery)
                return
            while await self._receive_one(nursery):
                pass
        except ConnectionClosed as exc:
            reason = exc.reason
            if reason is not None and self.close_code is None:
                self.close_code, self.close_reason = reason.code, reason.reason
            nursery.cancel_scope.cancel()

    async def _receive_one(self, nursery: trio.Nursery) -> bool:
        """Read and handle one frame; False once the connection is closing."""
        frame = await self.ws.get_message()
        if self._heartbeat_scope is not None:
            self._heartbeat_scope.deadline = trio.current_time() + self._heartbeat_window
        try:
            message = self.gateway.codec.decode(frame)
        except ProtocolError as error:
            self.gateway.stats.count_in("other")
            actions = self.machine.receive_invalid(error)
        else:
            self.gateway.stats.count_in(message.type)
            actions = self.machine.receive(message)
            self._log_inbound(message, len(frame))
        await self._execute(actions, nursery)
        if self.gateway.delivery.congested:
            await self.gateway.delivery.room()  # the log writer is behind: stop reading
        return self._close is None

    async def _execute(self, actions: list[Action], nursery: trio.Nursery) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self._uncommitted += 1
                self.gateway.publish(action.event, action.channels, self)
            elif isinstance(action, Send):
                if isinstance(action.message, m.Pong) and (self._uncommitted or self._replaying):
                    self._held.append(action.message)
                else:
                    self._send(action.message)
            elif isinstance(action, Verify):
                principal = await self.gateway.authenticate(self, action.token, action.client_type)
                if isinstance(principal, Principal):
                    bucket = self.gateway.identity_bucket(principal)
                    more = self.machine.auth_accepted(principal, bucket)
                    await self._plan_delivery(principal, more)
                else:
                    more = self.machine.auth_rejected(*principal)
                await self._execute(more, nursery)
            elif isinstance(action, Subscribe):
                self._join()
                self._log_open()
            elif isinstance(action, Acknowledge):
                self._acknowledge(action.seq)
            elif isinstance(action, StartHeartbeat):
                nursery.start_soon(self._heartbeat, action.interval)
            elif isinstance(action, Close):
                self.close(action.code, action.reason)

    # -- delivery ------------------------------------------------------------------

    async def _plan_delivery(self, principal: Principal, actions: list[Action]) -> None:
        """Decide, before ``auth_success`` goes out, where this connection's events
        start: replay from the log (durable identity or ``resume``) or live."""
        delivery = self.gateway.delivery
        extensions = self.machine.extensions or {}
        self._identity = principal.identity
        self._channels = next((a.channels for a in actions if isinstance(a, Subscribe)), ())
        self._durable = delivery.is_durable(principal)
        self._acks = "acks" in extensions
        self._with_seq = self._acks or "resume" in extensions
        resume = extensions.get("resume")
        since = resume.get("since") if isinstance(resume, dict) else None
        others = self.gateway.connections_of(principal.identity) > 1  # this one counts too
        self._start = await delivery.start_positions(
            principal, self._channels, since, others_online=others
        )
        if isinstance(resume, dict):
            # The grant is the dict the queued-to-be auth_success holds: fill it in.
            start = min(self._start.values(), default=delivery.head) if self._start else None
            resume["since"] = delivery.head if start is None else start
            resume["head"] = delivery.head

    def _join(self) -> None:
        delivery = self.gateway.delivery
        # Synchronous with subscribing: positions and the live head agree.
        self._positions = self._start
        base = delivery.head if self._start is None else min(self._start.values(), default=0)
        self._written = self._acked = base
        self.gateway.subscribe(self, self._channels)
        if self._positions is not None:
            self._replaying = True
            self._writer_lot.unpark()

    def _note_range(self) -> None:
        if self._range is not None and self._identity is not None:
            first, last, _ = self._range
            self.gateway.delivery.note(self._identity, "written", first, last, self.id)
        self._range = None

    def _acknowledge(self, seq: int) -> None:
        # Only what was written can be acked; an ack never moves anything back.
        seq = min(seq, self._written)
        if seq <= self._acked or self._identity is None:
            return
        delivery = self.gateway.delivery
        delivery.note(self._identity, "acked", self._acked + 1, seq, self.id)
        self._acked = seq
        if self._durable:
            delivery.advance(self._identity, self._channels, seq)

    async def _catch_up(self, positions: dict[str, int]) -> None:
        delivery = self.gateway.delivery
        limit = max(1, min(self.gateway.config.delivery.replay_batch, self._max_queue))
        entries, scanned = await delivery.read(positions, self._identity, limit)
        self._queue.extend(entries)
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
            if self._durable and not self._acks and self._identity is not None:
                delivery.advance(self._identity, self._channels, scanned)

    def _frames(self, batch: list[bytes | Entry]) -> tuple[list[bytes], int, int]:
        """The frames to write for ``batch``, and the first and last event seq among them
        (expired events are dropped here, and count as handled)."""
        frames: list[bytes] = []
        first = last = 0
        now = self.gateway.wall_clock()
        for item in batch:
            if isinstance(item, bytes):
                frames.append(item)
                continue
            last = item.seq
            if item.expires_at is not None and now > item.expires_at:
                assert self._identity is not None
                self.gateway.delivery.expire(item, self._identity, self.id)
                continue
            first = first or item.seq
            frames.append(item.frame(self._with_seq))
            self.gateway.stats.count_out(item.type)
        return frames, first, last

    def _written_up_to(self, first: int, last: int, batch: list[bytes | Entry]) -> None:
        delivery = self.gateway.delivery
        if last <= 0 or self._identity is None:
            return
        self._written = max(self._written, last)
        if first:
            # One ledger row per connection per LEDGER_SPAN seconds, not per write: a
            # range says "everything routed here in it was written", so ranges join.
            now = trio.current_time()
            if self._range is not None and now - self._range[2] < LEDGER_SPAN:
                self._range = (self._range[0], last, self._range[2])
            else:
                self._note_range()
                self._range = (first, last, now)
        if self._durable and not self._acks:
            delivery.advance(self._identity, self._channels, last)
        for item in batch:
            if isinstance(item, Entry):
                delivery.observe_latency(item)
                break

    def _send(self, message: m.ControlMessage) -> None:
        text = self.gateway.codec.encode(message)
        self.gateway.stats.count_out(message.type)
        if isinstance(message, m.Error):
            self.gateway.stats.count_error(message.payload.error_code)
            self.gateway.log.record(
                MessageLogged(
                    "out", "error", None, self.id, len(text), text, self.gateway.wall_clock()
                )
            )
        self._queue.append(text_frame(text))
        self._writer_lot.unpark()

    async def _writer(self) -> None:
        queue = self._queue
        try:
            while True:
                if queue:
                    batch = list(queue)
                    queue.clear()
                    self._full_since = None
                    frames, first, last = self._frames(batch)
                    await send_frames(self.ws, frames)
                    self.gateway.stats.delivered += len(frames)
                    self._written_up_to(first, last, batch)
                elif self._close is not None:
                    break
                elif self._positions is not None:
                    await self._catch_up(self._positions)
                else:
                    self._note_range()  # idle: let the ledger know now
                    await self._writer_lot.park()
            self.close_code, self.close_reason = self._close.code, self._close.reason
            await self.ws.aclose(self._close.code, self._close.reason)
        except ConnectionClosed:
            pass
        self._scope.cancel()

    async def _heartbeat(self, interval: float) -> None:
        """Negotiated clients only: ping every ``interval``; any inbound frame or
        pong pushes the deadline; silence for two intervals closes 4000."""
        self._heartbeat_window = 2 * interval
        with trio.CancelScope(deadline=trio.current_time() + 2 * interval) as scope:
            self._heartbeat_scope = scope
            while True:
                await trio.sleep(interval)
                await self.ws.ping()
                scope.deadline = trio.current_time() + self._heartbeat_window
                self._log_heartbeat()
        self._heartbeat_scope = None
        if scope.cancelled_caught and self._close is None:
            for action in self.machine.timeout():
                if isinstance(action, Close):
                    self.close(action.code, action.reason)

    # -- logging (rows are buffered; the writer commits them off the loop) -----------

    def _log_open(self) -> None:
        p = self.principal
        assert p is not None
        self.gateway.log.record(
            ConnectionOpened(self.id, p.client_type, p.identity, self.remote, self.connected_at)
        )

    def _log_close(self) -> None:
        if self.principal is None:
            # Never authenticated: still worth a row (failed auths are how attacks show).
            self.gateway.log.record(
                ConnectionOpened(self.id, None, None, self.remote, self.connected_at)
            )
        self.gateway.log.record(
            ClosedRow(self.id, self.gateway.wall_clock(), self.close_code, self.close_reason)
        )

    def _log_inbound(self, message: m.Message, size: int) -> None:
        if isinstance(message, m.Event):
            row = MessageLogged(
                "in",
                message.type,
                message.message_id,
                self.id,
                size,
                message.raw,
                self.gateway.wall_clock(),
            )
        elif isinstance(message, m.Auth):
            # The auth message carries the token: its content is never logged.
            row = MessageLogged("in", "auth", None, self.id, size, None, self.gateway.wall_clock())
        else:
            if isinstance(message, m.Ping):
                self._log_heartbeat()
            return
        self.gateway.log.record(row)

    def _log_heartbeat(self) -> None:
        now = self.gateway.wall_clock()
        if self.principal is not None and now - self._last_heartbeat_log >= HEARTBEAT_LOG_EVERY:
            self._last_heartbeat_log = now
            self.gateway.log.record(ConnectionHeartbeat(self.id, now))
