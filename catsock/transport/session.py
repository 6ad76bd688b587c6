"""One server WebSocket connection's mechanics: read in slices, write a queue, close right.

``Session`` owns what every server connection does the same way, whatever its
messages mean: the reader (each read fed to a ``FrameReader`` and handled in
slices of ``FRAME_BUDGET`` frames, a checkpoint between slices), pongs, the queue
that ``pump`` hands to the ``Link`` one write at a time, and the close handshake
(RFC 6455 §5.5.1, §7):

- ``close(code, reason)``: what is queued goes out first, then our close frame;
  we keep reading until the peer's close frame comes, the peer hangs up, or
  ``CLOSE_GRACE`` passes; then the socket closes with linger (the peer reads
  our close instead of a reset);
- the peer's close frame: replies already queued (pongs, errors) go out, queued
  messages do not, then a close frame with the peer's code, even when a write
  was in flight; then the socket closes at once;
- a broken frame: nothing more is read, the queue is dropped, a close frame with
  the ``FrameError``'s code (1002, 1007, 1009) goes out.

A subclass (the gateway's ``Connection``, the Autobahn echo server in the tests)
says what a message means (``on_message``), what its queued items are
(``render``, ``written``) and what its deadlines are (``deadline``,
``deadline_passed``). Queued ``bytes`` are replies (control frames); anything
else is a message the subclass renders into frames.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Final

import trio

from .frames import BINARY, CLOSE, PING, PONG, TEXT, FrameError, FrameReader, close_frame, frame
from .link import BROKEN, SENT, Link

__all__ = ["CLOSE_GRACE", "FRAME_BUDGET", "MAX_UNREAD_REPLIES", "MAX_WRITE", "Session"]

#: How long a closing connection may take to flush and finish the close handshake.
CLOSE_GRACE: Final = 5.0
#: Frames handled per slice of one read before other tasks get to run.
FRAME_BUDGET: Final = 1000
#: At most this many bytes go to the link in one write (more only for a single
#: message larger than this), so a close frame never waits behind megabytes.
MAX_WRITE: Final = 256 * 1024
#: The same for a paced write (``paced``): what the kernel does not take of it waits
#: in memory until the pacer comes back, for each of a thousand dashboards at once.
PACED_WRITE: Final = 64 * 1024
#: Bytes of replies (pongs, errors, acknowledgements) a peer may leave unread
#: before the session stops reading from it.
MAX_UNREAD_REPLIES: Final = 256 * 1024


class Session:
    """Run with ``run()``; see the module docstring for what subclasses provide."""

    def __init__(self, link: Link, *, max_size: int, max_fragments: int) -> None:
        self.link = link
        self._reader = FrameReader(max_size=max_size, max_fragments=max_fragments)
        link.on_drained = self._drained
        link.on_writable = self._writable
        self._queue: deque[Any] = deque()
        self._replies = 0  # bytes of replies in the queue
        self._inflight: object = None  # what the link is writing now (``render``'s token)
        self._busy = False
        self._room = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self._scope = trio.CancelScope()
        self._waiting: trio.CancelScope | None = None  # the reader's wait for ``deadline``
        # The close frame to send once the queue is written: (code or None, reason).
        self._close: tuple[int | None, str] | None = None
        self._close_sent = False
        self._peer_closed_too = False  # the peer's close frame arrived
        #: How the connection ended: the first close code sent or received.
        self.close_code: int | None = None
        self.close_reason: str | None = None

    # -- what subclasses provide ------------------------------------------------------

    async def on_message(self, message: str | bytes) -> None:
        """A text (``str``) or binary (``bytes``) message arrived."""
        raise NotImplementedError

    def render(self, batch: list[Any]) -> tuple[list[bytes | memoryview], object]:
        """The frames for queued items that are not ``bytes``, and a token that
        ``written`` gets back once they reached the kernel."""
        return batch, None

    def item_size(self, item: Any) -> int:
        """Roughly how many bytes a queued item becomes (for ``MAX_WRITE``)."""
        return len(item)

    def split(self, item: Any, room: int) -> tuple[Any, Any]:
        """``item`` cut so its first part becomes about ``room`` bytes (at least one
        message): ``(first, rest)``, ``rest`` None if it cannot be cut."""
        return item, None

    def written(self, token: object) -> None:
        """What ``render`` returned ``token`` for went out."""

    def dropped(self) -> None:
        """Queued messages were dropped (the peer is closing)."""

    def idle(self) -> None:
        """The queue is empty and nothing is being written."""

    def deadline(self) -> float:
        """When the reader should stop waiting and call ``deadline_passed``."""
        return math.inf

    def deadline_passed(self) -> None:
        """``deadline`` came with nothing read."""

    def wake_at(self, when: float) -> None:
        """``deadline`` became ``when``, sooner than the one the reader is waiting for
        (it reads ``deadline`` only when it starts to wait): wake it then."""
        if self._waiting is not None and when < self._waiting.deadline:
            self._waiting.deadline = when

    def received(self) -> None:
        """Bytes arrived from the peer (a heartbeat's sign of life)."""

    def ended(self) -> None:
        """The connection is over (reading stopped); the socket closes next."""

    def write_budget(self) -> int | None:
        """Bytes of messages one ``pump`` may write (None: as many as the link takes).
        Once they are written, the rest waits for ``defer``'s next call to ``pump``."""
        return None

    def defer(self) -> None:
        """Messages are left that the budget did not allow, or a paced write can go
        on: arrange a later ``pump``."""

    def paced(self) -> bool:
        """Writes the kernel does not take whole wait for ``defer``'s ``pump`` to go
        on (catsock/transport/link.py), instead of a drain task finishing them."""
        return False

    # -- queue and writes ----------------------------------------------------------------

    def send_reply(self, data: bytes) -> None:
        """Queue a frame that answers the peer (a pong, an error); the caller pumps."""
        if not self._close_sent:
            self._queue.append(data)
            self._replies += len(data)

    def pump(self) -> None:
        """Hand queued frames to the link, as far as it takes them without waiting
        (and the ``write_budget`` allows)."""
        link = self.link
        if self._close_sent or self._nursery is None:
            return
        paced = self.paced()
        if self._busy and not self._resume(paced):
            return
        queue = self._queue
        budget = self.write_budget()
        most = PACED_WRITE if paced else MAX_WRITE
        room = most if budget is None else max(1, min(most, budget))
        while queue:
            if budget is not None and budget <= 0 and not self._replies:
                self.defer()
                self._room.unpark_all()
                return
            batch: list[Any] = []
            size = 0
            while queue and size < room:
                item = queue.popleft()
                if isinstance(item, bytes):
                    self._replies -= len(item)
                    size += len(item)
                else:
                    n = self.item_size(item)
                    if size + n > room:
                        # One write stays bounded: take what fits, the rest waits.
                        item, rest = self.split(item, room - size)
                        if rest is not None:
                            queue.appendleft(rest)
                            n = self.item_size(item)
                    size += n
                batch.append(item)
            if budget is not None:
                budget -= size
            frames, token = self.render(batch)
            if not frames:
                self.written(token)
                continue
            result = link.send(frames[0] if len(frames) == 1 else b"".join(frames), paced=paced)
            if result == SENT:
                self.written(token)
            elif result == BROKEN:
                self._scope.cancel()
                return
            else:
                self._busy = True
                self._inflight = token
                return
        self._room.unpark_all()
        if self._close is not None:
            self._close_sent = True
            code, reason = self._close
            if self.close_code is None:
                self.close_code, self.close_reason = code, reason
            if link.send(close_frame(code, reason)) == BROKEN:
                self._scope.cancel()
        else:
            self.idle()

    def _resume(self, paced: bool) -> bool:
        """Go on with a paced write; True once it is all out (``written`` told)."""
        result = self.link.resume(paced=paced)
        if result == BROKEN:
            self._scope.cancel()
        if result != SENT:
            return False
        self._busy = False
        token, self._inflight = self._inflight, None
        if token is not None:
            self.written(token)
        return True

    def _writable(self) -> None:
        if self.paced():
            self.defer()
        else:
            self.pump()  # closing, or no longer paced: go on now, with a drain task

    def _drained(self) -> None:
        self._busy = False
        token, self._inflight = self._inflight, None
        if not self._close_sent and token is not None:
            self.written(token)
        if self._queue and not self._replies and self.write_budget() is not None:
            self.defer()  # a budgeted write finished: the rest goes with the next round
        else:
            self.pump()
        self._room.unpark_all()

    async def wait_for_room(self, *, empty: bool = False) -> None:
        """Wait until nothing is being written and the replies fit their bound
        (``empty``: until the queue is empty too)."""
        while self.link.busy or (self._queue if empty else self._replies > MAX_UNREAD_REPLIES):
            await self._room.park()

    def cut_short(self) -> None:
        """Give up on what is being written after the frame in progress (the peer is
        not keeping up): a reply or close queued next goes out as soon as the peer
        has read that one frame. What was cut does not count as written."""
        if self._busy and self.link.cut_after_frame():
            self._inflight = None

    # -- closing ---------------------------------------------------------------------------

    def close(self, code: int, reason: str, grace: float = CLOSE_GRACE) -> None:
        """Write what is queued, then close with ``code``; bounded by ``grace`` seconds."""
        if self._close is not None:
            return
        self._close = (int(code), reason)
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + grace)
        self.pump()

    @property
    def closing(self) -> bool:
        """A close frame is queued or sent: no more messages are handled or queued."""
        return self._close is not None

    def _drop_messages(self) -> None:
        self._queue = deque(item for item in self._queue if isinstance(item, bytes))
        self.dropped()

    def _peer_closed(self, code: int | None, reason: str) -> None:
        self._peer_closed_too = True
        if self.close_code is None:
            self.close_code, self.close_reason = code or 1005, reason
        if self._close is None:
            self._drop_messages()
            self._close = (code, "")
            self._scope.deadline = min(self._scope.deadline, trio.current_time() + CLOSE_GRACE)
        self.pump()

    def _close_pending(self) -> bool:
        if self.link.broken:
            return False
        if self._close_sent:
            return self.link.busy
        return self._close is not None

    # -- the connection's life -----------------------------------------------------------

    async def run(self) -> None:
        """Read until closed, then close the socket (see the module docstring)."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self.link.start(nursery)
                    try:
                        self.pump()  # anything queued before the run began (a close)
                        await self._read()
                        while self._close_pending():
                            await self._room.park()
                        nursery.cancel_scope.cancel()
                    finally:
                        # Before the nursery closes: trio lets other tasks run between
                        # its closing and our ``finally``, and a pump (the pacer's) must
                        # then start nothing in it.
                        self._nursery = None
        finally:
            self._nursery = None
            self.ended()
            with trio.move_on_after(CLOSE_GRACE) as cleanup:
                cleanup.shield = True
                # Both close frames passed: nothing more can come, close at once. Ours
                # alone: read and drop what the peer still sends, so it sees our close.
                await self.link.aclose(linger=self._close_sent and not self._peer_closed_too)

    async def _read(self) -> None:
        reader = self._reader
        while True:
            data = None
            with trio.CancelScope(deadline=self.deadline()) as self._waiting:
                data = await self.link.receive()
            self._waiting = None
            if data is None:
                self.deadline_passed()
                continue
            if not data:
                return
            self.received()
            reader.feed(data)
            while True:
                try:
                    events = reader.read(FRAME_BUDGET)
                except FrameError as error:
                    self._queue.clear()
                    self._replies = 0
                    self.dropped()
                    self.close(error.code, error.reason)
                    return
                for kind, value in events:
                    if kind in (TEXT, BINARY):
                        if self._close is None:
                            await self.on_message(value)  # type: ignore[arg-type]
                    elif kind == PING:
                        self.send_reply(frame(PONG, value))  # type: ignore[arg-type]
                    elif kind == CLOSE:
                        self._peer_closed(*value)  # type: ignore[misc]
                        return
                self.pump()
                if not reader.more:
                    break
                await trio.lowlevel.checkpoint()
            if self._replies > MAX_UNREAD_REPLIES:
                await self.wait_for_room()
