"""Negotiated protocol extensions: what a client may ask for in ``auth``.

A client asks with ``"extensions": {"name": {params}}`` in its ``auth``; the
gateway answers in ``auth_success.extensions`` with what it granted (possibly
``{}``). A client that sends no ``extensions`` key is a seed client: its
``auth_success`` carries no ``extensions`` key and it never sees an extension
message. Unknown or unsupported names are left out of the answer, not refused,
so a newer client works against an older gateway.

Built: ``heartbeat``, ``acks`` and ``resume`` (docs/delivery.md). Reserved
for later versions: ``subscribe``, ``batch``.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

__all__ = ["RESERVED", "SUPPORTED", "HeartbeatOffer", "negotiate", "resume_since"]

RESERVED: Final = frozenset({"heartbeat", "acks", "resume", "subscribe", "batch"})
SUPPORTED: Final = frozenset({"heartbeat", "acks", "resume"})


@attrs.frozen(slots=True)
class HeartbeatOffer:
    """Server pings every ``interval`` seconds; silence for 2 intervals closes.

    A client may ask for an interval; it is clamped to [minimum, maximum].
    """

    default: float = 30.0
    minimum: float = 5.0
    maximum: float = 300.0

    def grant(self, params: Any) -> dict[str, Any]:
        asked = params.get("interval") if isinstance(params, dict) else None
        if isinstance(asked, bool) or not isinstance(asked, int | float):
            asked = self.default
        return {"interval": min(self.maximum, max(self.minimum, float(asked)))}


def negotiate(
    requested: dict[str, Any] | None, heartbeat: HeartbeatOffer | None
) -> dict[str, Any] | None:
    """The ``extensions`` to put in ``auth_success``, or ``None`` to leave the
    key out (the client did not ask). ``heartbeat=None`` means the operator
    turned server heartbeats off."""
    if requested is None:
        return None
    granted: dict[str, Any] = {}
    if heartbeat is not None and "heartbeat" in requested:
        granted["heartbeat"] = heartbeat.grant(requested["heartbeat"])
    if "acks" in requested:
        granted["acks"] = {}
    if "resume" in requested:
        # The runtime fills in where the replay starts (it knows the cursors).
        granted["resume"] = {"since": resume_since(requested["resume"])}
    return granted


def resume_since(params: Any) -> int | None:
    """The ``since`` a client asked to resume from, if it gave a usable one."""
    since = params.get("since") if isinstance(params, dict) else None
    if isinstance(since, bool) or not isinstance(since, int) or since < 0:
        return None
    return since
