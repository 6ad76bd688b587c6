"""protocol/privacy.py: projections and the personal-field matcher, driven by hypothesis.

A personal field is hidden in random JSON under a random spelling of its name
(any case, sometimes a ``\\u`` escape) at a random depth; projecting must remove
it, and redacting for the message log (storage/logs.py ``redact``, the same
matcher) must overwrite it, with every other key and value left as it was.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.privacy import (
    Projection,
    ProjectionRule,
    Projections,
    fold,
    may_contain,
    parse_rule_key,
    project,
)
from storage.logs import REDACTED, redact

PERSONAL = ("ipaddress", "useragent", "referer")
SECRET = "SECRET-VALUE-7"
# Keys that can never spell a personal field, whatever their case.
safe_keys = st.text("abcdefghjkmnoqstvwxyz_0123456789", min_size=1, max_size=8)
scalars = st.one_of(st.integers(), st.booleans(), st.none(), st.text("abc xyz", max_size=5))


@st.composite
def spellings(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(PERSONAL))
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if up else c for c, up in zip(name, flips, strict=True))


def json_values(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return scalars
    inner = json_values(depth - 1)
    return st.one_of(
        scalars,
        st.lists(inner, max_size=3),
        st.dictionaries(safe_keys, inner, max_size=3),
    )


@st.composite
def hidden(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """A payload with personal fields planted at random depths; their spellings."""
    payload: dict[str, Any] = draw(st.dictionaries(safe_keys, json_values(2), max_size=4))
    planted = []
    for _ in range(draw(st.integers(1, 3))):
        # Walk down a random chain of new objects and lists, then plant the key.
        node: Any = payload
        for _ in range(draw(st.integers(0, 6))):
            key = draw(safe_keys)
            child: Any = {} if draw(st.booleans()) else [{}]
            if isinstance(node, dict):
                node[key] = child
            node = child[0] if isinstance(child, list) else child
        spelling = draw(spellings())
        node[spelling] = SECRET
        planted.append(spelling)
    return payload, planted


def envelope(payload: dict[str, Any]) -> dict[str, Any]:
    return {"version": "1.0", "type": "click", "message_id": "m1", "payload": payload}


def escape_keys(text: str, names: list[str]) -> str:
    """Spell each planted key with a JSON ``\\u`` escape for its first letter."""
    for name in names:
        text = text.replace(f'"{name}"', f'"\\u{ord(name[0]):04x}{name[1:]}"')
    return text


def without(node: Any, names: frozenset[str], replacement: Any = None) -> Any:
    """The reference answer, written recursively (test inputs are shallow)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key.casefold() in names:
                if replacement is not None:
                    out[key] = replacement
            else:
                out[key] = without(value, names, replacement)
        return out
    if isinstance(node, list):
        return [without(item, names, replacement) for item in node]
    return node


@given(hidden(), st.booleans())
def test_projection_removes_personal_fields_in_any_case_at_any_depth(
    case: tuple[dict[str, Any], list[str]], escaped: bool
) -> None:
    payload, planted = case
    text = json.dumps(envelope(payload), ensure_ascii=False)
    if escaped:
        text = escape_keys(text, planted)
    out = project(text, Projection(deny=fold(PERSONAL)))
    assert SECRET not in out
    assert json.loads(out) == without(envelope(payload), fold(PERSONAL))


@given(hidden(), st.booleans())
def test_redaction_at_rest_overwrites_them_the_same_way(
    case: tuple[dict[str, Any], list[str]], escaped: bool
) -> None:
    payload, planted = case
    text = json.dumps(envelope(payload), ensure_ascii=False)
    if escaped:
        text = escape_keys(text, planted)
    out = redact(text, frozenset(PERSONAL))
    assert SECRET not in out
    assert json.loads(out) == without(envelope(payload), fold(PERSONAL), REDACTED)


@given(st.dictionaries(safe_keys, json_values(3), max_size=5))
def test_nothing_to_strip_gives_back_the_same_text(payload: dict[str, Any]) -> None:
    text = json.dumps(envelope(payload), separators=(", ", " : "))  # unusual spacing
    assert project(text, Projection(deny=fold(PERSONAL))) is text
    assert not may_contain(text, fold(PERSONAL))


def test_envelope_keys_stay_and_an_allow_list_keeps_only_its_payload_keys() -> None:
    text = json.dumps(
        {
            "version": "1.0",
            "type": "click",
            "message_id": "m1",
            "sender": "CATS",
            "timestamp": "t",
            "Referer": "top-level extra",
            "extra": 1,
            "payload": {"Owner_ID": 5, "access_id": {"UserAgent": "x", "k": 1}, "cost": 3},
        }
    )
    out = json.loads(project(text, Projection(fold(PERSONAL), fold(["owner_id", "access_id"]))))
    assert out == {
        "version": "1.0",
        "type": "click",
        "message_id": "m1",
        "sender": "CATS",
        "timestamp": "t",
        "payload": {"Owner_ID": 5, "access_id": {"k": 1}},
    }
    # A deny-list never removes an envelope key (the message must stay one).
    out = json.loads(project(text, Projection(fold(["type", "payload", "extra"]))))
    assert out["type"] == "click"
    assert "payload" in out
    assert "extra" not in out


def test_the_most_specific_rule_wins_and_unbound_types_see_everything_by_default() -> None:
    projections = Projections()
    assert projections.for_recipient("AFAD", False) is None
    assert projections.for_recipient("DASHBOARD", False) is None
    dashboard = projections.for_recipient("DASHBOARD", True)
    assert dashboard is not None
    assert projections.for_recipient("DASHBOARD", True) is dashboard  # one per class
    assert dashboard.projection("click") == Projection(fold(PERSONAL))
    # Any user-bound type, including one the operator added.
    partner = projections.for_recipient("PARTNER", True)
    assert partner is not None
    assert partner.projection("click") is dashboard.projection("click")  # interned
    rules = {
        "*@user": ProjectionRule(),
        "*@user/click": ProjectionRule(deny=("cost",)),
        "DASHBOARD@user": ProjectionRule(strip_personal=False),
        "DASHBOARD@user/click": ProjectionRule(allow=("owner_id",)),
        "AFAD/conversion": ProjectionRule(deny=("sales",), strip_personal=False),
    }
    projections = Projections(rules)
    dashboard = projections.for_recipient("DASHBOARD", True)
    partner = projections.for_recipient("PARTNER", True)
    afad = projections.for_recipient("AFAD", False)
    assert dashboard is not None
    assert partner is not None
    assert afad is not None
    assert dashboard.projection("click") == Projection(fold(PERSONAL), fold(["owner_id"]))
    assert dashboard.projection("conversion") is None  # DASHBOARD@user, all fields
    assert partner.projection("click") == Projection(fold(["cost", *PERSONAL]))
    assert partner.projection("conversion") == Projection(fold(PERSONAL))
    assert afad.projection("conversion") == Projection(fold(["sales"]))
    assert afad.projection("click") is None
    assert projections.for_recipient("CATS", False) is None


@pytest.mark.parametrize("key", ["", "@user", "DASHBOARD@admin", "A/", "A/b/c", "/click"])
def test_a_rule_key_that_names_no_recipients_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="RECIPIENTS"):
        parse_rule_key(key)
