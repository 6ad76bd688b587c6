"""The Python client: publish with acknowledgements, receive with handlers or an iterator.

It is the seed's PHP ``SocketClient`` + ``SocketEventDispatcher`` +
``SocketMessageReceiver`` + ``SocketRetryStrategy`` (seed 000 §5.2–§5.5) as one
trio object, speaking the delivery extensions of docs/delivery.md::

    async with connect(url, token, "CATS", outbox_path="outbox.db") as client:
        accepted = await client.publish("conversion", payload)   # seq, duplicate

    async with connect(url, token, "AFAD") as client:
        @client.on("conversion")
        async def handle(event: ReceivedEvent) -> None: ...
        async for event in client.events(): ...

Structured concurrency: every task of a client lives in ``Client.run``, which
runs in a nursery of the caller's (``await nursery.start(client.run)`` returns
once the first connection is authenticated) or in the one ``connect`` opens.
Nothing outlives ``aclose`` (close code 1000), and a fatal error (``AuthError``,
``ConnectError``) ends ``run`` and so the nursery around it.

Per connection there are four tasks: the reader (answers to publishes,
events into the bounded receive buffer), the writer (the only sender: events,
cumulative acks, paced after a rate limit), the acker (batches acks) and the
watchdog (pings when idle; nothing for two heartbeat intervals means a dead link).
Across connections: the dispatcher (handlers, then the iterator, then the ack),
the settler (records answers in the outbox in batches, then wakes the publishers)
and, at start, the recovery of the outbox's PENDING rows. docs/client.md has the
guarantees.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import random
import secrets
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

import attrs
import orjson
import trio
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection

from storage.outbox import Outbox, Settlement

from ..backoff import Backoff

__all__ = [
    "Accepted",
    "AuthError",
    "Client",
    "ClientClosed",
    "ClientError",
    "ConnectError",
    "EventStream",
    "Handler",
    "Publication",
    "PublishError",
    "ReceivedEvent",
    "connect",
    "new_message_id",
    "timestamp",
]

logger = logging.getLogger("catsock.client")

#: The gateway's default frame limit (docs/protocol.md §4.1); bigger events are refused locally.
MAX_MESSAGE_SIZE: Final = 64 * 1024


# -- values --------------------------------------------------------------------------------


class ClientError(Exception):
    """Base of the client's errors."""


class AuthError(ClientError):
    """The gateway refused the token (``AUTH_FAILED``): reconnecting cannot help."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectError(ClientError):
    """``max_attempts`` connection attempts in a row failed."""


class ClientClosed(ClientError):
    """The client was closed before the publish was answered (it stays PENDING in the outbox)."""


class PublishError(ClientError):
    """The gateway (or, for ``MESSAGE_TOO_LARGE``, the client) refused a publish."""

    def __init__(self, code: str, message: str, message_id: str) -> None:
        super().__init__(f"{code}: {message} (message_id {message_id})")
        self.code = code
        self.message = message
        self.message_id = message_id


@attrs.frozen
class Accepted:
    """The gateway committed the event as ``seq``; ``duplicate``: it had it already.
    ``seq`` is None when the gateway did not grant ``acks`` (then it only means *sent*)."""

    message_id: str
    seq: int | None
    duplicate: bool = False


@attrs.frozen
class ReceivedEvent:
    """An event from the gateway. ``message`` is the whole decoded envelope (what the seed's
    handlers get), ``text`` the frame as received; ``seq`` is None without acks/resume."""

    seq: int | None
    type: str
    message_id: str
    sender: str
    payload: dict[str, Any]
    message: dict[str, Any]
    text: str


Handler: TypeAlias = Callable[[ReceivedEvent], Awaitable[None] | None]


def timestamp(now: float | None = None) -> str:
    """``gmdate('Y-m-d\\TH:i:s\\Z')``: UTC to the second, e.g. ``2025-10-29T12:34:56Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def new_message_id() -> str:
    """A unique id in the style of PHP's ``uniqid('msg_', true)``: microseconds in hex, then
    64 random bits (so ids from several processes in the same microsecond still differ)."""
    micros = time.time_ns() // 1000
    return f"msg_{micros // 1_000_000:08x}{micros % 1_000_000:05x}.{secrets.token_hex(8)}"


class Publication:
    """A queued publish: ``message_id`` now, ``await result()`` for the gateway's answer."""

    def __init__(self, message_id: str, type_: str, text: str) -> None:
        self.message_id = message_id
        self.type = type_
        self.text = text
        self._done = trio.Event()
        self._result: Accepted | None = None
        self._error: ClientError | None = None
        # Client bookkeeping: answered (reader/writer saw the answer), sends, the
        # connection it was last sent on, and whether it waits in the send queue.
        self._answered = False
        self._sends = 0
        self._sent_on = 0
        self._queued = False
        self._from_outbox = False  # left PENDING by an earlier client: its next send is a retry

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def result(self) -> Accepted:
        """Wait for the answer: ``Accepted``, or raise ``PublishError`` / ``ClientClosed``."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _finish(self, outcome: Accepted | ClientError) -> None:
        if self._done.is_set():
            return
        if isinstance(outcome, Accepted):
            self._result = outcome
        else:
            self._error = outcome
        self._done.set()


# -- the connection ----------------------------------------------------------------------


@attrs.define
class _Target:
    host: str
    port: int
    resource: str
    host_header: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> _Target:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        tls = scheme == "wss"
        port = parts.port or (443 if tls else 80)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        shown = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        default = port == (443 if tls else 80)
        return cls(parts.hostname, port, resource, shown if default else f"{shown}:{port}", tls)


class _LinkDead(Exception):
    """Nothing arrived for two heartbeat intervals."""


class _Refused(Exception):
    """The gateway answered ``auth`` with an error other than AUTH_FAILED (worth retrying:
    CONNECTION_LIMIT, CONNECTION_TIMEOUT, ...)."""


@attrs.define(eq=False)
class _Session:
    """One authenticated connection."""

    ws: WebSocketConnection
    number: int
    connection_id: str
    extensions: dict[str, Any]
    acks: bool
    heartbeat: float | None
    last_arrival: float
    close_code: int | None = None


_TRANSIENT: Final = (
    OSError,
    trio.BrokenResourceError,
    trio.TooSlowError,
    trio_websocket.HandshakeError,
    ConnectionClosed,
    _LinkDead,
    _Refused,
)


class Client:
    """A catsock client; see the module docstring and docs/client.md.

    ``outbox_path``: SQLite file of the durable outbox (None: publishes live in memory only).
    ``heartbeat``: interval to ask for; the client pings when idle and reconnects after two
    silent intervals (None: neither). ``since``: resume after this ``seq`` (None: the
    gateway's cursor, or live). ``receive=False``: a publisher only; events are dropped.
    ``rng`` jitters the backoff (pin it in tests). ``max_attempts``: give up with
    ``ConnectError`` after that many failed connection attempts in a row (None: never).
    """

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
        self.url = url
        self._target = _Target.parse(url)
        self.token = token
        self.client_type = client_type
        self.outbox_path = outbox_path
        self.backoff = backoff
        self.heartbeat = heartbeat
        self.acks = acks
        self.resume = resume and receive
        self.receive = receive
        self.rng = rng or random.Random()
        self.max_attempts = max_attempts
        self.resend_batch = resend_batch
        self.ack_delay = ack_delay
        self.ack_batch = ack_batch
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.max_message_size = max_message_size
        self._ssl = ssl_context
        #: The most recent reason a connection attempt failed or a connection ended.
        self.last_error: BaseException | None = None
        self.connections = 0

        self._handlers: dict[str, list[Handler]] = {}
        self._stream: EventStream | None = None
        self._consumers = trio.Event()
        self._buffer_in, self._buffer_out = trio.open_memory_channel[ReceivedEvent](receive_buffer)
        self._received: int | None = None  # highest seq put into the buffer
        self._warned_full = False
        self._processed: int | None = None  # highest seq handled (what we ack)
        self._acked: int | None = None
        self._unacked = 0
        self._ack_due = False
        self._ack_deadline: float | None = None
        self._cursor: int | None = since  # where to resume from after a reconnect

        self._outbox: Outbox | None = None
        self._inflight: dict[str, Publication] = {}
        self._queue: deque[Publication] = deque()
        self._window = trio.Semaphore(max_in_flight)
        self._settling: list[tuple[Publication, Accepted | ClientError, Settlement]] = []
        self._retried: list[str] = []  # sent again: retry_count += 1 in the outbox
        self._recovered = trio.Event()
        self._pause_until = -math.inf
        self._pace = 0.0

        self._session: _Session | None = None
        self._connected = trio.Event()
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._acker_lot = trio.lowlevel.ParkingLot()
        self._settle_lot = trio.lowlevel.ParkingLot()
        self._run_scope = trio.CancelScope()
        self._started = False
        self._run_task: trio.lowlevel.Task | None = None
        self._closing = False
        self._stopped = trio.Event()

    # -- public: state -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._session is not None

    @property
    def connection_id(self) -> str | None:
        return None if self._session is None else self._session.connection_id

    @property
    def extensions(self) -> dict[str, Any]:
        """What the gateway granted on the current connection (``{}`` when not connected)."""
        return {} if self._session is None else dict(self._session.extensions)

    async def wait_connected(self) -> None:
        await self._connected.wait()

    # -- public: receiving ---------------------------------------------------------------

    def on(self, type_: str) -> Callable[[Handler], Handler]:
        """Decorator: call the handler for every event of ``type_`` (``"*"``: every event).
        Handlers may be sync or async; an exception is logged and the event still counts as
        handled, as in the seed's ``SocketMessageReceiver``."""

        def register(handler: Handler) -> Handler:
            self.add_handler(type_, handler)
            return handler

        return register

    def add_handler(self, type_: str, handler: Handler) -> None:
        self._handlers.setdefault(type_, []).append(handler)
        self._consumers.set()

    def remove_handler(self, type_: str, handler: Handler) -> None:
        handlers = self._handlers.get(type_, [])
        if handler in handlers:
            handlers.remove(handler)
        if not handlers:
            self._handlers.pop(type_, None)

    def events(self) -> EventStream:
        """An async iterator over received events, registered at once (so nothing received
        after this call bypasses it). One at a time: a new one closes the previous one.
        An event is acknowledged when you come back for the next, so close the stream
        (``async with`` or ``aclose()``) when you stop iterating early."""
        if self._stream is not None:
            self._stream._close()
        stream = EventStream(self)
        if self._stopped.is_set():
            stream._close()
            return stream
        self._stream = stream
        self._consumers.set()
        return stream

    # -- public: publishing ----------------------------------------------------------------

    def envelope(self, type_: str, payload: Mapping[str, Any], message_id: str) -> str:
        """The seed envelope (§4.2) as JSON text, ``sender`` = this client's type."""
        if not isinstance(payload, Mapping):
            raise TypeError(f"payload must be a JSON object (a mapping), not {type(payload)}")
        return orjson.dumps(
            {
                "version": "1.0",
                "type": type_,
                "timestamp": timestamp(),
                "message_id": message_id,
                "sender": self.client_type,
                "payload": dict(payload),
            }
        ).decode()

    async def enqueue(
        self, type_: str, payload: Mapping[str, Any], *, message_id: str | None = None
    ) -> Publication:
        """Store the event (PENDING, when there is an outbox) and queue it; return at once
        with a ``Publication``. Waits only while ``max_in_flight`` publishes are unanswered.
        Publishing a ``message_id`` that is still in flight returns the same publication."""
        if self._closing or self._stopped.is_set():
            raise ClientClosed("the client is closed")
        message_id = message_id or new_message_id()
        text = self.envelope(type_, payload, message_id)
        if len(text.encode()) > self.max_message_size:
            raise PublishError(
                "MESSAGE_TOO_LARGE", f"over {self.max_message_size} bytes", message_id
            )
        await self._recovered.wait()
        if message_id in self._inflight:
            return self._inflight[message_id]
        await self._window.acquire()
        # Shielded: once the row is stored it is queued too (a cancelled caller's
        # event is still sent, as it would be after a restart).
        with trio.CancelScope(shield=True):
            try:
                if self._stopped.is_set():
                    raise ClientClosed("the client is closed")
                if message_id in self._inflight:
                    self._window.release()
                    return self._inflight[message_id]
                if self._outbox is not None:
                    await trio.to_thread.run_sync(self._outbox.add, message_id, type_, text)
                if self._stopped.is_set():
                    raise ClientClosed("the client closed; the event stays in the outbox")
            except BaseException:
                self._window.release()
                raise
            publication = Publication(message_id, type_, text)
            self._track(publication)
        return publication

    async def publish(
        self, type_: str, payload: Mapping[str, Any], *, message_id: str | None = None
    ) -> Accepted:
        """Publish and wait for the gateway's answer (across reconnects): ``Accepted`` or
        ``PublishError``. Bound the wait with ``trio.fail_after`` if you need to."""
        publication = await self.enqueue(type_, payload, message_id=message_id)
        return await publication.result()

    async def flush(self) -> None:
        """Wait until every publish so far has been answered and recorded in the outbox
        (refusals included); ``ClientClosed`` if the client closes first."""
        await self._recovered.wait()
        while self._inflight:
            for publication in list(self._inflight.values()):
                await publication._done.wait()
                if isinstance(publication._error, ClientClosed):
                    raise publication._error
        if self._stopped.is_set():
            raise ClientClosed("the client is closed")

    # -- public: lifecycle ---------------------------------------------------------------

    async def aclose(self) -> None:
        """Acknowledge what was handled, close the connection with 1000 and stop ``run``.
        Unanswered publishes raise ``ClientClosed`` and stay PENDING in the outbox, to be
        resent by the next client."""
        self._closing = True
        session = self._session
        if session is not None:
            with trio.move_on_after(self.close_timeout) as scope:
                scope.shield = True
                seq = self._processed
                if session.acks and seq is not None and (self._acked is None or seq > self._acked):
                    with contextlib.suppress(ConnectionClosed):
                        await session.ws.send_message(_ack(seq))
                        self._acked = seq
                await session.ws.aclose(1000, "client closing")
        self._run_scope.cancel()
        if self._started and not self._inside_run():
            with trio.CancelScope(shield=True):
                await self._stopped.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, reconnect and serve until ``aclose`` (returns) or a fatal error
        (``AuthError``, ``ConnectError``). ``nursery.start(client.run)`` returns once the
        first connection is authenticated."""
        if self._started:
            raise RuntimeError("a Client runs once")
        self._started = True
        self._run_task = trio.lowlevel.current_task()
        try:
            with self._run_scope:
                async with trio.open_nursery() as nursery:
                    if self.outbox_path is not None:
                        self._outbox = await trio.to_thread.run_sync(Outbox, self.outbox_path)
                        nursery.start_soon(self._recover)
                    else:
                        self._recovered.set()
                    nursery.start_soon(self._settler)
                    if self.receive:
                        nursery.start_soon(self._dispatcher)
                    await self._connect_loop(task_status)
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            leaf = _single_error(group)
            if leaf is None:
                raise
            raise leaf from None
        finally:
            self._shutdown()

    def _inside_run(self) -> bool:
        """Whether the current task is ``run`` or one of its tasks (a handler, say), which
        cannot wait for ``run`` to end."""
        task: trio.lowlevel.Task | None = trio.lowlevel.current_task()
        while task is not None:
            if task is self._run_task:
                return True
            nursery = task.parent_nursery
            task = None if nursery is None else nursery.parent_task
        return False

    def _shutdown(self) -> None:
        self._closing = True
        self._session = None
        # Answers not yet recorded are still true; the outbox rows stay PENDING and the
        # next client's resend gets the same answer (``duplicate`` for an accepted one).
        for publication, outcome, _ in self._settling:
            publication._finish(outcome)
        closed = ClientClosed("the client closed before the gateway answered")
        for publication in list(self._inflight.values()):
            publication._finish(closed)
        self._inflight.clear()
        self._settling.clear()
        for _ in range(self._window.statistics().tasks_waiting):
            self._window.release()  # enqueue() callers wake up and see the client is closed
        self._buffer_in.close()
        if self._stream is not None:
            self._stream._close()
        if self._outbox is not None:
            self._outbox.close()
        self._recovered.set()
        self._stopped.set()

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
                    with trio.move_on_after(self.close_timeout) as scope:
                        scope.shield = True
                        await ws.aclose(1000, "client closing")
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
        reply = _json_object(await ws.get_message())
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
                    message = _json_object(data)
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

    async def _receive_event(self, message: dict[str, Any], data: str | bytes) -> None:
        if not self.receive:
            return
        seq = message.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            seq = None
        elif self._received is not None and seq <= self._received:
            return  # replayed after a reconnect, but already in the buffer or handled
        payload = message.get("payload")
        event = ReceivedEvent(
            seq,
            str(message.get("type")),
            str(message.get("message_id")),
            str(message.get("sender")),
            payload if isinstance(payload, dict) else {},
            message,
            data if isinstance(data, str) else data.decode("utf-8", "replace"),
        )
        try:
            self._buffer_in.send_nowait(event)
        except trio.WouldBlock:
            if not self._handlers and self._stream is None and not self._warned_full:
                self._warned_full = True
                logger.warning(
                    "the receive buffer is full and nothing consumes events: register a "
                    "handler, iterate client.events(), or pass receive=False"
                )
            await self._buffer_in.send(event)
        if seq is not None:
            self._received = seq

    def _on_accepted(self, message: dict[str, Any]) -> None:
        publication = self._inflight.get(str(message.get("message_id")))
        seq = message.get("seq")
        if publication is None or publication._answered:
            return  # an answer to a resend: the first one counted
        accepted = Accepted(
            publication.message_id,
            seq if isinstance(seq, int) else None,
            message.get("duplicate") is True,
        )
        self._answer(publication, accepted, Settlement(publication.message_id, accepted.seq))

    def _on_error(self, session: _Session, message: dict[str, Any]) -> None:
        code, text = _error_fields(message)
        payload = message.get("payload")
        message_id = payload.get("message_id") if isinstance(payload, dict) else None
        if code == "RATE_LIMIT_EXCEEDED":
            retry_after = payload.get("retry_after") if isinstance(payload, dict) else None
            self._rate_limited(session, message_id, retry_after)
            return
        publication = self._inflight.get(message_id) if isinstance(message_id, str) else None
        if publication is None or publication._answered:
            logger.warning("gateway error %s: %s", code, text)
            return
        error = PublishError(code, text, publication.message_id)
        self._answer(
            publication, error, Settlement(publication.message_id, error=f"{code}: {text}")
        )

    def _rate_limited(self, session: _Session, message_id: Any, retry_after: Any) -> None:
        """Pause for ``retry_after``, then send at that pace until caught up. The refused
        frame is resent: the named event, or (when the error names none) every event sent
        on this connection and not answered yet. Resending is safe: the gateway dedups."""
        wait = retry_after if isinstance(retry_after, int | float) and retry_after > 0 else 1.0
        wait = min(float(wait), 60.0)
        self._pace = max(self._pace, wait)
        self._pause_until = max(self._pause_until, trio.current_time() + wait)
        if isinstance(message_id, str):
            named = self._inflight.get(message_id)
            suspects = [] if named is None else [named]
        else:
            suspects = list(self._inflight.values())
            self._ack_due = self._processed is not None  # it may have been the ack
            self._acked = None
        again = [
            p
            for p in suspects
            if not p._answered and not p._queued and p._sent_on == session.number
        ]
        for publication in reversed(again):
            publication._queued = True
            self._queue.appendleft(publication)
        self._writer_lot.unpark_all()

    async def _writer(self, session: _Session) -> None:
        ws = session.ws
        while True:
            if self._pause_until > trio.current_time():
                await trio.sleep_until(self._pause_until)
                continue
            if self._ack_due and session.acks and self._processed is not None:
                self._ack_due = False
                self._ack_deadline = None
                if self._acked is None or self._processed > self._acked:
                    seq = self._processed
                    await ws.send_message(_ack(seq))
                    self._acked, self._unacked = seq, 0
                    self._paced()
                continue
            publication = self._next_to_send()
            if publication is not None:
                await ws.send_message(publication.text)
                if publication._sends or publication._from_outbox:
                    publication._from_outbox = False
                    self._retried.append(publication.message_id)
                    self._settle_lot.unpark_all()
                publication._sends += 1
                publication._sent_on = session.number
                if not session.acks:  # nothing more will come: sent is all we learn
                    accepted = Accepted(publication.message_id, None)
                    self._answer(publication, accepted, Settlement(publication.message_id))
                self._paced()
                continue
            self._pace = 0.0  # caught up
            await self._writer_lot.park()

    def _next_to_send(self) -> Publication | None:
        while self._queue:
            publication = self._queue.popleft()
            publication._queued = False
            if not publication._answered:
                return publication
        return None

    def _paced(self) -> None:
        if self._pace:
            self._pause_until = trio.current_time() + self._pace

    async def _acker(self) -> None:
        """Turn a due ack into a frame ``ack_delay`` after the first unacked event."""
        while True:
            if self._ack_deadline is None:
                await self._acker_lot.park()
                continue
            await trio.sleep_until(self._ack_deadline)
            self._ack_deadline = None
            self._ack_due = True
            self._writer_lot.unpark_all()

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

    # -- across connections --------------------------------------------------------------

    def _track(self, publication: Publication) -> None:
        self._inflight[publication.message_id] = publication
        publication._queued = True
        self._queue.append(publication)
        self._writer_lot.unpark_all()

    def _answer(
        self, publication: Publication, outcome: Accepted | ClientError, row: Settlement
    ) -> None:
        publication._answered = True
        self._settling.append((publication, outcome, row))
        self._settle_lot.unpark_all()

    async def _settler(self) -> None:
        """Record resends and answers in the outbox in batches, then wake publishers."""
        while True:
            if not self._settling and not self._retried:
                await self._settle_lot.park()
                continue
            batch, self._settling = self._settling, []
            retried, self._retried = self._retried, []
            if self._outbox is not None:
                rows = [row for _, _, row in batch]
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_record, self._outbox, retried, rows)
            for publication, outcome, _ in batch:
                if self._inflight.get(publication.message_id) is publication:
                    del self._inflight[publication.message_id]
                    self._window.release()
                publication._finish(outcome)

    async def _recover(self) -> None:
        """Queue what an earlier client left PENDING in the outbox, oldest first, a batch
        at a time; new publishes wait until it is all queued, so order is kept."""
        outbox = self._outbox
        assert outbox is not None
        upto = await trio.to_thread.run_sync(outbox.last_id)
        after = 0
        while True:
            rows = await trio.to_thread.run_sync(
                partial(outbox.pending, after_id=after, upto_id=upto, limit=self.resend_batch)
            )
            if not rows:
                break
            for row in rows:
                await self._window.acquire()
                if row.message_id in self._inflight:
                    self._window.release()
                    continue
                publication = Publication(row.message_id, row.type, row.payload)
                publication._from_outbox = True
                self._track(publication)
            after = rows[-1].id
            logger.info("queued %d events left pending in %s", len(rows), outbox.path)
        self._recovered.set()

    async def _dispatcher(self) -> None:
        """Handlers first, then the iterator (which acks when its consumer comes back);
        without an iterator the event counts as handled once its handlers returned.
        Until there is a consumer, events wait in the buffer."""
        async for event in self._buffer_out:
            while not self._handlers and self._stream is None:
                self._consumers = trio.Event()
                await self._consumers.wait()
            for handler in (*self._handlers.get(event.type, ()), *self._handlers.get("*", ())):
                try:
                    outcome = handler(event)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception:
                    logger.exception("handler %r failed for %s", handler, event.message_id)
            stream = self._stream
            if stream is not None and await stream._offer(event):
                continue
            self._handled(event.seq)

    def _handled(self, seq: int | None) -> None:
        """The application is done with the event ``seq``: schedule a cumulative ack."""
        if seq is None or (self._processed is not None and seq <= self._processed):
            return
        self._processed = self._cursor = seq
        self._unacked += 1
        if self._session is None or not self._session.acks:
            return
        if self._unacked >= self.ack_batch:
            self._ack_due = True
            self._writer_lot.unpark_all()
        elif self._ack_deadline is None:
            self._ack_deadline = trio.current_time() + self.ack_delay
            self._acker_lot.unpark_all()


class EventStream:
    """``async for event in client.events()``: see ``Client.events``."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._in, self._out = trio.open_memory_channel[ReceivedEvent](0)
        self._holding: ReceivedEvent | None = None

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ReceivedEvent:
        if self._holding is not None:
            self._client._handled(self._holding.seq)
            self._holding = None
        try:
            event = await self._out.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        self._holding = event
        return event

    async def _offer(self, event: ReceivedEvent) -> bool:
        try:
            await self._in.send(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def _close(self) -> None:
        if self._client._stream is self:
            self._client._stream = None
        self._in.close()
        self._out.close()

    async def aclose(self, *, handled: bool = True) -> None:
        """Stop iterating. The event last yielded counts as handled (and is acknowledged)
        unless ``handled=False``; leaving ``async with`` by an exception passes False."""
        if handled and self._holding is not None:
            self._client._handled(self._holding.seq)
        self._holding = None
        self._close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        await self.aclose(handled=exc_type is None)


@asynccontextmanager
async def connect(
    url: str,
    token: str,
    client_type: str = "CATS",
    *,
    wait_connected: bool = True,
    **options: Any,
) -> AsyncIterator[Client]:
    """``async with connect(url, token, "CATS", ...) as client``: a running ``Client``
    (options as for ``Client``). Entering waits for the first authenticated connection
    unless ``wait_connected=False``; leaving closes the client. A fatal error of the
    client (``AuthError``, ``ConnectError``) ends the block and is raised from it."""
    client = Client(url, token, client_type, **options)
    try:
        async with trio.open_nursery() as nursery:
            if wait_connected:
                await nursery.start(client.run)
            else:
                nursery.start_soon(client.run)
            try:
                yield client
            finally:
                await client.aclose()
    except BaseExceptionGroup as group:
        leaf = _single_error(group)
        if leaf is None:
            raise
        raise leaf from None


# -- helpers -------------------------------------------------------------------------------


def _ack(seq: int) -> str:
    return f'{{"type":"ack","seq":{seq}}}'


def _record(outbox: Outbox, retried: list[str], rows: list[Settlement]) -> None:
    if retried:
        outbox.count_retries(retried)
    if rows:
        outbox.settle(rows)


def _json_object(data: str | bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError("not JSON") from exc
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _error_fields(message: dict[str, Any]) -> tuple[str, str]:
    payload = message.get("payload")
    payload = payload if isinstance(payload, dict) else {}
    return str(payload.get("error_code", "UNKNOWN")), str(payload.get("error_message", ""))


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


def _single_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one non-Cancelled exception in ``group`` (nested groups flattened), else None."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None
