"""The registry of message types: which ``type`` values exist and their classes.

It is data, not if-chains: the codec looks a type up here. The defaults are the
control messages and event types of seed 000 §4.3 (plus ``budget_update`` of
§5.4); operators add event types with a free-form object payload in config.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping

import attrs

from . import messages as m

__all__ = [
    "CONTROL_TYPES",
    "DEFAULT_EVENT_TYPES",
    "EventRegistry",
    "EventSpec",
    "valid_type_name",
]

CONTROL_TYPES: Mapping[str, type[m.ControlMessage]] = {
    cls.type: cls for cls in (
        m.Auth, m.AuthSuccess, m.AuthFailed, m.Ping, m.Pong, m.Error, m.Ack, m.Accepted
    )
}

_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def valid_type_name(name: str) -> bool:
    """Event type names are lower snake case, 1-64 characters, as in the seed."""
    return _TYPE_NAME.fullmatch(name) is not None


@attrs.frozen(slots=True)
class EventSpec:
    """One event type: its name and its payload class (``None``: any JSON object)."""

    name: str
    payload: type | None = None


DEFAULT_EVENT_TYPES: tuple[EventSpec, ...] = (
    EventSpec("conversion", m.ConversionPayload),
    EventSpec("click", m.ClickPayload),
    EventSpec("tier_reward", m.TierRewardPayload),
    EventSpec("budget_alert", m.BudgetAlertPayload),
    EventSpec("fraud_alert", m.FraudAlertPayload),
    EventSpec("adware_update", m.AdwareUpdatePayload),
    EventSpec("budget_update", m.BudgetUpdatePayload),
    EventSpec("stats_update", m.StatsUpdatePayload),
    EventSpec("user_online", m.UserOnlinePayload),
)


class EventRegistry(Mapping[str, EventSpec]):
    """An immutable mapping from event type name to its spec."""

    __slots__ = ("_specs",)

    def __init__(self, specs: Iterable[EventSpec] = DEFAULT_EVENT_TYPES) -> None:
        table: dict[str, EventSpec] = {}
        for spec in specs:
            if not valid_type_name(spec.name):
                raise ValueError(f"invalid event type name {spec.name!r}")
            if spec.name in CONTROL_TYPES:
                raise ValueError(f"{spec.name!r} is a control message, not an event type")
            table[spec.name] = spec
        self._specs = table

    def with_types(self, names: Iterable[str]) -> EventRegistry:
        """A registry with operator-declared free-form event types added.

        Raises ``ValueError`` for a bad name or one that is already declared.
        """
        extra = []
        for name in names:
            if name in self._specs:
                raise ValueError(f"event type {name!r} is already declared")
            extra.append(EventSpec(name))
        return EventRegistry([*self._specs.values(), *extra])

    def __getitem__(self, name: str) -> EventSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"EventRegistry({sorted(self._specs)!r})"
