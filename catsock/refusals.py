"""What the gateway keeps of an event it refused (storage/refused.py).

Both ways in, the WebSocket connection and ``POST /api/publish``, call ``refusal``
with what they refused and why; it decides whether that was an event at all and
builds the row the message log's writer stores. Only authenticated senders'
frames are kept: before ``auth`` anyone can send anything, and nobody could
retry it as its sender.
"""

from __future__ import annotations

from protocol import CONTROL_TYPES, Principal, json_object
from protocol import messages as m
from storage import EventRefused

__all__ = ["refusal"]


def refusal(
    principal: Principal | None,
    reason: str,
    detail: str,
    frame: str | bytes,
    event: m.Event | None,
    *,
    connection_id: str | None,
    transport: str,
    at: float,
    max_body: int,
) -> EventRefused | None:
    """The row for ``frame``, refused with error code ``reason``; None when it is
    not an event (a malformed ``ping`` is not), or its sender is unknown."""
    if principal is None:
        return None
    kind: str | None
    message_id: str | None
    if event is not None:
        kind, message_id = event.type, event.message_id
    else:
        kind, message_id = _peek(frame)
        if kind in CONTROL_TYPES:
            return None
    size = len(frame)
    body = None
    if size <= max_body:
        # Text as it came; a binary frame only if it is UTF-8 (the retry sends text).
        if isinstance(frame, str):
            body = frame
        else:
            try:
                body = frame.decode("utf-8")
            except UnicodeDecodeError:
                body = None
    return EventRefused(
        at=at,
        identity=principal.identity,
        client_type=principal.client_type,
        user_id=principal.user_id,
        connection_id=connection_id,
        transport=transport,
        reason=reason,
        detail=detail,
        type=kind,
        message_id=message_id,
        size=size,
        body=body,
    )


def _peek(frame: str | bytes) -> tuple[str | None, str | None]:
    """Type and message_id of a frame the codec refused, where it has them."""
    try:
        obj = json_object(frame)
    except ValueError:
        return None, None
    kind, message_id = obj.get("type"), obj.get("message_id")
    return (
        kind if isinstance(kind, str) else None,
        message_id if isinstance(message_id, str) else None,
    )
