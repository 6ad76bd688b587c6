"""``Client`` itself and ``connect``: starting, running and closing a client.

Structured concurrency: every task of a client lives in ``Client.run``, so
nothing outlives ``aclose`` and a fatal error ends the caller's nursery. The
mixins it is built from each cover one side (publishing.py, receiving.py,
connection.py); this module owns what spans them all, above all ``_shutdown``,
which must leave no publisher or iterator waiting.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import ConnectionClosed

from storage.outbox import Outbox

from .connection import _Connection
from .core import _close_budget
from .values import ClientClosed, single_error


class Client(_Connection):
    """A catsock client; see the package docstring and docs/client.md.

    ``outbox_path``: SQLite file of the durable outbox (None: publishes live in memory only).
    ``heartbeat``: interval to ask for; the client pings when idle and reconnects after two
    silent intervals (None: neither). ``since``: resume after this ``seq`` (None: the
    gateway's cursor, or live). ``receive=False``: a publisher only; events are dropped.
    ``rng`` jitters the backoff (pin it in tests). ``max_attempts``: give up with
    ``ConnectError`` after that many failed connection attempts in a row (None: never).
    The constructor, with every option and its default, is ``_ClientCore.__init__``
    (core.py).
    """

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
        return {} if self._session is None else dict(self._session.grant.extensions)

    async def wait_connected(self) -> None:
        await self._connected.wait()

    # -- public: lifecycle ---------------------------------------------------------------

    async def aclose(self) -> None:
        """Acknowledge what was handled, close the connection with 1000 and stop ``run``.
        Unanswered publishes raise ``ClientClosed`` and stay PENDING in the outbox, to be
        resent by the next client."""
        self._closing = True
        session = self._session
        try:
            if session is not None:
                with trio.move_on_after(_close_budget(self.close_timeout)) as scope:
                    scope.shield = True
                    frame = self._proto.closing_ack()
                    if frame is not None:
                        with contextlib.suppress(ConnectionClosed):
                            await session.ws.send_message(frame)
                    await session.ws.aclose(1000, "client closing")
        finally:
            self._handshake_done.set()
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
        for answered in self._settling:
            publication = self._publications.pop(answered.message_id, None)
            if publication is not None:
                publication._finish(answered.outcome)
        self._settling.clear()
        closed = ClientClosed("the client closed before the gateway answered")
        for publication in self._publications.values():
            publication._finish(closed)
        self._publications.clear()
        for _ in range(self._window.statistics().tasks_waiting):
            self._window.release()  # enqueue() callers wake up and see the client is closed
        self._buffer_in.close()
        if self._stream is not None:
            self._stream._close()
        if self._outbox is not None:
            self._outbox.close()
        self._recovered.set()
        self._stopped.set()


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


def _single_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one non-Cancelled exception in ``group`` (nested groups flattened), else None."""
    return single_error(group, trio.Cancelled)
