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

One ``Client`` class, written as mixins over shared state so each side reads on
its own:

- ``values``: answers, received events, errors, message ids and timestamps;
- ``core``: the options and the state every part shares;
- ``publishing``: the outbox, the send queue, the writer, the gateway's answers;
- ``receiving``: handlers, ``EventStream``, the dispatcher and the acks;
- ``connection``: connect, authenticate, heartbeat watchdog, reconnect with backoff;
- ``lifecycle``: ``Client`` itself (``run``, ``aclose``) and ``connect``.

Import from ``catsock.client``; the submodules are an implementation detail.
"""

from __future__ import annotations

from .connection import _TRANSIENT as _TRANSIENT
from .connection import _describe as _describe
from .connection import _LinkDead as _LinkDead
from .connection import _Refused as _Refused
from .core import MAX_MESSAGE_SIZE as MAX_MESSAGE_SIZE
from .core import _ack as _ack
from .core import _error_fields as _error_fields
from .core import _Session as _Session
from .core import _Target as _Target
from .core import logger as logger
from .lifecycle import Client, connect
from .lifecycle import _single_error as _single_error
from .publishing import _record as _record
from .receiving import EventStream
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

# The private names above were module-level in the single-file client; the CLI
# (``_describe``, ``_single_error``) and tests import some of them from here, so
# they stay reachable, with ``as`` marking them as deliberate re-exports for mypy.

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
