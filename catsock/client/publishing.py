"""The trio client's publishing side: the outbox, the writer and the answers' settlement.

A publish is stored PENDING (when there is an outbox) before it is handed to
the core, and settled in the outbox before its ``Publication`` is finished, so
a crash at any point leaves it to be resent by the next client; the gateway
dedups by ``message_id``. What to send next, what goes again after a reconnect
or a rate limit, and which answer belongs to which publish are the sans-IO
core's decisions (sansio.py); the writer is the only task that sends on a
connection, so it also sends the receiving side's acks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import trio

from .core import _ClientCore, _Session, logger
from .values import Accepted, ClientClosed, Publication, new_message_id


class _Publishing(_ClientCore):
    """``Client``'s publishing methods."""

    # -- public ----------------------------------------------------------------------------

    def envelope(self, type_: str, payload: Mapping[str, Any], message_id: str) -> str:
        """The seed envelope (§4.2) as JSON text, ``sender`` = this client's type.
        (``PublishError`` MESSAGE_TOO_LARGE over ``max_message_size``.)"""
        return self._proto.envelope(type_, payload, message_id, time.time())

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
        await self._recovered.wait()
        if message_id in self._publications:
            return self._publications[message_id]
        await self._window.acquire()
        # Shielded: once the row is stored it is queued too (a cancelled caller's
        # event is still sent, as it would be after a restart).
        with trio.CancelScope(shield=True):
            try:
                if self._stopped.is_set():
                    raise ClientClosed("the client is closed")
                if message_id in self._publications:
                    self._window.release()
                    return self._publications[message_id]
                if self._outbox is not None:
                    await trio.to_thread.run_sync(self._outbox.add, message_id, type_, text)
                if self._stopped.is_set():
                    raise ClientClosed("the client closed; the event stays in the outbox")
            except BaseException:
                self._window.release()
                raise
            publication = self._track(message_id, type_, text, from_outbox=False)
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
        while self._publications:
            for publication in list(self._publications.values()):
                await publication._done.wait()
                if isinstance(publication._error, ClientClosed):
                    raise publication._error
        if self._stopped.is_set():
            raise ClientClosed("the client is closed")

    # -- per connection ------------------------------------------------------------------

    async def _writer(self, session: _Session) -> None:
        ws = session.ws
        while True:
            frame = self._proto.next_frame(trio.current_time())
            await self._take_events()  # without acks a send is the answer
            if frame is not None:
                await ws.send_message(frame)
                self._settle_lot.unpark_all()  # a resend counts in the outbox's retry_count
                continue
            wake_at = self._proto.wake_at()
            with trio.move_on_at(math.inf if wake_at is None else wake_at):
                await self._writer_lot.park()

    # -- across connections --------------------------------------------------------------

    def _track(self, message_id: str, type_: str, text: str, *, from_outbox: bool) -> Publication:
        publication = Publication(message_id, type_, text)
        self._publications[message_id] = publication
        self._proto.track(message_id, type_, text, from_outbox=from_outbox)
        self._writer_lot.unpark_all()
        return publication

    async def _settler(self) -> None:
        """Record resends and answers in the outbox in batches, then wake publishers."""
        while True:
            retried = self._proto.take_retried()
            if not self._settling and not retried:
                await self._settle_lot.park()
                continue
            batch, self._settling = self._settling, []
            if self._outbox is not None:
                rows = [answered.settlement for answered in batch]
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._outbox.record, rows, retried)
            for answered in batch:
                self._proto.settled(answered.message_id)
                publication = self._publications.pop(answered.message_id, None)
                if publication is not None:
                    self._window.release()
                    publication._finish(answered.outcome)

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
                if row.message_id in self._publications:
                    self._window.release()
                    continue
                self._track(row.message_id, row.type, row.payload, from_outbox=True)
            after = rows[-1].id
            logger.info("queued %d events left pending in %s", len(rows), outbox.path)
        self._recovered.set()
