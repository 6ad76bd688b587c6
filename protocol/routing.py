"""Routing as data: who may publish an event type, and which channels get it.

A channel is a string. ``type:AFAD`` holds every connection of client type AFAD
that is not bound to a user; ``user:500`` holds the connections whose token is
bound to user 500 (an affiliate's dashboard, seed 000 FR-4). A route names the
client types that may send an event type, the client types it goes to, and the
payload fields whose values name users (``owner_id``, ``tier_rewards[].user_id``).

The default table is seed 000 §4.3's direction column (and §5.4's
``budget_update``), with one addition: the CATS → AFAD business events are also
copied to ``type:DASHBOARD``, because the seed's dashboard client (§9.6) listens
for ``conversion`` and FR-4 asks for live admin dashboards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Set
from typing import Any, TypeVar

import attrs

from .messages import Event

__all__ = [
    "DEFAULT_ROUTES",
    "Route",
    "RoutingTable",
    "fan_out",
    "subscriptions_for",
    "type_channel",
    "user_channel",
]

K = TypeVar("K")

_MAX_USER_ID = 64


def type_channel(client_type: str) -> str:
    return f"type:{client_type}"


def user_channel(user_id: int | str) -> str:
    return f"user:{user_id}"


def subscriptions_for(client_type: str, user_id: str | None) -> tuple[str, ...]:
    """The channels a connection joins when it authenticates.

    A token bound to a user sees that user's channel and nothing else; an
    unbound token sees everything routed to its client type.
    """
    if user_id is not None:
        return (user_channel(user_id),)
    return (type_channel(client_type),)


@attrs.frozen(slots=True)
class Route:
    """How one event type travels.

    ``user_fields`` are payload paths: ``owner_id`` reads a top-level field,
    ``tier_rewards[].user_id`` reads a field of every object in a list.
    """

    event_type: str
    senders: frozenset[str]
    to_types: tuple[str, ...] = ()
    user_fields: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()

    def targets(self, payload: Any) -> list[str]:
        """The channels for one payload, in order, without repeats."""
        out = [f"type:{t}" for t in self.to_types]
        for path in self.user_fields:
            head, sep, tail = path.partition("[].")
            value = _get(payload, head)
            if not sep:
                if _is_id(value):
                    out.append(f"user:{value}")
            elif isinstance(value, list):
                for item in value:
                    user = _get(item, tail)
                    if _is_id(user):
                        out.append(f"user:{user}")
        if self.channels:
            out.extend(self.channels)
        return list(dict.fromkeys(out)) if len(out) > 1 else out


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    if attrs.has(type(obj)):  # a typed payload; never a number's ``.real``
        return getattr(obj, name, None)
    return None


def _is_id(value: Any) -> bool:
    """Only scalar ids make channels: a bool, null or object names nobody."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and 0 < len(value) <= _MAX_USER_ID)


_BUSINESS = ("AFAD", "DASHBOARD")

DEFAULT_ROUTES: tuple[Route, ...] = (
    Route("conversion", frozenset({"CATS"}), _BUSINESS, ("owner_id", "tier_rewards[].user_id")),
    Route("click", frozenset({"CATS"}), _BUSINESS, ("owner_id",)),
    Route("tier_reward", frozenset({"CATS"}), _BUSINESS, ("owner_id",)),
    Route("budget_alert", frozenset({"CATS"}), _BUSINESS),
    Route("fraud_alert", frozenset({"CATS"}), _BUSINESS),
    Route("adware_update", frozenset({"AFAD"}), ("CATS",)),
    Route("budget_update", frozenset({"AFAD"}), ("CATS",)),
    Route("stats_update", frozenset({"CATS"}), ("DASHBOARD",), ("owner_id",)),
    Route("user_online", frozenset({"CATS"}), ("DASHBOARD",)),
)


class RoutingTable(Mapping[str, Route]):
    """An immutable mapping from event type to its route."""

    __slots__ = ("_routes",)

    def __init__(self, routes: Iterable[Route] = DEFAULT_ROUTES) -> None:
        self._routes = {r.event_type: r for r in routes}

    def with_routes(self, routes: Iterable[Route]) -> RoutingTable:
        """A table where ``routes`` replace or add to the current ones."""
        return RoutingTable([*self._routes.values(), *routes])

    def channels(self, event: Event) -> list[str]:
        """The channels ``event`` goes to (empty if its type has no route)."""
        route = self._routes.get(event.type)
        return route.targets(event.payload) if route is not None else []

    def __getitem__(self, event_type: str) -> Route:
        return self._routes[event_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._routes)

    def __len__(self) -> int:
        return len(self._routes)


def fan_out(channels: Iterable[str], members: Mapping[str, Set[K]], sender: K | None) -> list[K]:
    """Everyone subscribed to any of ``channels``, once each, never the sender.

    Order is stable (first channel first) so delivery order is reproducible.
    """
    seen: dict[K, None] = {}
    for channel in channels:
        for member in members.get(channel, ()):
            seen[member] = None
    seen.pop(sender, None)  # type: ignore[arg-type]
    return list(seen)
