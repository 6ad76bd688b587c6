"""The delivery hub: which local connections listen on which channels.

Publishing hands the same already-framed bytes to every recipient's queue
(encode and frame once, never per recipient); the routing decision itself is
``protocol.fan_out``, so the hub holds state and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from protocol import fan_out

__all__ = ["Hub", "Subscriber"]


class Subscriber(Protocol):
    def deliver(self, frame: bytes) -> None:
        """Queue an encoded WebSocket frame for sending; must not block."""


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

    def publish(self, frame: bytes, channels: Iterable[str], sender: Subscriber | None) -> int:
        """Queue ``frame`` for everyone on ``channels`` but ``sender``; returns how many."""
        recipients = fan_out(channels, self._channels, sender)
        for recipient in recipients:
            recipient.deliver(frame)
        return len(recipients)

    def subscribers(self, channel: str) -> int:
        return len(self._channels.get(channel, ()))

    def __len__(self) -> int:
        return len(self._joined)
