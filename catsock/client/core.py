"""The trio client's options and the state its parts share.

``Client`` is assembled from mixins (publishing, receiving, connection, lifecycle)
that all work on one set of attributes, declared once here so mypy checks every
part against the same declarations. The client's decisions live in the sans-IO
core (sansio.py, ``self._proto``), shared with the asyncio and synchronous
runtimes; what stays here is trio's: the connection, the tasks and their
wake-ups. The options are documented on ``Client``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import ssl
from typing import TYPE_CHECKING, Final

import attrs
import trio
from trio_websocket import WebSocketConnection

from storage.outbox import Outbox

from ..backoff import Backoff
from .sansio import (
    MAX_MESSAGE_SIZE,
    Answered,
    ClientProtocol,
    GatewayError,
    Grant,
    Incoming,
    Reconnects,
    parse_url,
)
from .values import Handler, Publication, ReceivedEvent

if TYPE_CHECKING:
    from .receiving import EventStream

logger = logging.getLogger("catsock.client")

@attrs.define(eq=False)
class _Session:
    """One authenticated connection."""

    ws: WebSocketConnection
    grant: Grant
    close_code: int | None = None

    @property
    def connection_id(self) -> str:
        return self.grant.connection_id


class _ClientCore:
    """Options and shared state of a ``Client``; see ``Client`` for what the options mean."""

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
        self._target = parse_url(url)
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
        self.max_in_flight = max_in_flight
        self.resend_batch = resend_batch
        self.ack_delay = ack_delay
        self.ack_batch = ack_batch
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.max_message_size = max_message_size
        self._ssl = ssl_context
        #: The most recent reason a connection attempt failed or a connection ended.
        self.last_error: BaseException | None = None

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
        self._reconnects = Reconnects(backoff, self.rng, max_attempts, url)

        self._handlers: dict[str, list[Handler]] = {}
        self._stream: EventStream | None = None
        self._consumers = trio.Event()
        self._buffer_in, self._buffer_out = trio.open_memory_channel[ReceivedEvent](receive_buffer)
        self._warned_full = False

        self._outbox: Outbox | None = None
        self._publications: dict[str, Publication] = {}
        self._window = trio.Semaphore(max_in_flight)
        self._settling: list[Answered] = []
        self._recovered = trio.Event()

        self._session: _Session | None = None
        self._connected = trio.Event()
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._settle_lot = trio.lowlevel.ParkingLot()
        self._run_scope = trio.CancelScope()
        self._started = False
        self._run_task: trio.lowlevel.Task | None = None
        self._closing = False
        # Set once aclose() finished its close handshake: the connection's tasks (and
        # trio-websocket's reader, which reads the gateway's close frame) wait for it.
        self._handshake_done = trio.Event()
        self._stopped = trio.Event()

    @property
    def connections(self) -> int:
        """Authenticated connections so far."""
        return self._proto.connections

    async def _take_events(self) -> None:
        """Act on what the core made of the frames fed to it (reader and writer)."""
        for event in self._proto.events():
            if isinstance(event, Incoming):
                await self._receive_event(event.event)
            elif isinstance(event, Answered):
                self._settling.append(event)
                self._settle_lot.unpark_all()
            elif isinstance(event, GatewayError):
                logger.warning("gateway error %s: %s", event.code, event.message)

    async def _receive_event(self, event: ReceivedEvent) -> None:
        raise NotImplementedError  # receiving.py


#: Seconds a client cancelled from outside gives its close frame before it goes.
CANCELLED_CLOSE: Final = 0.1


def _close_budget(close_timeout: float) -> float:
    """How long closing may wait for the gateway's close frame. A caller that is
    already cancelled (a ``move_on_after`` around ``connect``, Ctrl-C) cancelled
    trio-websocket's reader with it, so that frame can never be read: send ours and
    go instead of waiting out ``close_timeout``."""
    if trio.current_effective_deadline() == -math.inf:
        return min(close_timeout, CANCELLED_CLOSE)
    return close_timeout
