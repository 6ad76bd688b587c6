"""Hypothesis strategies for the wire protocol.

Message instances are derived from the attrs field types of ``protocol.messages``
(``for_type``), so a field added to a message class is generated without touching
this file. Every value is JSON-safe: finite floats, integers within ±2**53 (what
every JSON parser on the other side, JavaScript included, reads exactly) and text
without lone surrogates.

``CODEC`` knows the default event types plus ``OPERATOR_TYPES``, operator-declared
types whose payload is any JSON object.
"""

from __future__ import annotations

import functools
import json
import random
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import attrs
from hypothesis import strategies as st

import protocol as p
from protocol import messages as m

__all__ = [
    "CODEC",
    "CONTROL_CLASSES",
    "OPERATOR_TYPES",
    "control_messages",
    "event_texts",
    "events",
    "for_type",
    "frame_texts",
    "ids",
    "instances",
    "json_floats",
    "json_ints",
    "json_objects",
    "json_scalars",
    "json_text",
    "json_values",
    "messages",
    "mutated_frames",
    "payloads",
    "render",
    "repeated_key_frames",
]

MAX_SAFE = 2**53
OPERATOR_TYPES = ("promo_push", "inventory_sync")
CODEC = p.Codec(p.EventRegistry().with_types(OPERATOR_TYPES))
CONTROL_CLASSES: tuple[type, ...] = tuple(p.CONTROL_TYPES.values())

# --- JSON values -------------------------------------------------------------------


def json_ints() -> st.SearchStrategy[int]:
    return st.integers(-MAX_SAFE, MAX_SAFE)


def json_floats() -> st.SearchStrategy[float]:
    return st.floats(allow_nan=False, allow_infinity=False)


def json_text(min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[str]:
    return st.text(st.characters(exclude_categories=("Cs",)), min_size=min_size, max_size=max_size)


def json_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), json_ints(), json_floats(), json_text())


@functools.cache
def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value (what ``orjson.loads`` can return for these inputs)."""
    return st.recursive(
        json_scalars(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(json_text(max_size=8), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def json_objects() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(json_text(max_size=8), json_values(max_leaves=6), max_size=5)


def ids() -> st.SearchStrategy[int | str]:
    """``messages.Id``: an integer or a (numeric or not) string."""
    return st.one_of(json_ints(), json_ints().map(str), json_text(max_size=12))


# --- messages from attrs field types -------------------------------------------------


@functools.cache
def for_type(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy for values of the annotation ``tp`` as the codec accepts them."""
    if tp is Any:
        return json_values()
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        return json_ints()
    if tp is float:
        return json_floats()
    if tp is str:
        return json_text()
    origin = get_origin(tp)
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if int in args and str in args:  # an Id (possibly with another member)
            rest = [for_type(a) for a in args if a not in (int, str)]
            return st.one_of(ids(), *rest)
        return st.one_of(*(for_type(arg) for arg in args))
    if origin is list:
        (item,) = get_args(tp)
        return st.lists(for_type(item), max_size=3)
    if tp is dict or origin is dict:
        return json_objects()
    if isinstance(tp, type) and attrs.has(tp):
        return instances(tp)
    raise TypeError(f"no strategy for {tp!r}")


@functools.cache
def instances(cls: type) -> st.SearchStrategy[Any]:
    """Instances of an attrs message class; fields with a default are sometimes left out."""
    hints = get_type_hints(cls, vars(m))
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in attrs.fields(cls):
        target = required if field.default is attrs.NOTHING else optional
        target[field.name] = for_type(hints[field.name])
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


@functools.cache
def control_messages() -> st.SearchStrategy[m.ControlMessage]:
    return st.one_of(*(instances(cls) for cls in CONTROL_CLASSES))


@functools.cache
def payloads(event_type: str) -> st.SearchStrategy[m.Payload]:
    """A payload for a type ``CODEC`` knows: typed, or any object if free-form."""
    cls = CODEC.registry[event_type].payload
    return json_objects() if cls is None else instances(cls)


def _envelope_text(prefix: str = "") -> st.SearchStrategy[str]:
    return json_text(min_size=1, max_size=16).map(lambda s: prefix + s)


_VERSIONS = st.sampled_from(["1.0", "1.1"]) | _envelope_text("1.")
_TIMESTAMPS = st.just("2025-10-29T12:34:56Z") | _envelope_text()
_MESSAGE_IDS = st.uuids().map(str) | _envelope_text()
_SENDERS = st.sampled_from(["CATS", "AFAD", "DASHBOARD"]) | _envelope_text()


@functools.cache
def events(event_type: str | None = None) -> st.SearchStrategy[m.Event]:
    """``Event``s built in code (``raw`` empty) of ``event_type`` or any known type."""
    if event_type is None:
        return st.one_of(*(events(kind) for kind in sorted(CODEC.registry)))
    return st.builds(
        m.Event,
        type=st.just(event_type),
        version=_VERSIONS,
        timestamp=_TIMESTAMPS,
        message_id=_MESSAGE_IDS,
        sender=_SENDERS,
        payload=payloads(event_type),
    )


@functools.cache
def messages() -> st.SearchStrategy[m.Message]:
    return st.one_of(control_messages(), events())


# --- frame texts ---------------------------------------------------------------------

#: Spellings of numbers a publisher may use in fields the gateway does not read.
NUMBER_SPELLINGS = ("1", "1.0", "-0", "0.0", "1e2", "1E+2", "10e-1", "123456789", "-7.25")


class Raw(str):
    """A JSON token written verbatim by ``render``."""


class Pairs(list[tuple[str, Any]]):
    """An object as a list of (key, value) pairs: ``render`` keeps repeated keys."""


def render(value: Any, ws: str = "", ascii_only: bool = True, seed: int = 0) -> str:
    """JSON text for ``value`` with keys in an order shuffled by ``seed``, ``ws``
    around every token, non-ASCII characters escaped or not; ``Raw`` verbatim."""
    rng = random.Random(seed)

    def dump(v: Any) -> str:
        return json.dumps(v, ensure_ascii=ascii_only)

    def go(v: Any) -> str:
        if isinstance(v, Raw):
            return str(v)
        if isinstance(v, dict | Pairs):
            items = list(v.items()) if isinstance(v, dict) else list(v)
            rng.shuffle(items)
            fields = [f"{ws}{dump(k)}{ws}:{ws}{go(x)}" for k, x in items]
            return "{" + ",".join(fields) + ws + "}"
        if isinstance(v, list):
            return "[" + ",".join(f"{ws}{go(item)}" for item in v) + ws + "]"
        return dump(v)

    return go(value)


def _unknown_fields() -> st.SearchStrategy[dict[str, Any]]:
    values = st.one_of(json_values(max_leaves=4), st.sampled_from(NUMBER_SPELLINGS).map(Raw))
    return st.dictionaries(json_text(max_size=8).map(lambda k: "x_" + k), values, max_size=3)


@st.composite
def event_texts(draw: st.DrawFn, event_type: str | None = None) -> str:
    """Valid event text as a foreign publisher may write it: unknown fields at the
    top level and in the payload, any key order, whitespace, numbers as ``1``,
    ``1.0`` or ``1e2`` where the gateway does not read them."""
    obj = json.loads(CODEC.encode(draw(events(event_type))))
    obj.update(draw(_unknown_fields()))
    obj["payload"].update(draw(_unknown_fields()))
    ws = draw(st.sampled_from(["", " ", "\n  ", "\t"]))
    return render(obj, ws, draw(st.booleans()), draw(st.integers(0, 2**32)))


@functools.cache
def frame_texts() -> st.SearchStrategy[str]:
    """Text of any valid frame: an encoded control message or an event text."""
    return st.one_of(control_messages().map(CODEC.encode), event_texts())


# --- invalid input -------------------------------------------------------------------


def _slots(obj: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in a JSON tree, depth first."""
    out: list[tuple[Any, Any]] = []
    keys = list(obj) if isinstance(obj, dict) else range(len(obj)) if isinstance(obj, list) else []
    for key in keys:
        out.append((obj, key))
        out.extend(_slots(obj[key]))
    return out


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


@st.composite
def mutated_frames(draw: st.DrawFn) -> str | bytes:
    """A valid frame broken once: a field dropped, a value swapped for another
    JSON type, truncated anywhere, a byte flipped, random bytes inserted."""
    text = draw(frame_texts())
    how = draw(st.sampled_from(["drop", "swap", "truncate", "flip", "insert"]))
    if how in ("drop", "swap"):
        obj = json.loads(text)
        container, key = draw(st.sampled_from(_slots(obj)))
        if how == "drop":
            del container[key]
        else:
            old = _json_kind(container[key])
            container[key] = draw(json_values().filter(lambda v: _json_kind(v) != old))
        return json.dumps(obj)
    data = text.encode()
    at = draw(st.integers(0, len(data)))
    if how == "truncate":
        return data[:at]
    if how == "flip" and at < len(data):
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]


@st.composite
def repeated_key_frames(draw: st.DrawFn) -> str:
    """A valid frame in which one object, at any depth, repeats one of its keys
    (with the same value or another one)."""
    root = {"frame": json.loads(draw(frame_texts()))}
    objects = [(c, k) for c, k in _slots(root) if isinstance(c[k], dict) and c[k]]
    container, key = draw(st.sampled_from(objects))
    obj = container[key]
    name = draw(st.sampled_from(sorted(obj)))
    again = draw(st.just(obj[name]) | json_values(max_leaves=4))
    container[key] = Pairs([*obj.items(), (name, again)])
    ws = draw(st.sampled_from(["", " "]))
    return render(root["frame"], ws, draw(st.booleans()), draw(st.integers(0, 2**32)))
