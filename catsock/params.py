"""Reading an HTTP request's query parameters and JSON body, with one clear 400
(``INVALID_MESSAGE``, the front door's error shape) for anything wrong.

The parsers raise ``BadRequest`` with a message saying what is wrong; an
endpoint catches it once and answers ``bad(str(exc))``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any
from urllib.parse import parse_qs

from protocol import ErrorCode, json_object

from .transport.frontdoor import Request, Response, error_response

__all__ = [
    "BadRequest",
    "bad",
    "body",
    "choice",
    "float_",
    "int_",
    "optional_int",
    "query",
    "text",
]


class BadRequest(ValueError):
    """A parameter or body is wrong; the message says how."""


def bad(message: str) -> Response:
    return error_response(400, ErrorCode.INVALID_MESSAGE, message)


async def body(request: Request) -> dict[str, Any] | None:
    try:
        return json_object(await request.read_body())
    except ValueError:
        return None


def query(request: Request) -> dict[str, list[str]]:
    return parse_qs(request.query, keep_blank_values=True)


def text(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1].strip() or None if values else None


def int_(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    value = optional_int(query, name, low, high)
    return default if value is None else value


def optional_int(
    query: dict[str, list[str]], name: str, low: int, high: int | None = None
) -> int | None:
    """The integer ``name`` within ``low``..``high`` (no upper bound: None), or None."""
    values = query.get(name)
    if not values:
        return None
    try:
        value = int(values[-1])
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if value < low or (high is not None and value > high):
        bound = f"{low}-{high}" if high is not None else f">= {low}"
        raise BadRequest(f"{name} must be {bound}")
    return value


def float_(
    query: dict[str, list[str]], name: str, default: float, low: float, high: float
) -> float:
    values = query.get(name)
    if not values:
        return default
    try:
        value = float(values[-1])
    except ValueError:
        raise BadRequest(f"{name} must be a number") from None
    if not low <= value <= high:  # NaN fails too
        raise BadRequest(f"{name} must be between {low:g} and {high:g}")
    return value


def choice(query: dict[str, list[str]], name: str, default: str, allowed: Collection[str]) -> str:
    value = text(query, name) or default
    if value not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}")
    return value
