"""The asyncio client's waitables: ``Publication`` (one publish's answer) and
``EventStream`` (``async for event in client.events()``), the asyncio twins of
values.Publication and receiving.EventStream."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .values import Accepted, ClientError, ReceivedEvent

if TYPE_CHECKING:
    from .aio import Client


class Publication:
    """A queued publish: ``message_id`` now, ``await result()`` for the gateway's answer."""

    def __init__(self, message_id: str, type_: str) -> None:
        self.message_id = message_id
        self.type = type_
        self._done = asyncio.Event()
        self._outcome: Accepted | ClientError | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def result(self) -> Accepted:
        """Wait for the answer: ``Accepted``, or raise ``PublishError`` / ``ClientClosed``."""
        await self._done.wait()
        if isinstance(self._outcome, ClientError):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome

    def _finish(self, outcome: Accepted | ClientError) -> None:
        if not self._done.is_set():
            self._outcome = outcome
            self._done.set()


class EventStream:
    """``async for event in client.events()``: see ``Client.events``. The dispatcher hands
    each event over only when the consumer takes it, so an event still in hand when the
    stream closes is neither lost nor acknowledged twice."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._offered: tuple[ReceivedEvent, asyncio.Future[bool]] | None = None
        self._available = asyncio.Event()
        self._closed = False
        self._holding: ReceivedEvent | None = None

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ReceivedEvent:
        if self._holding is not None:
            self._client._handled(self._holding.seq)
            self._holding = None
        while self._offered is None:
            if self._closed:
                raise StopAsyncIteration
            self._available.clear()
            await self._available.wait()
        event, taken = self._offered
        self._offered = None
        taken.set_result(True)
        self._holding = event
        return event

    async def _offer(self, event: ReceivedEvent) -> bool:
        if self._closed:
            return False
        taken: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._offered = (event, taken)
        self._available.set()
        return await taken

    def _close(self) -> None:
        if self._client._stream is self:
            self._client._stream = None
        self._closed = True
        if self._offered is not None:
            _, taken = self._offered
            self._offered = None
            if not taken.done():
                taken.set_result(False)
        self._available.set()

    async def aclose(self, *, handled: bool = True) -> None:
        """Stop iterating. The event last yielded counts as handled (and is acknowledged)
        unless ``handled=False``; leaving ``async with`` by an exception passes False."""
        if handled and self._holding is not None:
            self._client._handled(self._holding.seq)
        self._holding = None
        self._close()
        await asyncio.sleep(0)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        await self.aclose(handled=exc_type is None)
