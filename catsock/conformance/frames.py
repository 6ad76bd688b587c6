"""Building the frames the checks send: fresh events as a seed publisher writes
them, sample payloads, and vector frames given a message_id of their own."""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _event(type_: str, sender: str, payload: Mapping[str, Any]) -> str:
    """A fresh event text with a unique message_id, as a seed publisher writes it."""
    return json.dumps(
        {
            "version": "1.0",
            "type": type_,
            "timestamp": _now(),
            "message_id": f"conformance-{uuid.uuid4()}",
            "sender": sender,
            "payload": payload,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _message_id(text: str) -> str | None:
    try:
        value = json.loads(text).get("message_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _conversion(owner: int | str, *tier_users: int | str) -> dict[str, Any]:
    return {
        "pay_id": 12345,
        "access_id": 67890,
        "adware_id": 100,
        "adware_name": "商品A",
        "owner_id": owner,
        "owner_name": "アフィリエイターX",
        "cost": 1000,
        "sales": 5000,
        "state": "PENDING",
        "tier_rewards": [
            {"tier_level": i + 1, "user_id": u, "user_name": "親", "rate": 10, "amount": 100}
            for i, u in enumerate(tier_users)
        ],
        "created_at": "2025-10-29T12:34:56Z",
    }


_ADWARE_UPDATE: Final = {"adware_id": 100, "action": "UPDATE", "data": {"money": 1000}}
_BUDGET_UPDATE: Final = {"adware_id": 100, "limit": 200000}

#: A vector frame's message_id value (the first one), for ``_fresh_id`` to extend.
_MESSAGE_ID = re.compile(r'("message_id"\s*:\s*")([^"\\]{0,100})(")')


def _fresh_id(frame: str | bytes) -> str | bytes:
    """The frame with a message_id no earlier publish used: gateways may (catsock
    does) deduplicate publishes by message_id, and the vectors share ids."""
    if not isinstance(frame, str):
        return frame
    suffix = f"~{secrets.token_hex(4)}"
    return _MESSAGE_ID.sub(lambda g: g[1] + g[2] + suffix + g[3], frame, count=1)
