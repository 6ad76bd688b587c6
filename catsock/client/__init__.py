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

Three runtimes share one sans-IO core (``sansio``: what to send next, what a
frame means, acks, resume, the in-flight window, the reconnect schedule):

- trio, this package's ``Client`` and ``connect`` (on trio-websocket);
- asyncio, ``catsock.client.aio`` (on websockets), with the same names
  (``aio_streams``: its ``Publication`` and ``EventStream``);
- plain synchronous code, ``catsock.client.sync`` (a background thread).

The trio client is written as mixins over shared state so each side reads on
its own:

- ``values``: answers, received events, errors, message ids and timestamps;
- ``handlers``: the handler registry (shared with the asyncio runtime);
- ``core``: the options and the state every part shares;
- ``publishing``: the outbox, the writer, the settlement of answers;
- ``receiving``: handlers, ``EventStream``, the dispatcher;
- ``connection``: connect, authenticate, reader, heartbeat watchdog, reconnects;
- ``lifecycle``: ``Client`` itself (``run``, ``aclose``) and ``connect``.

Import from ``catsock.client``; the submodules are an implementation detail.
"""

from __future__ import annotations

from .connection import _describe as _describe
from .core import logger as logger
from .lifecycle import Client, connect
from .lifecycle import _single_error as _single_error
from .receiving import EventStream
from .sansio import MAX_MESSAGE_SIZE as MAX_MESSAGE_SIZE
from .values import (
    Accepted,
    AuthError,
    ClientClosed,
    ClientError,
    ConnectError,
    Handler,
    Publication,
    PublishError,
    ReceivedEvent,
    new_message_id,
    timestamp,
)

# The CLI imports ``_describe`` and ``_single_error`` from here; ``as`` marks them as
# deliberate re-exports for mypy.

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
