"""The client's options and the state its parts share, plus the frame helpers they use.

``Client`` is assembled from mixins (publishing, receiving, connection, lifecycle)
that all work on one set of attributes: the connection loop resets the send queue
and the ack state that the two sides keep, and the writer sends both sides'
frames. So the attributes are declared once, here in ``__init__``, and mypy
checks every part against the same declarations. The options are documented on
``Client``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import ssl
from collections import deque
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import WebSocketConnection

from storage.outbox import Outbox, Settlement

from ..backoff import Backoff
from .values import Accepted, ClientError, Handler, Publication, ReceivedEvent

if TYPE_CHECKING:
    from .receiving import EventStream

logger = logging.getLogger("catsock.client")

#: The gateway's default frame limit (docs/protocol.md §4.1); bigger events are refused locally.
MAX_MESSAGE_SIZE: Final = 64 * 1024


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
        # Set once aclose() finished its close handshake: the connection's tasks (and
        # trio-websocket's reader, which reads the gateway's close frame) wait for it.
        self._handshake_done = trio.Event()
        self._stopped = trio.Event()


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


def _ack(seq: int) -> str:
    return f'{{"type":"ack","seq":{seq}}}'


def _error_fields(message: dict[str, Any]) -> tuple[str, str]:
    payload = message.get("payload")
    payload = payload if isinstance(payload, dict) else {}
    return str(payload.get("error_code", "UNKNOWN")), str(payload.get("error_message", ""))
