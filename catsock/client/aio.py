"""The asyncio runtime: ``catsock.client``'s API for asyncio programs, on ``websockets``.

The same names and behaviour as the trio client (docs/client.md)::

    from catsock.client.aio import connect

    async with connect(url, token, "CATS", outbox_path="outbox.db") as client:
        accepted = await client.publish("conversion", payload)   # seq, duplicate

    async with connect(url, token, "AFAD") as client:
        @client.on("adware_update")
        async def handle(event: ReceivedEvent) -> None: ...
        async for event in client.events(): ...

Every decision is the sans-IO core's (sansio.py); this module owns the I/O: the
``websockets`` connection, the outbox file (in worker threads), and the tasks.
``Client.run`` holds them all: per connection a reader, a writer (the only
sender) and a watchdog; across connections the dispatcher (handlers, then the
iterator), the settler (records answers in the outbox, then wakes publishers)
and, at start, the recovery of the outbox's PENDING rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from storage.outbox import Outbox

from ..backoff import Backoff
from . import sansio
from .aio_streams import EventStream, Publication
from .handlers import HandlerRegistry
from .sansio import MAX_MESSAGE_SIZE, Answered, ClientProtocol, GatewayError, Incoming
from .values import (
    Accepted,
    AuthError,
    ClientClosed,
    ClientError,
    ConnectError,
    Handler,
    PublishError,
    ReceivedEvent,
    new_message_id,
    single_error,
)

__all__ = [
    "Accepted",
    "AuthError",
    "Client",
    "ClientClosed",
    "ClientError",
    "ConnectError",
    "EventStream",
    "Publication",
    "PublishError",
    "ReceivedEvent",
    "connect",
]

logger = logging.getLogger("catsock.client")

_TRANSIENT: Final = (OSError, WebSocketException, sansio.TransientError)


class Client(HandlerRegistry):
    """A catsock client for asyncio: the options are the trio ``Client``'s (docs/client.md
    §1). ``await client.run()`` serves until ``aclose``; ``connect`` does it for you."""

    def __init__(
        self,
        url: str,
        token: str,
        client_type: str = "CATS",
        *,
        outbox_path: str | os.PathLike[str] | None = None,
        backoff: Backoff = Backoff(),  # noqa: B008 - frozen, so sharing it is safe
        heartbeat: float | None = 15.0,
        acks: bool = True,
        resume: bool = True,
        since: int | None = None,
        receive: bool = True,
        rng: random.Random | None = None,
        max_attempts: int | None = None,
        max_in_flight: int = 100,
        resend_batch: int = 100,
        receive_buffer: int = 100,
        ack_delay: float = 0.05,
        ack_batch: int = 50,
        connect_timeout: float = 10.0,
        close_timeout: float = 5.0,
        max_message_size: int = MAX_MESSAGE_SIZE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        sansio.parse_url(url)
        self.url = url
        self.client_type = client_type
        self.outbox_path = outbox_path
        self.receive = receive
        self.max_in_flight = max_in_flight
        self.resend_batch = resend_batch
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self._ssl = ssl_context
        self._proto = ClientProtocol(
            token,
            client_type,
            acks=acks,
            resume=resume,
            since=since,
            receive=receive,
            heartbeat=heartbeat,
            max_in_flight=max_in_flight,
            ack_delay=ack_delay,
            ack_batch=ack_batch,
            max_message_size=max_message_size,
        )
        self._reconnects = sansio.Reconnects(backoff, rng or random.Random(), max_attempts, url)
        #: The most recent reason a connection attempt failed or a connection ended.
        self.last_error: BaseException | None = None

        self._handlers: dict[str, list[Handler]] = {}
        self._stream: EventStream | None = None
        self._consumers = asyncio.Event()
        self._buffer: asyncio.Queue[ReceivedEvent] = asyncio.Queue(receive_buffer)
        self._warned_full = False

        self._outbox: Outbox | None = None
        self._publications: dict[str, Publication] = {}
        self._deferred: list[tuple[str, str, str]] = []  # submitted before recovery ended
        self._recovered = asyncio.Event()
        self._room = asyncio.Event()  # set when a publish was settled
        self._settling: list[Answered] = []
        self._settle_wake = asyncio.Event()
        self._settle_job: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()  # the writer has work

        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._started = False
        self._run_task: asyncio.Task[Any] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._stop_requested = False
        self._stopped = asyncio.Event()
        self._fatal: BaseException | None = None  # what ended run, when not aclose

    # -- state ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def connection_id(self) -> str | None:
        grant = self._proto.grant
        return None if grant is None else grant.connection_id

    @property
    def extensions(self) -> dict[str, Any]:
        """What the gateway granted on the current connection (``{}`` when not connected)."""
        grant = self._proto.grant
        return {} if grant is None else dict(grant.extensions)

    @property
    def connections(self) -> int:
        return self._proto.connections

    async def wait_connected(self) -> None:
        await self._connected.wait()

    # -- publishing ----------------------------------------------------------------------

    def envelope(self, type_: str, payload: Mapping[str, Any], message_id: str) -> str:
        """The seed envelope (§4.2) as JSON text, ``sender`` = this client's type."""
        return self._proto.envelope(type_, payload, message_id, time.time())

    async def enqueue(
        self, type_: str, payload: Mapping[str, Any], *, message_id: str | None = None
    ) -> Publication:
        """Store the event (PENDING, when there is an outbox) and queue it; return at once
        with a ``Publication``. Waits only while ``max_in_flight`` publishes are unanswered.
        Publishing a ``message_id`` that is still in flight returns the same publication."""
        self._check_open()
        message_id = message_id or new_message_id()
        text = self.envelope(type_, payload, message_id)
        await self._recovered.wait()
        while self._proto.unsettled >= self.max_in_flight and message_id not in self._publications:
            self._check_open()
            self._room.clear()
            await self._room.wait()
        self._check_open()
        if message_id in self._publications:
            return self._publications[message_id]
        # Shielded: once the row is stored it is queued too (a cancelled caller's event
        # is still sent, as it would be after a restart).
        return await asyncio.shield(self._store_and_track(message_id, type_, text))

    async def _store_and_track(self, message_id: str, type_: str, text: str) -> Publication:
        if self._outbox is not None:
            await asyncio.to_thread(self._outbox.add, message_id, type_, text)
        if self._stopped.is_set():
            raise ClientClosed("the client closed; the event stays in the outbox")
        return self._track(message_id, type_, text, from_outbox=False)

    async def publish(
        self, type_: str, payload: Mapping[str, Any], *, message_id: str | None = None
    ) -> Accepted:
        """Publish and wait for the gateway's answer (across reconnects): ``Accepted`` or
        ``PublishError``. Bound the wait with ``asyncio.timeout`` if you need to."""
        publication = await self.enqueue(type_, payload, message_id=message_id)
        return await publication.result()

    async def flush(self) -> None:
        """Wait until every publish so far has been answered and recorded in the outbox
        (refusals included); ``ClientClosed`` if the client closes first."""
        await self._recovered.wait()
        while self._publications:
            for publication in list(self._publications.values()):
                await publication._done.wait()
                if isinstance(publication._outcome, ClientClosed):
                    raise publication._outcome
        if self._stopped.is_set():
            raise ClientClosed("the client is closed")

    def _submit(self, message_id: str, type_: str, text: str) -> None:
        """Queue an event already stored in the outbox, without waiting for room (the
        synchronous client's ``publish``; the core's window still bounds the wire)."""
        if self._stopped.is_set():
            return  # it stays PENDING in the outbox for the next client
        if not self._recovered.is_set():
            self._deferred.append((message_id, type_, text))
        elif message_id not in self._publications:
            self._track(message_id, type_, text, from_outbox=False)

    def _track(self, message_id: str, type_: str, text: str, *, from_outbox: bool) -> Publication:
        publication = Publication(message_id, type_)
        self._publications[message_id] = publication
        self._proto.track(message_id, type_, text, from_outbox=from_outbox)
        self._wake.set()
        return publication

    def _check_open(self) -> None:
        if self._closing or self._stopped.is_set():
            raise ClientClosed("the client is closed")

    # -- receiving -----------------------------------------------------------------------

    def _consumer_added(self) -> None:
        self._consumers.set()

    def events(self) -> EventStream:
        """An async iterator over received events, registered at once; one at a time (a
        new one closes the previous one). An event is acknowledged when you come back
        for the next, so close the stream (``async with``) when you stop early."""
        if self._stream is not None:
            self._stream._close()
        stream = EventStream(self)
        if self._stopped.is_set():
            stream._close()
            return stream
        self._stream = stream
        self._consumers.set()
        return stream

    def _handled(self, seq: int | None) -> None:
        self._proto.handled(seq, asyncio.get_running_loop().time())
        self._wake.set()

    async def _dispatcher(self) -> None:
        """Handlers first, then the iterator (which acks when its consumer comes back);
        without an iterator the event counts as handled once its handlers returned."""
        while True:
            event = await self._buffer.get()
            while not self._handlers and self._stream is None:
                self._consumers.clear()
                await self._consumers.wait()
            await self._run_handlers(event)
            stream = self._stream
            if stream is not None and await stream._offer(event):
                continue
            self._handled(event.seq)

    # -- the outbox ----------------------------------------------------------------------

    async def _recover(self) -> None:
        """Queue what an earlier client left PENDING, oldest first, a batch at a time;
        new publishes wait until it is all queued, so order is kept."""
        outbox = self._outbox
        assert outbox is not None
        upto = await asyncio.to_thread(outbox.last_id)
        after = 0
        while True:
            rows = await asyncio.to_thread(
                partial(outbox.pending, after_id=after, upto_id=upto, limit=self.resend_batch)
            )
            if not rows:
                break
            for row in rows:
                while self._proto.unsettled >= self.max_in_flight:
                    self._room.clear()
                    await self._room.wait()
                if row.message_id not in self._publications:
                    self._track(row.message_id, row.type, row.payload, from_outbox=True)
            after = rows[-1].id
            logger.info("queued %d events left pending in %s", len(rows), outbox.path)
        self._end_recovery()

    def _end_recovery(self) -> None:
        self._recovered.set()
        deferred, self._deferred = self._deferred, []
        for submitted in deferred:
            self._submit(*submitted)

    async def _settler(self) -> None:
        """Record resends and answers in the outbox in batches, then wake publishers."""
        while True:
            await self._settle_wake.wait()
            self._settle_wake.clear()
            batch, self._settling = self._settling, []
            retried = self._proto.take_retried()
            if not batch and not retried:
                continue
            if self._outbox is not None:
                rows = [answered.settlement for answered in batch]
                self._settle_job = asyncio.ensure_future(
                    asyncio.to_thread(self._outbox.record, rows, retried)
                )
                await asyncio.shield(self._settle_job)
                self._settle_job = None
            for answered in batch:
                self._proto.settled(answered.message_id)
                publication = self._publications.pop(answered.message_id, None)
                if publication is not None:
                    publication._finish(answered.outcome)
            self._room.set()

    # -- connections ---------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        while not self._closing:
            delay = self._reconnects.delay()
            if delay:
                logger.info("reconnecting in %.1f s (%s)", delay, describe(self.last_error))
                await asyncio.sleep(delay)
            try:
                await self._connect_once()
            except _TRANSIENT as exc:
                if self._closing:
                    return
                self.last_error = exc
                logger.warning("connection to %s failed: %s", self.url, describe(exc))
                try:
                    self._reconnects.failed(describe(exc))
                except ConnectError as error:
                    raise error from exc

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            ws = await websockets.connect(
                self.url,
                ssl=self._ssl if self.url.lower().startswith("wss:") else None,
                proxy=None,
                compression=None,
                open_timeout=None,
                ping_interval=None,
                close_timeout=self.close_timeout,
                max_size=None,
                user_agent_header=None,
            )
            try:
                await ws.send(self._proto.auth_frame())
                grant = self._proto.connection_made(await ws.recv(), loop.time())
            except BaseException:
                ws.transport.abort()
                raise
        self._reconnects.connected()
        logger.info("connected to %s as %s (%s)", self.url, self.client_type, grant.connection_id)
        self._ws = ws
        self._connected.set()
        self._wake.set()
        try:
            async with asyncio.TaskGroup() as group:
                for job in (self._reader(ws), self._writer(ws), self._watchdog(ws)):
                    self._remember(group.create_task(job))
        except* (ConnectionClosed, sansio.LinkDead) as failures:
            self.last_error = failures.exceptions[0]
        finally:
            self._ws = None
            self._connected.clear()
            self._proto.connection_lost()
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.close_timeout):
                        await ws.close(1000, "client closing")
            ws.transport.abort()
        logger.info("disconnected from %s: %s", self.url, describe(self.last_error))

    async def _reader(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await ws.recv()
            self._proto.receive_frame(data, loop.time())
            await self._take_events()
            self._wake.set()

    async def _take_events(self) -> None:
        for event in self._proto.events():
            if isinstance(event, Incoming):
                await self._put(event.event)
            elif isinstance(event, Answered):
                self._settling.append(event)
                self._settle_wake.set()
            elif isinstance(event, GatewayError):
                logger.warning("gateway error %s: %s", event.code, event.message)

    async def _put(self, event: ReceivedEvent) -> None:
        idle = not self._handlers and self._stream is None
        if self._buffer.full() and idle and not self._warned_full:
            self._warned_full = True
            logger.warning(
                "the receive buffer is full and nothing consumes events: register a "
                "handler, iterate client.events(), or pass receive=False"
            )
        await self._buffer.put(event)
        self._proto.buffered(event.seq)

    async def _writer(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frame = self._proto.next_frame(loop.time())
            await self._take_events()  # without acks a send is the answer
            if frame is not None:
                await ws.send(frame)
                self._settle_wake.set()  # a resend counts in the outbox's retry_count
                continue
            self._wake.clear()
            wake_at = self._proto.wake_at()
            timeout = None if wake_at is None else max(0.0, wake_at - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _watchdog(self, ws: ClientConnection) -> None:
        """Ping after a heartbeat interval of quiet; nothing for two means a dead link."""
        loop = asyncio.get_running_loop()
        while True:
            ping_at, dead_at = self._proto.ping_at(), self._proto.dead_at()
            if ping_at is None or dead_at is None:
                return
            if loop.time() < ping_at:
                await asyncio.sleep(ping_at - loop.time())
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(dead_at):
                    await (await ws.ping())
                    self._proto.arrived(loop.time())
            dead_at = self._proto.dead_at() or dead_at
            if loop.time() >= dead_at:
                raise sansio.LinkDead("nothing from the gateway for two heartbeat intervals")

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, reconnect and serve until ``aclose`` (returns) or a fatal error
        (``AuthError``, ``ConnectError``)."""
        if self._started:
            raise RuntimeError("a Client runs once")
        self._started = True
        task = asyncio.current_task()
        assert task is not None
        self._run_task = task
        try:
            async with asyncio.TaskGroup() as group:
                helpers = []
                if self.outbox_path is not None:
                    self._outbox = await asyncio.to_thread(Outbox, self.outbox_path)
                    helpers.append(group.create_task(self._recover()))
                else:
                    self._end_recovery()
                helpers.append(group.create_task(self._settler()))
                if self.receive:
                    helpers.append(group.create_task(self._dispatcher()))
                for helper in helpers:
                    self._remember(helper)
                await self._connect_loop()
                for helper in helpers:
                    helper.cancel()
        except asyncio.CancelledError:
            if not (self._stop_requested and task.uncancel() == 0):
                raise
        except BaseExceptionGroup as group:
            leaf = single_error(group, asyncio.CancelledError)
            if leaf is None:
                raise
            self._fatal = leaf
            raise leaf from None
        finally:
            await self._shutdown()

    def _remember(self, task: asyncio.Task[Any]) -> None:
        """Keep the tasks of ``run`` known while they live (``aclose`` from a handler)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Acknowledge what was handled, close the connection with 1000 and stop ``run``.
        Unanswered publishes raise ``ClientClosed`` and stay PENDING in the outbox, to be
        resent by the next client."""
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(TimeoutError, ConnectionClosed):
                async with asyncio.timeout(self.close_timeout):
                    frame = self._proto.closing_ack()
                    if frame is not None:
                        await ws.send(frame)
                    await ws.close(1000, "client closing")
        task = self._run_task
        if task is None or task.done():
            return
        if not self._stop_requested:
            self._stop_requested = True
            task.cancel()
        current = asyncio.current_task()
        if current is task or current in self._tasks:
            return  # called from a handler: run ends when this task is cancelled
        await self._stopped.wait()

    async def _shutdown(self) -> None:
        self._closing = True
        self._ws = None
        if self._settle_job is not None:
            with contextlib.suppress(Exception):
                await self._settle_job
        # Answers not yet recorded are still true; the rows stay PENDING and the next
        # client's resend gets the same answer (``duplicate`` for an accepted one).
        for answered in self._settling:
            publication = self._publications.pop(answered.message_id, None)
            if publication is not None:
                publication._finish(answered.outcome)
        self._settling.clear()
        closed = ClientClosed(
            "the client closed before the gateway answered"
            if self._fatal is None
            else f"the client stopped before the gateway answered: {describe(self._fatal)}"
        )
        for publication in self._publications.values():
            publication._finish(closed)
        self._publications.clear()
        if self._stream is not None:
            self._stream._close()
        if self._outbox is not None:
            self._outbox.close()
        self._recovered.set()
        self._stopped.set()
        self._room.set()


@asynccontextmanager
async def connect(
    url: str,
    token: str,
    client_type: str = "CATS",
    *,
    wait_connected: bool = True,
    **options: Any,
) -> AsyncIterator[Client]:
    """``async with connect(url, token, "CATS", ...) as client``: a running ``Client``.
    Entering waits for the first authenticated connection unless ``wait_connected=False``;
    leaving closes the client. A fatal error of the client (``AuthError``,
    ``ConnectError``) cancels the block and is raised from it."""
    client = Client(url, token, client_type, **options)
    body = asyncio.current_task()
    assert body is not None
    run = asyncio.create_task(client.run())
    if wait_connected:
        connected = asyncio.ensure_future(client.wait_connected())
        try:
            await asyncio.wait({connected, run}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            run.cancel()
            await asyncio.wait({run})
            raise
        finally:
            connected.cancel()
        if run.done():
            await run  # the fatal error (AuthError, ConnectError) that ended it
            raise ClientClosed("the client stopped before it connected")
    failed = False

    def on_done(task: asyncio.Task[None]) -> None:
        nonlocal failed
        if not task.cancelled() and task.exception() is not None and not client._closing:
            failed = True
            body.cancel()

    run.add_done_callback(on_done)
    try:
        yield client
    except asyncio.CancelledError:
        error = run.exception() if failed and run.done() else None
        if error is not None and body.uncancel() == 0:
            raise error from None
        raise
    finally:
        run.remove_done_callback(on_done)
        await client.aclose()
        await asyncio.wait({run})
        if not failed and not run.cancelled() and run.exception() is not None:
            raise run.exception()  # type: ignore[misc]


def describe(exc: BaseException | None) -> str:
    """One line for a log: why a connection attempt failed or a connection ended."""
    if exc is None:
        return "no error"
    if isinstance(exc, ConnectionClosed) and exc.rcvd is not None:
        reason = exc.rcvd
        return f"closed with {reason.code}" + (f" ({reason.reason})" if reason.reason else "")
    if isinstance(exc, InvalidStatus):
        return f"handshake refused with HTTP {exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__
