"""The connection loop: connect, authenticate, serve one connection, reconnect with backoff.

Per connection there are three tasks in one nursery: the reader (feeds frames
to the sans-IO core and acts on what it makes of them), the writer
(publishing.py: sends what the core says is next, acks included) and the
watchdog (pings when idle; nothing for two heartbeat intervals means a dead
link). Whatever ends one of them ends the connection; transient failures
reconnect on the core's ``Reconnects`` schedule, which starts again after every
authenticated connection. Apart from ``aclose``, only
``AuthError`` (the token is refused, so retrying cannot help) and
``ConnectError`` (``max_attempts`` failures in a row) end the loop.
"""

from __future__ import annotations

import ssl
from typing import Final

import trio
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection

from .core import _close_budget, _Session, logger
from .publishing import _Publishing
from .receiving import _Receiving
from .sansio import LinkDead, TransientError
from .values import AuthError, ConnectError

_TRANSIENT: Final = (
    OSError,
    trio.BrokenResourceError,
    trio.TooSlowError,
    trio_websocket.HandshakeError,
    ConnectionClosed,
    TransientError,
)


class _Connection(_Publishing, _Receiving):
    """``Client``'s connection loop."""

    # -- connecting ----------------------------------------------------------------------

    async def _connect_loop(self, task_status: trio.TaskStatus[None]) -> None:
        while not self._closing:
            delay = self._reconnects.delay()
            if delay:
                logger.info("reconnecting in %.1f s (%s)", delay, _describe(self.last_error))
                await trio.sleep(delay)
            try:
                await self._connect_once(task_status)
            except AuthError:
                raise
            except _TRANSIENT as exc:
                if self._closing:
                    return
                self.last_error = exc
                logger.warning("connection to %s failed: %s", self.url, _describe(exc))
                try:
                    self._reconnects.failed(_describe(exc))
                except ConnectError as error:
                    raise error from exc
                continue
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
        await ws.send_message(self._proto.auth_frame())
        grant = self._proto.connection_made(await ws.get_message(), trio.current_time())
        self._reconnects.connected()
        logger.info("connected to %s as %s (%s)", self.url, self.client_type, grant.connection_id)
        return _Session(ws, grant)

    async def _serve(self, session: _Session) -> None:
        """Run one authenticated connection until it ends."""
        self._session = session
        self._connected.set()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, session, nursery)
                nursery.start_soon(self._writer, session)
                if session.grant.heartbeat is not None:
                    nursery.start_soon(self._watchdog, session)
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError) as group:
            self.last_error = group.exceptions[0]
        except* LinkDead as group:
            self.last_error = group.exceptions[0]
        finally:
            self._proto.connection_lost()
        logger.info("disconnected from %s: %s", self.url, _describe(self.last_error))

    # -- per connection ------------------------------------------------------------------

    async def _reader(self, session: _Session, nursery: trio.Nursery) -> None:
        try:
            while True:
                data = await session.ws.get_message()
                self._proto.receive_frame(data, trio.current_time())
                await self._take_events()
                self._writer_lot.unpark_all()
        except ConnectionClosed as exc:
            reason = exc.reason
            session.close_code = None if reason is None else reason.code
            self.last_error = exc
            nursery.cancel_scope.cancel()

    async def _watchdog(self, session: _Session) -> None:
        """Ping after a heartbeat interval of quiet; nothing for two is a dead link."""
        while True:
            ping_at, dead_at = self._proto.ping_at(), self._proto.dead_at()
            if ping_at is None or dead_at is None:
                return
            if trio.current_time() < ping_at:
                await trio.sleep_until(ping_at)
                continue
            with trio.move_on_at(dead_at):
                await session.ws.ping()
                self._proto.arrived(trio.current_time())
            dead_at = self._proto.dead_at() or dead_at
            if trio.current_time() >= dead_at:
                interval = session.grant.heartbeat or 0.0
                raise LinkDead(f"nothing from the gateway for {2 * interval:g} s")


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
