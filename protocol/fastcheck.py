"""The codec's fast path: one generated function per message class, no error reports.

``compile_check(cls)`` writes (once per class) a plain Python function that
takes the parsed JSON object and returns the structured attrs instance, or
``None`` if anything is wrong. It accepts exactly what the codec's cattrs
converter accepts — values are checked, never converted: ``"5"`` is not an int,
``true`` is not 1, an empty array ``[]`` reads as an empty object (PHP) — but
checks each field inline instead of through a hook call, which halves the cost
of a valid publish. When it says ``None`` the codec asks the detailed cattrs
converter what exactly is wrong, so error messages are as good as before. A
type it does not know makes ``compile_check`` return ``None``: that class keeps
using cattrs. ``tests/protocol/test_fastcheck.py`` checks the two agree on
random input.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import attrs

__all__ = ["Check", "compile_check"]

Check = Callable[[dict[str, Any]], Any]

_MISSING = object()
_PRIMITIVES: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    str: (str,),
    bool: (bool,),
    NoneType: (NoneType,),
}


class _Unsupported(Exception):
    pass


class _Writer:
    """Collects the generated code's lines and the names its globals need."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {"_MISSING": _MISSING}
        self._counter = itertools.count()

    def name(self, value: Any, prefix: str) -> str:
        key = f"_{prefix}{next(self._counter)}"
        self.names[key] = value
        return key

    def var(self) -> str:
        return f"v{next(self._counter)}"


def _members(t: Any) -> tuple[Any, ...]:
    return get_args(t) if get_origin(t) in (Union, UnionType) else (t,)


def _value(w: _Writer, t: Any, v: str, indent: str) -> None:
    """Lines that check ``v`` against type ``t``, replacing it with its structured
    value where that differs; ``return None`` on a mismatch."""
    members = _members(t)
    if Any in members or object in members:
        return
    kinds: list[type] = []
    others: list[Any] = []
    for member in members:
        if member in _PRIMITIVES:
            kinds.extend(_PRIMITIVES[member])
        else:
            others.append(member)
    if not others:
        test = " and ".join(f"type({v}) is not {w.name(k, 'T')}" for k in dict.fromkeys(kinds))
        w.lines.append(f"{indent}if {test}: return None")
        return
    if len(others) != 1:
        raise _Unsupported(t)
    (other,) = others
    allow = " and ".join(f"type({v}) is not {w.name(k, 'T')}" for k in dict.fromkeys(kinds))
    guard = f"{indent}if {allow}:" if allow else f"{indent}if True:"
    inner = indent + "    "
    w.lines.append(guard)
    origin = get_origin(other)
    if origin is Literal:
        values = w.name(tuple(get_args(other)), "L")
        w.lines.append(f"{inner}if {v} not in {values}: return None")
    elif other is dict or origin is dict:
        w.lines.append(f"{inner}if type({v}) is not dict:")
        w.lines.append(f"{inner}    if {v} != []: return None")
        w.lines.append(f"{inner}    {v} = {{}}")
    elif origin is list:
        (item,) = get_args(other)
        out, x = w.var(), w.var()
        w.lines.append(f"{inner}if type({v}) is not list: return None")
        w.lines.append(f"{inner}{out} = []")
        w.lines.append(f"{inner}for {x} in {v}:")
        _value(w, item, x, inner + "    ")
        w.lines.append(f"{inner}    {out}.append({x})")
        w.lines.append(f"{inner}{v} = {out}")
    elif attrs.has(other):
        check = compile_check(other)
        if check is None:
            raise _Unsupported(other)
        fn = w.name(check, "C")
        w.lines.append(f"{inner}if type({v}) is not dict:")
        w.lines.append(f"{inner}    if {v} != []: return None")
        w.lines.append(f"{inner}    {v} = {{}}")
        w.lines.append(f"{inner}{v} = {fn}({v})")
        w.lines.append(f"{inner}if {v} is None: return None")
    else:
        raise _Unsupported(other)


@functools.cache
def compile_check(cls: type) -> Check | None:
    """The fast structuring function for attrs class ``cls`` (see the module
    docstring), or ``None`` if it has a field type this module does not handle."""
    w = _Writer()
    w.lines.append("def check(d):")
    hints = get_type_hints(cls)
    args: list[str] = []
    try:
        for field in attrs.fields(cls):
            if not field.init:
                continue
            v = w.var()
            w.lines.append(f"    {v} = d.get({field.name!r}, _MISSING)")
            w.lines.append(f"    if {v} is _MISSING:")
            default = field.default
            if default is attrs.NOTHING:
                w.lines.append("        return None")
            elif isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                if default.takes_self:
                    raise _Unsupported(field.name)
                factory = w.name(default.factory, "F")
                w.lines.append(f"        {v} = {factory}()")
            else:
                w.lines.append(f"        {v} = {w.name(default, 'D')}")
            w.lines.append("    else:")
            before = len(w.lines)
            _value(w, hints[field.name], v, "        ")
            if len(w.lines) == before:
                w.lines.append("        pass")
            args.append(f"{field.alias}={v}")
    except _Unsupported:
        return None
    w.lines.append(f"    return {w.name(cls, 'K')}({', '.join(args)})")
    namespace = dict(w.names)
    exec("\n".join(w.lines), namespace)  # our own generated code, from type hints
    check: Check = namespace["check"]
    return check
