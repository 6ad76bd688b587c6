"""The handler registry every runtime shares: ``on``, ``add_handler``, ``remove_handler``
and how handlers run (the type's, then ``"*"``'s, in the order registered; an exception
is logged and the event still counts as handled, as in the seed's
``SocketMessageReceiver``). Awaiting a handler's result works on trio and asyncio alike."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

from .values import Handler, ReceivedEvent

logger = logging.getLogger("catsock.client")


class HandlerRegistry:
    """Mixed into each runtime's client, which sets ``_handlers = {}`` and says in
    ``_consumer_added`` how its dispatcher learns that someone now consumes events."""

    _handlers: dict[str, list[Handler]]

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
        self._consumer_added()

    def remove_handler(self, type_: str, handler: Handler) -> None:
        handlers = self._handlers.get(type_, [])
        if handler in handlers:
            handlers.remove(handler)
        if not handlers:
            self._handlers.pop(type_, None)

    def _consumer_added(self) -> None:
        raise NotImplementedError

    async def _run_handlers(self, event: ReceivedEvent) -> None:
        for handler in (*self._handlers.get(event.type, ()), *self._handlers.get("*", ())):
            try:
                outcome = handler(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                logger.exception("handler %r failed for %s", handler, event.message_id)
