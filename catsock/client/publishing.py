"""The publishing side: the outbox, the send queue, the writer and the gateway's answers.

A publish is stored PENDING (when there is an outbox) before it is queued, and
settled in the outbox before its ``Publication`` is finished, so a crash at any
point leaves it to be resent by the next client; the gateway dedups by
``message_id``. The writer is the only task that sends on a connection, so it
also sends the receiving side's acks (which is why it paces both after a rate
limit).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import orjson
import trio

from storage.outbox import Outbox, Settlement

from .core import _ack, _ClientCore, _error_fields, _Session, logger
from .values import (
    Accepted,
    ClientClosed,
    ClientError,
    Publication,
    PublishError,
    new_message_id,
    timestamp,
)


class _Publishing(_ClientCore):
    """``Client``'s publishing methods."""

    # -- public ----------------------------------------------------------------------------

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

    # -- per connection: answers the reader hands over, and the writer ----------------

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


def _record(outbox: Outbox, retried: list[str], rows: list[Settlement]) -> None:
    if retried:
        outbox.count_retries(retried)
    if rows:
        outbox.settle(rows)
