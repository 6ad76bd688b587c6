"""The connection loop: connect, authenticate, serve one connection, reconnect with backoff.

Per connection there are four tasks in one nursery: the reader (answers to
publishes, events into the receive buffer), the writer (publishing.py), the
acker (receiving.py) and the watchdog (pings when idle; nothing for two
heartbeat intervals means a dead link). Whatever ends one of them ends the
connection; transient failures reconnect on the ``Backoff`` schedule, which
starts again after every authenticated connection. Apart from ``aclose``, only
``AuthError`` (the token is refused, so retrying cannot help) and
``ConnectError`` (``max_attempts`` failures in a row) end the loop.
"""

from __future__ import annotations

import ssl
from collections import deque
from typing import Any, Final

import orjson
import trio
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection

from protocol.codec import json_object

from .core import _close_budget, _error_fields, _Session, logger
from .publishing import _Publishing
from .receiving import _Receiving
from .values import AuthError, ConnectError


class _LinkDead(Exception):
    """Nothing arrived for two heartbeat intervals."""


class _Refused(Exception):
    """The gateway answered ``auth`` with an error other than AUTH_FAILED (worth retrying:
    CONNECTION_LIMIT, CONNECTION_TIMEOUT, ...)."""


_TRANSIENT: Final = (
    OSError,
    trio.BrokenResourceError,
    trio.TooSlowError,
    trio_websocket.HandshakeError,
    ConnectionClosed,
    _LinkDead,
    _Refused,
)


class _Connection(_Publishing, _Receiving):
    """``Client``'s connection loop."""

    # -- connecting ----------------------------------------------------------------------

    async def _connect_loop(self, task_status: trio.TaskStatus[None]) -> None:
        attempt = 0  # reconnect attempts since the last successful auth
        failures = 0
        first = True
        while not self._closing:
            if not first:
                attempt += 1
                delay = self.backoff.delay(attempt, self.rng)
                logger.info("reconnecting in %.1f s (%s)", delay, _describe(self.last_error))
                await trio.sleep(delay)
            first = False
            try:
                await self._connect_once(task_status)
            except AuthError:
                raise
            except _TRANSIENT as exc:
                if self._closing:
                    return
                self.last_error = exc
                failures += 1
                logger.warning("connection to %s failed: %s", self.url, _describe(exc))
                if self.max_attempts is not None and failures >= self.max_attempts:
                    raise ConnectError(
                        f"{failures} attempts to connect to {self.url} failed; "
                        f"last: {_describe(exc)}"
                    ) from exc
                continue
            # A connection was authenticated (and has ended): start the schedule again.
            attempt = failures = 0
            task_status = trio.TASK_STATUS_IGNORED

    async def _connect_once(self, task_status: trio.TaskStatus[None]) -> None:
        target = self._target
        with trio.fail_after(self.connect_timeout):
            if target.tls:
                context = self._ssl or ssl.create_default_context()
                stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
                stream = await trio.open_ssl_over_tcp_stream(
                    target.host, target.port, ssl_context=context, https_compatible=True
                )
            else:
                stream = await trio.open_tcp_stream(target.host, target.port)
        try:
            async with trio.open_nursery() as ws_nursery:
                with trio.fail_after(self.connect_timeout):
                    ws = await trio_websocket.wrap_client_stream(
                        ws_nursery, stream, target.host_header, target.resource
                    )
                    session = await self._authenticate(ws)
                task_status.started()
                try:
                    await self._serve(session)
                finally:
                    self._session = None
                    self._connected = trio.Event()
                    with trio.move_on_after(_close_budget(self.close_timeout)) as scope:
                        scope.shield = True
                        await ws.aclose(1000, "client closing")
                        if self._closing:
                            # aclose() started the handshake: trio-websocket's reader
                            # must live until the gateway's close frame is in.
                            await self._handshake_done.wait()
                ws_nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)

    async def _authenticate(self, ws: WebSocketConnection) -> _Session:
        extensions: dict[str, Any] = {}
        if self.acks:
            extensions["acks"] = {}
        if self.resume:
            extensions["resume"] = {} if self._cursor is None else {"since": self._cursor}
        if self.heartbeat is not None:
            extensions["heartbeat"] = {"interval": self.heartbeat}
        auth = {
            "type": "auth",
            "token": self.token,
            "client_type": self.client_type,
            "extensions": extensions,
        }
        await ws.send_message(orjson.dumps(auth).decode())
        reply = json_object(await ws.get_message())
        kind = reply.get("type")
        if kind == "error":
            code, message = _error_fields(reply)
            if code == "AUTH_FAILED":
                raise AuthError(code, message)
            raise _Refused(f"{code}: {message}")
        if kind != "auth_success":
            raise trio_websocket.HandshakeError(f"expected auth_success, got {kind!r}")
        granted = reply.get("extensions")
        granted = granted if isinstance(granted, dict) else {}
        beat = granted.get("heartbeat")
        interval = beat.get("interval") if isinstance(beat, dict) else None
        if not isinstance(interval, int | float) or isinstance(interval, bool):
            interval = self.heartbeat
        self.connections += 1
        session = _Session(
            ws,
            self.connections,
            str(reply.get("connection_id")),
            granted,
            "acks" in granted,
            None if interval is None else float(interval),
            trio.current_time(),
        )
        self._resumed(granted.get("resume"))
        logger.info("connected to %s as %s (%s)", self.url, self.client_type, session.connection_id)
        return session

    def _resumed(self, grant: Any) -> None:
        """Where this connection's replay starts; a live start counts as having seen ``head``."""
        if isinstance(grant, dict) and self._cursor is None:
            since, head = grant.get("since"), grant.get("head")
            start = since if since is not None else head
            if isinstance(start, int) and not isinstance(start, bool):
                self._cursor = start
        if self._received is None:
            self._received = self._cursor

    async def _serve(self, session: _Session) -> None:
        """Run one authenticated connection until it ends."""
        # Everything unanswered goes again, in order.
        again = [p for p in self._inflight.values() if not p._answered]
        for publication in self._queue:
            publication._queued = False
        self._queue = deque(again)
        for publication in again:
            publication._queued = True
        self._acked = self._processed
        self._unacked = 0
        self._ack_due = False
        self._ack_deadline = None
        self._session = session
        self._connected.set()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, session, nursery)
                nursery.start_soon(self._writer, session)
                if session.acks:
                    nursery.start_soon(self._acker)
                if session.heartbeat is not None:
                    nursery.start_soon(self._watchdog, session, session.heartbeat)
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError) as group:
            self.last_error = group.exceptions[0]
        except* _LinkDead as group:
            self.last_error = group.exceptions[0]
        logger.info("disconnected from %s: %s", self.url, _describe(self.last_error))

    # -- per connection ------------------------------------------------------------------

    async def _reader(self, session: _Session, nursery: trio.Nursery) -> None:
        try:
            while True:
                data = await session.ws.get_message()
                session.last_arrival = trio.current_time()
                try:
                    message = json_object(data)
                except ValueError:
                    logger.warning("ignoring a frame that is not a JSON object")
                    continue
                if "payload" in message and "message_id" in message and "version" in message:
                    await self._receive_event(message, data)
                elif message.get("type") == "accepted":
                    self._on_accepted(message)
                elif message.get("type") == "error":
                    self._on_error(session, message)
        except ConnectionClosed as exc:
            reason = exc.reason
            session.close_code = None if reason is None else reason.code
            self.last_error = exc
            nursery.cancel_scope.cancel()

    async def _watchdog(self, session: _Session, interval: float) -> None:
        """Ping after ``interval`` of quiet; nothing for ``2 * interval`` is a dead link."""
        while True:
            quiet_until = session.last_arrival + interval
            if trio.current_time() < quiet_until:
                await trio.sleep_until(quiet_until)
                continue
            with trio.move_on_at(session.last_arrival + 2 * interval):
                await session.ws.ping()
                session.last_arrival = trio.current_time()
            if trio.current_time() >= session.last_arrival + 2 * interval:
                raise _LinkDead(f"nothing from the gateway for {2 * interval:g} s")


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    if isinstance(exc, ConnectionClosed) and exc.reason is not None:
        reason = exc.reason
        return f"closed with {reason.code}" + (f" ({reason.reason})" if reason.reason else "")
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"handshake refused with HTTP {exc.status_code}"
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc) or type(exc).__name__
        # trio's "all attempts to connect ... failed" keeps the reasons in its cause.
        cause = exc.__cause__
        causes = cause.exceptions if isinstance(cause, BaseExceptionGroup) else [cause]
        reasons = sorted({c.strerror for c in causes if isinstance(c, OSError) and c.strerror})
        if reasons and not any(reason in text for reason in reasons):
            text += f" ({', '.join(reasons)})"
        return text
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return str(exc) or type(exc).__name__
