"""The delivery hub: which local connections listen on which channels.

Publishing hands the same run of entries (whose frames are joined once, never
per recipient) to every recipient; the routing decision itself is
``protocol.fan_out``, so the hub holds state and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from protocol import fan_out

if TYPE_CHECKING:
    from .entries import Run

__all__ = ["Hub", "Subscriber"]


class Subscriber(Protocol):
    def offer(self, run: Run) -> None:
        """Take committed events for sending (or decide not to); must not block."""

    def deliver(self) -> None:
        """Write what was offered (called once after a batch of offers)."""


class Hub:
    def __init__(self) -> None:
        self._channels: dict[str, set[Subscriber]] = {}
        self._joined: dict[Subscriber, tuple[str, ...]] = {}

    def subscribe(self, subscriber: Subscriber, channels: Iterable[str]) -> None:
        channels = tuple(channels)
        for channel in channels:
            self._channels.setdefault(channel, set()).add(subscriber)
        self._joined[subscriber] = self._joined.get(subscriber, ()) + channels

    def unsubscribe(self, subscriber: Subscriber) -> None:
        for channel in self._joined.pop(subscriber, ()):
            members = self._channels.get(channel)
            if members is not None:
                members.discard(subscriber)
                if not members:
                    del self._channels[channel]

    def publish(self, run: Run) -> list[Subscriber]:
        """Offer ``run`` to everyone on its channels; returns who (they still need
        a ``pump``)."""
        recipients = fan_out(run.entries[0].channels, self._channels, None)
        for recipient in recipients:
            recipient.offer(run)
        return recipients

    def subscribers(self, channel: str) -> int:
        return len(self._channels.get(channel, ()))

    def __len__(self) -> int:
        return len(self._joined)
