"""Privacy rules as data: which payload fields each class of recipient sees, and how
personal fields are found wherever they hide.

A key matches a field name when the two are equal after ``str.casefold`` (so
``IPAddress`` is ``ipaddress``), at any depth, and after JSON unescaping (a key
spelled ``"\\u0069paddress"`` is ``ipaddress``): matching is done on parsed JSON,
never on text. The same matcher serves projections (``project``: what a recipient
is sent) and redaction at rest (storage/logs.py ``redact``, storage/privacy.py).

A recipient class is a client type and whether the token is bound to a user
(``DASHBOARD@user``) or not (``DASHBOARD``). ``Projections`` resolves a class to a
``Projector``, or to None when the class sees every event as published: those
recipients are sent the publisher's bytes, unchanged (docs/privacy.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import orjson

__all__ = [
    "DEFAULT_PERSONAL_FIELDS",
    "ENVELOPE_KEYS",
    "Projection",
    "ProjectionRule",
    "Projections",
    "Projector",
    "fold",
    "may_contain",
    "parse_rule_key",
    "project",
    "recipient_class",
    "strip_keys",
]

#: The visitor data seed 000's ``click`` carries.
DEFAULT_PERSONAL_FIELDS = ("ipaddress", "useragent", "referer")
#: Top-level keys of the envelope (seed 000 §4.2, plus ``seq``): never removed, or the
#: message would stop being one.
ENVELOPE_KEYS = frozenset(
    {"version", "type", "timestamp", "message_id", "sender", "payload", "seq"}
)
USER_BOUND = "@user"
ANY = "*"

_REMOVE = object()


def fold(fields: Iterable[str]) -> frozenset[str]:
    """Field names as they are compared."""
    return frozenset(field.casefold() for field in fields)


def strip_keys(root: Any, folded: frozenset[str], replacement: object = _REMOVE) -> int:
    """Remove (or, with ``replacement``, overwrite) every key in ``folded`` in the parsed
    JSON ``root``, at any depth; returns how many. Overwriting keeps the key's place."""
    if not folded:
        return 0
    found = 0
    # An explicit stack, not recursion: parsed JSON can nest deeper than Python recurses.
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in [k for k in node if k.casefold() in folded]:
                found += 1
                if replacement is _REMOVE:
                    del node[key]
                else:
                    node[key] = replacement
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, dict | list))
    return found


def may_contain(text: str, folded: frozenset[str]) -> bool:
    """False only when no key of ``folded`` can be in the JSON ``text``: none of their
    quoted names appears in any case, and no key is spelled with a ``\\u`` escape.
    A cheap test that spares parsing most texts."""
    if not folded:
        return False
    if "\\u" in text:
        return True
    lowered = text.casefold()
    return any(f'"{field}"' in lowered for field in folded)


@attrs.frozen(slots=True, cache_hash=True)
class Projection:
    """What one recipient class is sent of one event type.

    ``deny``: keys removed at any depth (casefolded); ``allow``: when not None, the
    only top-level payload keys kept (casefolded; what is kept still loses ``deny``).
    """

    deny: frozenset[str] = frozenset()
    allow: frozenset[str] | None = None


def project(text: str, projection: Projection) -> str:
    """The event ``text`` as ``projection`` lets its recipient see it: ``text`` itself
    (the same object) when nothing is removed, else the JSON re-encoded, key order
    kept. Envelope keys stay; under ``allow`` other top-level keys go too."""
    deny, allow = projection.deny, projection.allow
    if allow is None and not may_contain(text, deny):
        return text
    try:
        root = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "{}"  # cannot happen for an accepted event; never leak what cannot be read
    if not isinstance(root, dict):
        return "{}"
    changed = 0
    if allow is not None:
        payload = root.get("payload")
        for key in [k for k in root if k not in ENVELOPE_KEYS]:
            del root[key]
            changed += 1
        if isinstance(payload, dict):
            for key in [k for k in payload if k.casefold() not in allow]:
                del payload[key]
                changed += 1
    for key, value in list(root.items()):
        if key in ENVELOPE_KEYS:
            if isinstance(value, dict | list):
                changed += strip_keys(value, deny)
        elif key.casefold() in deny:
            del root[key]
            changed += 1
        elif isinstance(value, dict | list):
            changed += strip_keys(value, deny)
    if not changed:
        return text
    try:
        return orjson.dumps(root).decode()
    except orjson.JSONEncodeError:
        # Nested deeper than orjson writes: send the envelope without its payload.
        kept = {k: v for k, v in root.items() if k in ENVELOPE_KEYS and k != "payload"}
        return orjson.dumps({**kept, "payload": {}}).decode()


@attrs.frozen
class ProjectionRule:
    """One configured rule (catsock/config.py ``privacy.projections``)."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    strip_personal: bool = True


def recipient_class(client_type: str, user_bound: bool) -> str:
    return client_type + USER_BOUND if user_bound else client_type


def parse_rule_key(key: str) -> tuple[str, str | None]:
    """``"DASHBOARD@user/click"`` -> (``"DASHBOARD@user"``, ``"click"``); raises
    ValueError for a key that names no recipient class."""
    recipients, sep, event_type = key.partition("/")
    base = recipients.removesuffix(USER_BOUND)
    if not base or "@" in base or (sep and not event_type) or "/" in event_type:
        raise ValueError(
            f"{key!r} is not RECIPIENTS or RECIPIENTS/EVENT_TYPE"
            " (RECIPIENTS: TYPE, TYPE@user, * or *@user)"
        )
    return recipients, event_type or None


class Projector:
    """The projections of one recipient class, by event type (resolved once per type)."""

    def __init__(self, owner: Projections, cls: str) -> None:
        self._owner = owner
        self._cls = cls
        self._by_type: dict[str, Projection | None] = {}

    def projection(self, event_type: str) -> Projection | None:
        """None: this class is sent events of ``event_type`` as published."""
        try:
            return self._by_type[event_type]
        except KeyError:
            found = self._owner.resolve(self._cls, event_type)
            if len(self._by_type) < 1024:  # event types are bounded by the registry
                self._by_type[event_type] = found
            return found

    def body(self, event_type: str, text: str) -> str:
        projection = self.projection(event_type)
        return text if projection is None else project(text, projection)


class Projections:
    """Rules by key (``CLASS`` or ``CLASS/EVENT_TYPE``, CLASS possibly ``*`` or
    ``*@user``) and the personal fields a rule strips by default.

    The most specific rule wins: the class and the event type, then any class of the
    same binding and the event type, then the class, then any class of the same binding.
    """

    def __init__(
        self,
        rules: Mapping[str, ProjectionRule] | None = None,
        personal_fields: Iterable[str] = DEFAULT_PERSONAL_FIELDS,
    ) -> None:
        if rules is None:
            rules = {ANY + USER_BOUND: ProjectionRule()}
        self.personal = fold(personal_fields)
        self._rules: dict[tuple[str, str | None], ProjectionRule] = {}
        for key, rule in rules.items():
            self._rules[parse_rule_key(key)] = rule
        self._classes = {cls for cls, _ in self._rules}
        self._projectors: dict[str, Projector] = {}
        self._interned: dict[Projection, Projection] = {}

    def for_recipient(self, client_type: str, user_bound: bool) -> Projector | None:
        """The projector of a recipient, or None when it is sent every event as published
        (no rule names its class); one shared object per class."""
        cls = recipient_class(client_type, user_bound)
        wildcard = ANY + USER_BOUND if user_bound else ANY
        if cls not in self._classes and wildcard not in self._classes:
            return None
        projector = self._projectors.get(cls)
        if projector is None:
            projector = self._projectors[cls] = Projector(self, cls)
        return projector

    def resolve(self, cls: str, event_type: str) -> Projection | None:
        wildcard = ANY + USER_BOUND if cls.endswith(USER_BOUND) else ANY
        for key in ((cls, event_type), (wildcard, event_type), (cls, None), (wildcard, None)):
            rule = self._rules.get(key)
            if rule is not None:
                return self._projection(rule)
        return None

    def _projection(self, rule: ProjectionRule) -> Projection | None:
        deny = fold(rule.deny) | (self.personal if rule.strip_personal else frozenset())
        allow = fold(rule.allow) if rule.allow else None
        if not deny and allow is None:
            return None
        projection = Projection(deny, allow)
        # One object per distinct projection: entries cache frames under it.
        return self._interned.setdefault(projection, projection)
