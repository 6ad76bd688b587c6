"""One client connection: a nursery with a reader, a writer and (if negotiated) a heartbeat.

The reader decodes frames and feeds ``protocol.ConnectionMachine``; this module
only carries out the actions the machine returns. The writer drains the
connection's bounded queue, writing everything pending in one system call. When
any task ends, the connection's scope ends and ``finally`` does the cleanup
(unsubscribe, log the disconnect).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from protocol import (
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
)
from protocol import messages as m
from storage import ConnectionClosed as ClosedRow
from storage import ConnectionHeartbeat, ConnectionOpened, MessageLogged

from .wsadapter import check_internals, send_frames, text_frame

if TYPE_CHECKING:
    from .server import Gateway

__all__ = ["Connection"]

logger = logging.getLogger("catsock.connection")

#: How long a closing connection may take to flush and finish the close handshake.
CLOSE_GRACE = 5.0
#: At most one heartbeat row per connection per this many seconds in the log.
HEARTBEAT_LOG_EVERY = 60.0


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
        self._queue: deque[bytes] = deque()
        self._max_queue = gateway.config.limits.send_queue
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

    def deliver(self, frame: bytes) -> None:
        """Queue an encoded frame; never blocks. A recipient whose queue is full is too slow
        to keep up and is disconnected (close 4001) rather than grow memory."""
        if self._close is not None:
            return
        if len(self._queue) >= self._max_queue:
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
            return
        self._queue.append(frame)
        self._writer_lot.unpark()

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
        return self._close is None

    async def _execute(self, actions: list[Action], nursery: trio.Nursery) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self.gateway.publish(action.event, action.channels, self)
            elif isinstance(action, Send):
                self._send(action.message)
            elif isinstance(action, Verify):
                principal = await self.gateway.authenticate(self, action.token, action.client_type)
                if isinstance(principal, Principal):
                    bucket = self.gateway.identity_bucket(principal)
                    more = self.machine.auth_accepted(principal, bucket)
                else:
                    more = self.machine.auth_rejected(*principal)
                await self._execute(more, nursery)
            elif isinstance(action, Subscribe):
                self.gateway.subscribe(self, action.channels)
                self._log_open()
            elif isinstance(action, StartHeartbeat):
                nursery.start_soon(self._heartbeat, action.interval)
            elif isinstance(action, Close):
                self.close(action.code, action.reason)

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
                    await send_frames(self.ws, batch)
                    self.gateway.stats.delivered += len(batch)
                elif self._close is not None:
                    break
                else:
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
