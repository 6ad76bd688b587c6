"""When has a client that sends no acks taken an event in? (docs/delivery.md)

The seed's clients never say what they processed, and bytes written to a socket
can still be lost: in the kernel's buffers on either side, or read by a process
that dies before it acts on them. ``TakenIn`` keeps a connection's writes that
do not count as delivered yet, each as the offset in the link's bytes where it
ends, and answers ``check`` with the last seq that now does: the peer's TCP has
acknowledged it, the peer left nothing unread behind it (its advertised window is
back to the widest it has shown), and ``hold`` seconds have passed since, for the
application to act on what it read. Where the TCP state cannot be seen (TLS),
time since the write alone decides. Pure bookkeeping: the caller reads the
socket and the clock.
"""

from __future__ import annotations

from collections import deque

import attrs

__all__ = ["TakenIn"]


@attrs.define
class _Write:
    end: int  # the link's offset after this write
    seq: int  # the last seq it completes
    events: int
    taken_at: float | None = None


class TakenIn:
    def __init__(self, hold: float) -> None:
        self.hold = hold
        self._writes: deque[_Write] = deque()
        self._widest = 0

    def __bool__(self) -> bool:
        return bool(self._writes)

    @property
    def events(self) -> int:
        """Events written and not yet taken in: what a return would bring again."""
        return sum(w.events for w in self._writes)

    def written(self, end: int, seq: int, events: int) -> None:
        """Everything up to ``seq`` has been written; the link's offset is ``end``."""
        self._writes.append(_Write(end, seq, events))

    def check(self, now: float, sent: int, progress: tuple[int, int] | None) -> int | None:
        """The last seq that now counts as delivered (None: none more). ``sent`` is
        what the link wrote, ``progress`` its ``peer_progress()``."""
        if progress is None:
            taken = sent
        else:
            acked, window = progress
            self._widest = max(self._widest, window)
            taken = acked - (self._widest - window)
        for write in self._writes:
            if write.end > taken:
                break
            if write.taken_at is None:
                write.taken_at = now
        delivered = None
        while self._writes:
            first = self._writes[0]
            if first.taken_at is None or now - first.taken_at < self.hold:
                break
            delivered = self._writes.popleft().seq
        return delivered
