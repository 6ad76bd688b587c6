"""Tests of protocol.routing: fan-out properties over random routing tables,
subscriber populations and events, checked against an oracle written from
docs/protocol.md §8; then the default table against seed 000 §4.3."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocol as p
from tests.protocol import strategies as S

CLIENT_TYPES = ("CATS", "AFAD", "DASHBOARD", "OPS", "BI")
USERS = ("1", "7", "42", "499", "500", "0500", "u-9", "x" * 64)
#: Field names payloads and routes share. ``real`` and ``imag`` are attributes of
#: Python numbers: a path must read fields of JSON objects and nothing else.
FIELDS = ("owner_id", "user_id", "buyer_id", "real", "imag")
LISTS = ("tier_rewards", "items")
PATHS = (*FIELDS, *(f"{lst}[].{field}" for lst in LISTS for field in FIELDS))

# --- strategies ----------------------------------------------------------------------

#: Values a user field may hold: ids that name users and values that name nobody.
user_values = st.one_of(
    st.sampled_from(USERS),
    st.sampled_from(USERS).map(lambda u: int(u) if u.isdigit() else u),
    st.sampled_from(["", "y" * 65, True, False, None, 1.0, 500.0, {"id": 1}, [1]]),
    S.ids(),
)
items = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), user_values, max_size=3),
    user_values,  # not an object: names nobody, whatever its attributes
)
payloads = st.fixed_dictionaries(
    {},
    optional={
        **{field: user_values for field in FIELDS},
        **{lst: st.lists(items, max_size=4) | user_values for lst in LISTS},
        "other": S.json_values(max_leaves=4),
    },
)


def unique_tuple(values: st.SearchStrategy[str], max_size: int) -> st.SearchStrategy[Any]:
    return st.lists(values, unique=True, max_size=max_size).map(tuple)


explicit_channels = st.sampled_from(
    [*map(p.type_channel, CLIENT_TYPES), *map(p.user_channel, USERS), "topic:audit"]
)
routes = st.builds(
    p.Route,
    event_type=st.sampled_from(sorted(S.CODEC.registry)),
    senders=st.frozensets(st.sampled_from(CLIENT_TYPES)),
    to_types=unique_tuple(st.sampled_from(CLIENT_TYPES), 4),
    user_fields=unique_tuple(st.sampled_from(PATHS), 4),
    channels=unique_tuple(explicit_channels, 2) | st.just(()),
)
tables = st.lists(routes, min_size=1, max_size=6, unique_by=lambda r: r.event_type).map(
    p.RoutingTable
)


@attrs.frozen
class Conn:
    """One subscriber: its connection id, client type and user binding."""

    id: int
    client_type: str
    user: str | None


population = st.lists(
    st.tuples(st.sampled_from(CLIENT_TYPES), st.none() | st.sampled_from(USERS)), max_size=14
).map(lambda specs: [Conn(i, ct, user) for i, (ct, user) in enumerate(specs)])


def members_of(conns: list[Conn]) -> dict[str, set[int]]:
    """Channel → subscribers, each joined through ``subscriptions_for`` at auth."""
    members: dict[str, set[int]] = {}
    for conn in conns:
        for channel in p.subscriptions_for(conn.client_type, conn.user):
            members.setdefault(channel, set()).add(conn.id)
    return members


def event_of(kind: str, payload: Any) -> p.Event:
    return p.Event(
        type=kind, version="1.0", timestamp="t", message_id="m", sender="CATS", payload=payload
    )


# --- the oracle (docs/protocol.md §8.2) ----------------------------------------------


def names_a_user(value: Any) -> bool:
    """Rule 4: an integer, or a string of 1 to 64 characters."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and 1 <= len(value) <= 64)


def named_users(payload: dict[str, Any], paths: tuple[str, ...]) -> list[str]:
    """User ids named by ``paths``, in field order; ``a[].b`` reads ``b`` of every
    object in the list ``a``."""
    out: list[str] = []
    for path in paths:
        head, sep, tail = path.partition("[].")
        value = payload.get(head)
        if sep:
            objects = value if isinstance(value, list) else []
            values = [item.get(tail) for item in objects if isinstance(item, dict)]
        else:
            values = [value]
        out.extend(str(v) for v in values if names_a_user(v))
    return out


def expected_channels(route: p.Route, payload: dict[str, Any]) -> list[str]:
    """Rule 3: type channels, then user channels in field order, then explicit
    channels; repeats removed."""
    users = [p.user_channel(u) for u in named_users(payload, route.user_fields)]
    return list(dict.fromkeys([*map(p.type_channel, route.to_types), *users, *route.channels]))


# --- properties ----------------------------------------------------------------------


@given(tables, population, payloads, st.data())
def test_fan_out(
    table: p.RoutingTable, conns: list[Conn], payload: dict[str, Any], data: st.DataObject
) -> None:
    route = table[data.draw(st.sampled_from(sorted(table)))]
    sender = data.draw(st.none() | st.sampled_from([c.id for c in conns] or [None]))
    channels = table.channels(event_of(route.event_type, payload))
    assert channels == expected_channels(route, payload)
    # User channels come only from the named fields (or the route's explicit list).
    named = set(named_users(payload, route.user_fields))
    for channel in channels:
        kind, _, name = channel.partition(":")
        assert kind != "user" or name in named or channel in route.channels

    recipients = p.fan_out(channels, members_of(conns), sender)
    assert len(recipients) == len(set(recipients)), "a recipient twice"
    assert sender not in recipients
    by_id = {c.id: c for c in conns}
    for conn_id in recipients:
        conn = by_id[conn_id]
        if conn.user is None:
            assert conn.client_type in route.to_types or p.type_channel(conn.client_type) in (
                route.channels
            )
        else:
            assert conn.user in named or p.user_channel(conn.user) in route.channels
    for conn in conns:
        if conn.id != sender and conn.user is None and conn.client_type in route.to_types:
            assert conn.id in recipients, f"unbound {conn.client_type} connection left out"
        if conn.id != sender and conn.user in named:
            assert conn.id in recipients, f"connection of user {conn.user} left out"


@given(st.sampled_from(["conversion", "click", "tier_reward", "stats_update"]), st.data())
def test_default_routes_with_typed_payloads(kind: str, data: st.DataObject) -> None:
    """Typed payloads route like the same fields in a plain object."""
    payload = data.draw(S.payloads(kind))
    route = p.RoutingTable()[kind]
    as_dict = attrs.asdict(payload)  # type: ignore[arg-type]
    assert p.RoutingTable().channels(event_of(kind, payload)) == expected_channels(route, as_dict)


@given(
    st.lists(st.sampled_from([f"c:{i}" for i in range(6)]), max_size=8),
    st.dictionaries(
        st.sampled_from([f"c:{i}" for i in range(6)]),
        st.sets(st.integers(0, 9), max_size=6),
        max_size=6,
    ),
    st.none() | st.integers(0, 9),
)
def test_fan_out_is_the_union_minus_the_sender(
    channels: list[str], members: dict[str, set[int]], sender: int | None
) -> None:
    out = p.fan_out(channels, members, sender)
    assert len(out) == len(set(out))
    union = {m for c in set(channels) for m in members.get(c, set())}
    assert set(out) == union - {sender}
    firsts = [m for c in channels for m in members.get(c, set())]
    assert out == [m for m in dict.fromkeys(firsts) if m != sender]  # first channel first


# --- the default table ----------------------------------------------------------------

BUSINESS = ("AFAD", "DASHBOARD")
#: docs/protocol.md §8.1: seed 000 §4.3's direction column, §5.4's budget_update,
#: and catsock's copy of the CATS → AFAD business events to DASHBOARD.
DEFAULT_TABLE = {
    "conversion": ({"CATS"}, BUSINESS, ("owner_id", "tier_rewards[].user_id")),
    "click": ({"CATS"}, BUSINESS, ("owner_id",)),
    "tier_reward": ({"CATS"}, BUSINESS, ("owner_id",)),
    "budget_alert": ({"CATS"}, BUSINESS, ()),
    "fraud_alert": ({"CATS"}, BUSINESS, ()),
    "adware_update": ({"AFAD"}, ("CATS",), ()),
    "budget_update": ({"AFAD"}, ("CATS",), ()),
    "stats_update": ({"CATS"}, ("DASHBOARD",), ("owner_id",)),
    "user_online": ({"CATS"}, ("DASHBOARD",), ()),
}
#: Seed 000 §4.3 (and §5.4): who sends each event type, and who it is for.
SEED_DIRECTIONS = {
    "conversion": ("CATS", "AFAD"),
    "click": ("CATS", "AFAD"),
    "tier_reward": ("CATS", "AFAD"),
    "adware_update": ("AFAD", "CATS"),
    "budget_alert": ("CATS", "AFAD"),
    "fraud_alert": ("CATS", "AFAD"),
    "stats_update": ("CATS", "DASHBOARD"),
    "user_online": ("CATS", "DASHBOARD"),
    "budget_update": ("AFAD", "CATS"),
}


@pytest.mark.parametrize("kind", sorted(SEED_DIRECTIONS))
def test_default_route_follows_the_seed_direction(kind: str) -> None:
    route = p.RoutingTable()[kind]
    source, target = SEED_DIRECTIONS[kind]
    assert route.senders == {source}
    assert route.to_types[0] == target
    assert (set(route.senders), route.to_types, route.user_fields) == DEFAULT_TABLE[kind]
    assert route.channels == ()


def test_default_table_covers_exactly_the_default_event_types() -> None:
    assert set(p.RoutingTable()) == {spec.name for spec in p.DEFAULT_EVENT_TYPES}
    assert not set(p.RoutingTable()) & set(p.CONTROL_TYPES)
    assert all("DASHBOARD" not in route.senders for route in p.DEFAULT_ROUTES)


def test_seed_conversion_example() -> None:
    """docs/protocol.md §8.1: owner 500 and tier user 499, in that order."""
    payload = p.ConversionPayload(
        pay_id=12345,
        adware_id=100,
        owner_id=500,
        cost=1000,
        sales=5000,
        state="PENDING",
        tier_rewards=[
            p.TierRewardEntry(tier_level=1, user_id=499, amount=100),
            p.TierRewardEntry(tier_level=2, user_id="500", amount=10),  # the owner again
        ],
    )
    channels = p.RoutingTable().channels(event_of("conversion", payload))
    assert channels == ["type:AFAD", "type:DASHBOARD", "user:500", "user:499"]


@pytest.mark.parametrize(
    ("owner", "channel"),
    [(500, "user:500"), ("500", "user:500"), ("0500", "user:0500"), (True, None), (None, None)],
)
def test_user_values(owner: Any, channel: str | None) -> None:
    channels = p.RoutingTable().channels(event_of("stats_update", {"owner_id": owner}))
    assert channels == ["type:DASHBOARD", *([channel] if channel else [])]


def test_only_objects_in_a_list_name_users() -> None:
    """``a[].b`` reads ``b`` of objects: a number's ``.real`` or ``.imag`` names nobody."""
    route = p.Route("promo_push", frozenset(), ("OPS",), ("items[].real", "items[].imag"))
    payload = {"items": [7, True, 2.5, "x", None, [1], {"real": 9}]}
    assert p.RoutingTable([route]).channels(event_of("promo_push", payload)) == [
        "type:OPS",
        "user:9",
    ]


def test_unrouted_type_goes_nowhere() -> None:
    assert p.RoutingTable().channels(event_of("promo_push", {"owner_id": 1})) == []


def test_with_routes_replaces_and_adds() -> None:
    ops = p.Route("promo_push", frozenset({"CATS"}), ("OPS",), channels=("topic:audit",))
    quiet = p.Route("click", frozenset({"CATS"}), ("AFAD",))
    table = p.RoutingTable().with_routes([ops, quiet])
    assert table["promo_push"] == ops
    assert table["click"] == quiet
    assert table.channels(event_of("promo_push", {})) == ["type:OPS", "topic:audit"]
    assert len(table) == len(p.DEFAULT_ROUTES) + 1
