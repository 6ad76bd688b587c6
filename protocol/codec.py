"""Text in, typed message out (and back): the cattrs + orjson codec.

``Codec.decode`` turns a frame's text or bytes into a typed message or raises
``ProtocolError``; no other exception escapes, whatever the input (the tests
fuzz this). ``Codec.encode`` turns a message into JSON text. The validation
policy is written out in docs/protocol.md §"Validation"; in short:

- input longer than ``max_size`` UTF-8 bytes → ``MESSAGE_TOO_LARGE``, close 1009;
- bytes that are not UTF-8 → ``INVALID_MESSAGE``, close 1007;
- not JSON, not an object, no string ``type``, nesting deeper than ``max_depth``,
  a missing required field or a field of the wrong JSON type → ``INVALID_MESSAGE``
  (the connection stays open, as with the seed's server);
- an object that repeats a key → ``INVALID_MESSAGE`` (recipients' parsers
  disagree on which value wins);
- a ``type`` that is neither a control message nor a registered event type →
  ``UNKNOWN_TYPE``;
- an empty array ``[]`` where an object is expected reads as ``{}`` (that is
  how PHP's json_encode writes an empty associative array);
- unknown fields are never an error: the gateway ignores them and forwards them.

Values are checked, never converted: ``"5"`` is not an int, ``true`` is not 1.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from types import NoneType, UnionType
from typing import Any, Final, Literal, Union, get_args, get_origin

import attrs
import cattrs
import orjson
from cattrs.errors import CattrsError, IterableValidationError, IterableValidationNote
from cattrs.gen import make_dict_unstructure_fn
from cattrs.preconf.orjson import make_converter

from . import messages as m
from .errors import CloseCode, ErrorCode, ProtocolError
from .fastcheck import compile_check
from .registry import CONTROL_TYPES, EventRegistry

__all__ = ["DEFAULT_MAX_DEPTH", "DEFAULT_MAX_SIZE", "Codec", "decode", "encode", "json_object"]

DEFAULT_MAX_SIZE: Final = 64 * 1024
#: Deep enough for any real payload, shallow enough for every recipient's parser
#: (PHP's json_decode gives up at 512 and returns null).
DEFAULT_MAX_DEPTH: Final = 32

_ENVELOPE_FIELDS: Final = ("version", "timestamp", "message_id", "sender")
_MAX_ID_LENGTH: Final = 128


class _Invalid(ValueError):
    """Raised inside structuring hooks; turned into ProtocolError at the boundary."""


def _expect(kind: Any, name: str) -> Callable[[Any, Any], Any]:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass in Python but not a number on the wire.
    bool_ok = bool in kinds

    def check(value: Any, _: Any) -> Any:
        if isinstance(value, kinds) and (bool_ok or not isinstance(value, bool)):
            return value
        raise _Invalid(f"expected {name}, got {_json_type(value)}")

    return check


_PRIMITIVE_NAMES: Final = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "a boolean",
    NoneType: "null",
}


def _is_primitive_union(t: Any) -> bool:
    return get_origin(t) in (Union, UnionType) and all(a in _PRIMITIVE_NAMES for a in get_args(t))


def _primitive_union_hook(t: Any) -> Callable[[Any, Any], Any]:
    members = get_args(t)
    kinds = tuple(int | float if a is float else a for a in members)
    return _expect(kinds, " or ".join(_PRIMITIVE_NAMES[a] for a in members))


def _is_dict_type(t: Any) -> bool:
    return t is dict or get_origin(t) is dict


def _is_list_type(t: Any) -> bool:
    return get_origin(t) is list


def json_object(data: str | bytes) -> dict[str, Any]:
    """Parse one JSON object (the shape of every message, envelope and payload);
    anything else raises ValueError saying what it is."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"message must be a JSON object, not {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _make_converter(*, detailed: bool) -> cattrs.Converter:
    conv = make_converter(forbid_extra_keys=False, detailed_validation=detailed)
    conv.register_structure_hook(int, _expect(int, "an integer"))
    conv.register_structure_hook(float, _expect((int, float), "a number"))
    conv.register_structure_hook(str, _expect(str, "a string"))
    conv.register_structure_hook(bool, _expect(bool, "a boolean"))
    conv.register_structure_hook_factory(_is_primitive_union, _primitive_union_hook)
    conv.register_structure_hook(Any, lambda value, _: value)

    def dict_hook(value: Any, _: Any) -> Any:
        if isinstance(value, dict):
            return value
        if value == []:
            return {}  # PHP's json_encode writes an empty associative array as []
        raise _Invalid(f"expected an object, got {_json_type(value)}")

    conv.register_structure_hook_func(_is_dict_type, dict_hook)

    def list_factory(t: Any) -> Callable[[Any, Any], Any]:
        (item,) = get_args(t)
        structure_item = conv.get_structure_hook(item)

        def list_hook(value: Any, _: Any) -> Any:
            if not isinstance(value, list):
                raise _Invalid(f"expected an array, got {_json_type(value)}")
            try:
                return [structure_item(v, item) for v in value]
            except Exception:
                if not detailed:
                    raise
            # Only on failure, and only for the error message: find which items.
            errors: list[Exception] = []
            for index, v in enumerate(value):
                try:
                    structure_item(v, item)
                except Exception as exc:
                    exc.__notes__ = [
                        *getattr(exc, "__notes__", []),
                        IterableValidationNote(f"@ index {index}", index, item),
                    ]
                    errors.append(exc)
            raise IterableValidationError(f"While structuring {t!r}", errors, t)

        return list_hook

    conv.register_structure_hook_factory(_is_list_type, list_factory)

    # An attrs class must arrive as a JSON object; cattrs alone would try
    # indexing whatever came. Unstructuring omits fields left at their default,
    # so messages built in code stay as small as the seed's.
    def attrs_structure_factory(cls: type) -> Callable[[Any, Any], Any]:
        inner: Callable[[Any, Any], Any] = cattrs.gen.make_dict_structure_fn(cls, conv)

        def hook(value: Any, _: Any) -> Any:
            if value == []:
                value = {}  # PHP's empty associative array, as in dict_hook
            if not isinstance(value, dict):
                raise _Invalid(f"expected an object, got {_json_type(value)}")
            return inner(value, cls)

        return hook

    conv.register_structure_hook_factory(attrs.has, attrs_structure_factory)
    conv.register_unstructure_hook_factory(
        attrs.has,
        lambda cls: make_dict_unstructure_fn(cls, conv, _cattrs_omit_if_default=True),
    )
    return conv


def _too_deep(text: str, value: Any, limit: int) -> bool:
    # Nesting needs brackets: with no more of them than the limit, no walk is needed.
    if text.count("{") + text.count("[") <= limit:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))
    return False


def _utf8_size(text: str, limit: int) -> int:
    """The UTF-8 length of ``text``, computed only when characters alone cannot tell."""
    n = len(text)
    if n > limit or n * 4 <= limit:
        return n
    return len(text.encode("utf-8", "surrogatepass"))


_SPACE_BEFORE_COLON: Final = re.compile(r'"\s+:')


def _may_repeat_keys(text: str, value: Any) -> bool:
    """False only if no object can repeat a key.

    Every key is written ``"...":`` and orjson re-encodes the parsed value
    (which kept one of each repeated key) the same way, string values included;
    equal counts of ``":`` therefore mean nothing was dropped. Space before a
    colon, or a \\u00XX escape (which could hide a quote or spell a key), makes
    the counts incomparable, so those texts take the exact check.
    """
    if "\\u00" in text or _SPACE_BEFORE_COLON.search(text) is not None:
        return True
    return text.count('":') != orjson.dumps(value).count(b'":')


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Invalid("repeated key")
    return obj


def _repeats_keys(text: str) -> bool:
    try:
        json.loads(text, object_pairs_hook=_no_repeats)
    except _Invalid:
        return True
    return False


def _describe(exc: BaseException, path: str) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc, path=path, format_exception=_format))
    return str(exc)


def _format(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, _Invalid):
        return str(exc)
    if get_origin(type_) is Literal:
        return f"must be one of {', '.join(map(repr, get_args(type_)))}"
    return f"invalid value ({type(exc).__name__})"


class Codec:
    """Decodes and encodes messages for one registry of event types.

    Thread-safe and stateless after construction; build one per configuration.
    """

    def __init__(
        self,
        registry: EventRegistry | None = None,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.registry = registry if registry is not None else EventRegistry()
        self.max_size = max_size
        self.max_depth = max_depth
        # The generated checks (protocol/fastcheck.py) take valid messages; on a
        # refusal the fast converter decides again, and the detailed one re-runs
        # only to name every bad field (its bookkeeping costs ~2x on the happy path).
        self._conv = _make_converter(detailed=False)
        self._detailed = _make_converter(detailed=True)

    # -- decoding --------------------------------------------------------------

    def decode(self, data: str | bytes) -> m.Message:
        """Parse one frame. Returns a control message or an ``Event``.

        Raises ``ProtocolError`` (and nothing else) for any input it refuses.
        """
        size = _utf8_size(data, self.max_size) if isinstance(data, str) else len(data)
        if size > self.max_size:
            raise ProtocolError(
                ErrorCode.MESSAGE_TOO_LARGE,
                f"message is {size} bytes; the limit is {self.max_size}",
                close_code=CloseCode.MESSAGE_TOO_BIG,
            )
        if isinstance(data, bytes | bytearray | memoryview):
            try:
                text = bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE,
                    "message is not valid UTF-8",
                    close_code=CloseCode.INVALID_DATA,
                ) from None
        else:
            text = data
        try:
            obj = json_object(text)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, str(exc)) from None
        kind = obj.get("type")
        if not isinstance(kind, str):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "message has no string field 'type'")
        if _too_deep(text, obj, self.max_depth):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, f"message is nested deeper than {self.max_depth}"
            )
        if _may_repeat_keys(text, obj) and _repeats_keys(text):
            # Parsers disagree on repeated keys (most keep the last, some the first);
            # a recipient must never read a different sender or owner than we checked.
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, "an object repeats a key", message_id=_message_id(obj)
            )
        control = CONTROL_TYPES.get(kind)
        if control is not None:
            return self._structure(obj, control, None)  # type: ignore[no-any-return]
        spec = self.registry.get(kind)
        if spec is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_TYPE,
                f"unknown message type {kind[:64]!r}",
                message_id=_message_id(obj),
            )
        return self._event(obj, text, spec.payload)

    def _event(self, obj: dict[str, Any], text: str, payload_cls: type | None) -> m.Event:
        message_id = _message_id(obj)
        for name in (*_ENVELOPE_FIELDS, "payload"):
            if name not in obj:
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE,
                    f"$.{name}: required field missing",
                    message_id=message_id,
                )
        for name in _ENVELOPE_FIELDS:
            value = obj[name]
            if not isinstance(value, str) or not value:
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE,
                    f"$.{name}: expected a non-empty string",
                    message_id=message_id,
                )
        if "seq" in obj:
            # Recipients read the gateway's seq from this key (docs/delivery.md);
            # a publisher must not be able to plant one.
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                "$.seq: assigned by the gateway, not by publishers",
                message_id=message_id,
            )
        if len(obj["message_id"]) > _MAX_ID_LENGTH:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, f"$.message_id: longer than {_MAX_ID_LENGTH}"
            )
        if not obj["version"].startswith("1."):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"$.version: unsupported protocol version {obj['version'][:16]!r}",
                message_id=message_id,
            )
        raw_payload = obj["payload"]
        if raw_payload == []:
            raw_payload = {}  # PHP's empty associative array, as in dict_hook
        if not isinstance(raw_payload, dict):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"$.payload: expected an object, got {_json_type(raw_payload)}",
                message_id=message_id,
            )
        payload = (
            raw_payload
            if payload_cls is None
            else self._structure(raw_payload, payload_cls, message_id, path="$.payload")
        )
        return m.Event(
            type=obj["type"],
            version=obj["version"],
            timestamp=obj["timestamp"],
            message_id=message_id or "",
            sender=obj["sender"],
            payload=payload,
            raw=text,
        )

    def _structure(
        self, obj: dict[str, Any], cls: type, message_id: str | None, path: str = "$"
    ) -> Any:
        check = compile_check(cls)
        if check is not None:
            result = check(obj)
            if result is not None:
                return result
        try:
            return self._conv.structure(obj, cls)
        except (CattrsError, ValueError, TypeError, KeyError):
            pass
        try:
            self._detailed.structure(obj, cls)
        except (CattrsError, ValueError, TypeError, KeyError) as exc:
            detail = _describe(exc, path)
        else:  # pragma: no cover - the two converters disagree: a bug
            detail = "invalid message"
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, detail, message_id=message_id)

    # -- encoding --------------------------------------------------------------

    def encode(self, message: m.Message) -> str:
        """JSON text for ``message``; an ``Event`` that has its ``raw`` text
        returns it unchanged (what was received is what is forwarded)."""
        if isinstance(message, m.Event):
            if message.raw:
                return message.raw
            return self.encode_event(message)
        body = self._conv.unstructure(message)
        return orjson.dumps({"type": message.type, **body}).decode()

    def encode_event(self, event: m.Event) -> str:
        """Build the envelope's text from the typed fields (ignores ``raw``)."""
        payload = (
            event.payload
            if isinstance(event.payload, dict)
            else self._conv.unstructure(event.payload)
        )
        return orjson.dumps(
            {
                "version": event.version,
                "type": event.type,
                "timestamp": event.timestamp,
                "message_id": event.message_id,
                "sender": event.sender,
                "payload": payload,
            }
        ).decode()


def _message_id(obj: dict[str, Any]) -> str | None:
    value = obj.get("message_id")
    return value[:_MAX_ID_LENGTH] if isinstance(value, str) else None


@functools.cache
def _default() -> Codec:
    return Codec()


def decode(data: str | bytes) -> m.Message:
    """Decode with the default registry and limits; see ``Codec.decode``."""
    return _default().decode(data)


def encode(message: m.Message) -> str:
    """Encode with the default codec; see ``Codec.encode``."""
    return _default().encode(message)
