"""The codec's generated checks (protocol/fastcheck.py) agree with its cattrs converter.

For every message class, random JSON objects — valid ones built from the class's
fields and mutated ones with any JSON value in any field — must be accepted by
both with equal results, or refused by both.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import Codec, registry
from protocol import messages as m
from protocol.fastcheck import compile_check

CLASSES = sorted(
    {
        *registry.CONTROL_TYPES.values(),
        *(spec.payload for spec in registry.EventRegistry().values() if spec.payload),
        m.TierRewardEntry,
        m.AdwareData,
        m.ErrorPayload,
    },
    key=lambda c: c.__name__,
)
CONVERTER = Codec()._conv

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["CREATE", "UPDATE", "DELETE", "PENDING"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _object(cls: type, draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    """A plausible object for ``cls``: each field present or not, valid-ish or any value."""
    out: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if draw(st.integers(0, 9)) == 0:
            continue  # missing
        kind = draw(st.integers(0, 3))
        if kind == 0:
            out[field.name] = draw(json_values)
        else:
            out[field.name] = draw(_plausible(field.type, depth))
    if draw(st.booleans()):
        out[draw(st.text(max_size=5))] = draw(json_values)  # an unknown key
    return out


def _plausible(t: Any, depth: int) -> st.SearchStrategy[Any]:
    text = str(t)
    options: list[st.SearchStrategy[Any]] = [json_scalars]
    if "int" in text or "Id" in text:
        options.append(st.integers(-5, 5))
    if "float" in text:
        options.append(st.floats(allow_nan=False, allow_infinity=False))
    if "str" in text:
        options.append(st.text(max_size=5))
    if "bool" in text:
        options.append(st.booleans())
    if "dict" in text:
        options.append(st.dictionaries(st.text(max_size=4), json_scalars, max_size=2) | st.just([]))
    if depth < 2:
        for name, cls in (("TierRewardEntry", m.TierRewardEntry), ("AdwareData", m.AdwareData)):
            if name in text:
                obj = st.composite(lambda draw, c=cls: _object(c, draw, depth + 1))()
                options.append(st.lists(obj, max_size=2) if "list" in text else obj)
                options.append(st.just([]))
    if "Literal" in text:
        options.append(st.sampled_from(["CREATE", "UPDATE", "DELETE", "create"]))
    return st.one_of(options)


def _outcome(fn: Any, obj: dict[str, Any]) -> tuple[str, Any]:
    try:
        result = fn(obj)
    except Exception:
        return ("refused", None)
    return ("refused", None) if result is None else ("accepted", result)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_generated_check_agrees_with_cattrs(cls: type, data: st.DataObject) -> None:
    check = compile_check(cls)
    assert check is not None, f"{cls.__name__} should have a fast check"
    obj = data.draw(st.composite(lambda draw: _object(cls, draw))())
    fast = _outcome(check, obj)
    slow = _outcome(lambda o: CONVERTER.structure(o, cls), obj)
    assert fast == slow, obj


def test_every_message_class_gets_a_fast_check() -> None:
    # The speed-up applies only where a check was generated: a new field type the
    # generator does not know would silently fall back to cattrs.
    assert [c.__name__ for c in CLASSES if compile_check(c) is None] == []
