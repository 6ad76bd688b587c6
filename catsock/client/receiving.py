"""The receiving side: handlers, the event iterator, and the cumulative acks.

Events go from the reader into a bounded buffer, so a slow application pushes
back on the connection instead of growing memory. One dispatcher drains it in
order: handlers first, then the iterator. An event counts as handled (and is
acked) only once its consumer is done with it, so what was not handled before a
dropped connection is replayed rather than lost. When to ack (cumulative,
batched by ``ack_batch`` or ``ack_delay``) is the sans-IO core's decision; the
writer sends the ack.
"""

from __future__ import annotations

import trio

from .core import _ClientCore, logger
from .handlers import HandlerRegistry
from .values import ReceivedEvent


class _Receiving(_ClientCore, HandlerRegistry):
    """``Client``'s receiving methods."""

    # -- public ----------------------------------------------------------------------------

    def _consumer_added(self) -> None:
        self._consumers.set()

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

    # -- per connection ------------------------------------------------------------------

    async def _receive_event(self, event: ReceivedEvent) -> None:
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
        self._proto.buffered(event.seq)

    # -- across connections --------------------------------------------------------------

    async def _dispatcher(self) -> None:
        """Handlers first, then the iterator (which acks when its consumer comes back);
        without an iterator the event counts as handled once its handlers returned.
        Until there is a consumer, events wait in the buffer."""
        async for event in self._buffer_out:
            while not self._handlers and self._stream is None:
                self._consumers = trio.Event()
                await self._consumers.wait()
            await self._run_handlers(event)
            stream = self._stream
            if stream is not None and await stream._offer(event):
                continue
            self._handled(event.seq)

    def _handled(self, seq: int | None) -> None:
        """The application is done with the event ``seq``: the core schedules the ack."""
        self._proto.handled(seq, trio.current_time())
        self._writer_lot.unpark_all()


class EventStream:
    """``async for event in client.events()``: see ``Client.events``."""

    def __init__(self, client: _Receiving) -> None:
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
