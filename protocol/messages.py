"""Typed messages of the wire protocol (seed 000 §4), one attrs class each.

Classes are frozen and slotted; attribute names are the JSON keys on the wire.
The ``type`` key is the tag: each class names its own in the ``type`` class
variable, and the codec (``protocol.codec``) reads and writes it. Event payload
classes carry the fields the seed's payload builders send (§4.2, §5.3, §5.4);
fields the builders always fill are required, the rest default to ``None``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs

__all__ = [
    "Accepted",
    "Ack",
    "AdwareData",
    "AdwareUpdatePayload",
    "Auth",
    "AuthFailed",
    "AuthSuccess",
    "BudgetAlertPayload",
    "BudgetUpdatePayload",
    "ClickPayload",
    "ControlMessage",
    "ConversionPayload",
    "Error",
    "ErrorPayload",
    "Event",
    "FraudAlertPayload",
    "Id",
    "Message",
    "Payload",
    "Ping",
    "Pong",
    "StatsUpdatePayload",
    "TierRewardEntry",
    "TierRewardPayload",
    "UserOnlinePayload",
]

#: Identifiers come from legacy databases as numbers or as numeric strings
#: (PHP's json_encode of a fetched row gives ``"12345"``); both are accepted.
Id = int | str

# --- control messages (§4.1) -------------------------------------------------


@attrs.frozen(kw_only=True)
class Auth:
    """``{"type":"auth","token":...,"client_type":...}`` — the first message.

    ``extensions`` is catsock's negotiation point (see docs/protocol.md): a client
    that does not send it is a seed client and never sees an extension.
    """

    type: ClassVar[str] = "auth"
    token: str
    client_type: str
    extensions: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class AuthSuccess:
    type: ClassVar[str] = "auth_success"
    connection_id: str
    timestamp: str | None = None
    extensions: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class AuthFailed:
    """Listed in §4.3; catsock itself answers a failed auth with ``error``
    ``AUTH_FAILED`` as the seed server does, but decodes this from other gateways."""

    type: ClassVar[str] = "auth_failed"
    timestamp: str | None = None
    reason: str | None = None


@attrs.frozen(kw_only=True)
class Ping:
    type: ClassVar[str] = "ping"
    timestamp: str | None = None


@attrs.frozen(kw_only=True)
class Pong:
    type: ClassVar[str] = "pong"
    timestamp: str | None = None


@attrs.frozen(kw_only=True)
class ErrorPayload:
    error_code: str
    error_message: str
    message_id: str | None = None
    retry_after: float | None = None


@attrs.frozen(kw_only=True)
class Error:
    """``{"type":"error","payload":{"error_code":...,"error_message":...}}``."""

    type: ClassVar[str] = "error"
    payload: ErrorPayload
    timestamp: str | None = None


@attrs.frozen(kw_only=True)
class Ack:
    """``{"type":"ack","seq":N}``: the recipient has every event up to ``seq``
    (cumulative). Only with the negotiated ``acks`` extension (docs/delivery.md)."""

    type: ClassVar[str] = "ack"
    seq: int


@attrs.frozen(kw_only=True)
class Accepted:
    """Sent to a publisher that negotiated ``acks`` once its event is committed
    to the log. ``duplicate``: an earlier publish with this ``message_id`` was."""

    type: ClassVar[str] = "accepted"
    message_id: str
    seq: int
    duplicate: bool
    timestamp: str | None = None


ControlMessage = Auth | AuthSuccess | AuthFailed | Ping | Pong | Error | Ack | Accepted


# --- event payloads (§4.2, §4.3, §5.3, §5.4) ----------------------------------


@attrs.frozen(kw_only=True)
class TierRewardEntry:
    tier_level: int
    user_id: Id
    amount: int
    rate: float | None = None
    user_name: str | None = None


@attrs.frozen(kw_only=True)
class ConversionPayload:
    """``conversion`` (CATS → AFAD), built by ``dispatchConversion``."""

    pay_id: Id
    adware_id: Id
    owner_id: Id
    cost: int
    sales: int
    state: str
    access_id: Id | None = None
    adware_name: str | None = None
    owner_name: str | None = None
    tier_rewards: list[TierRewardEntry] = attrs.Factory(list)
    created_at: str | int | None = None


@attrs.frozen(kw_only=True)
class ClickPayload:
    """``click`` (CATS → AFAD), built by ``dispatchClick``."""

    access_id: Id
    adware_id: Id
    owner_id: Id
    has_reward: bool = False
    reward_amount: int = 0
    ipaddress: str | None = None
    useragent: str | None = None
    referer: str | None = None
    created_at: str | int | None = None


@attrs.frozen(kw_only=True)
class TierRewardPayload:
    """``tier_reward`` (CATS → AFAD), built by ``dispatchTierReward``."""

    tier_id: Id
    owner_id: Id
    tier_level: int
    adware_id: Id
    cost: int
    tier1_amount: int = 0
    tier2_amount: int = 0
    tier3_amount: int = 0
    created_at: str | int | None = None


@attrs.frozen(kw_only=True)
class BudgetAlertPayload:
    """``budget_alert`` (CATS → AFAD), built by ``dispatchBudgetAlert``."""

    adware_id: Id
    current_budget: int
    limit: int
    usage_percentage: float


@attrs.frozen(kw_only=True)
class FraudAlertPayload:
    """``fraud_alert`` (CATS → AFAD); ``details`` is free-form, as in the seed."""

    fraud_type: str
    details: Any = None
    timestamp: str | None = None


@attrs.frozen(kw_only=True)
class AdwareData:
    """The ``data`` of an ``adware_update``; UPDATE sends only what changed."""

    name: str | None = None
    money: int | None = None
    click_money: int | None = None
    continue_money: int | None = None
    url: str | None = None
    limits: int | None = None
    open: bool | None = None


@attrs.frozen(kw_only=True)
class AdwareUpdatePayload:
    """``adware_update`` (AFAD → CATS), handled by ``handleAdwareUpdate``."""

    adware_id: Id
    action: Literal["CREATE", "UPDATE", "DELETE"]
    data: AdwareData | None = None


@attrs.frozen(kw_only=True)
class BudgetUpdatePayload:
    """``budget_update`` (AFAD → CATS), handled by ``handleBudgetUpdate``."""

    adware_id: Id
    limit: int


@attrs.frozen(kw_only=True)
class StatsUpdatePayload:
    """``stats_update`` (CATS → DASHBOARD). The seed names the event but not its
    fields; these are catsock's choice. ``owner_id`` scopes it to one affiliate."""

    owner_id: Id | None = None
    period: str | None = None
    clicks: int | None = None
    conversions: int | None = None
    sales: int | None = None
    cost: int | None = None


@attrs.frozen(kw_only=True)
class UserOnlinePayload:
    """``user_online`` (CATS → DASHBOARD); fields are catsock's choice."""

    user_id: Id
    user_name: str | None = None
    online: bool = True


#: A typed payload, or a plain JSON object for operator-declared event types.
Payload = (
    ConversionPayload
    | ClickPayload
    | TierRewardPayload
    | BudgetAlertPayload
    | FraudAlertPayload
    | AdwareUpdatePayload
    | BudgetUpdatePayload
    | StatsUpdatePayload
    | UserOnlinePayload
    | dict[str, Any]
)


@attrs.frozen(kw_only=True)
class Event:
    """An event in the seed's envelope (§4.2).

    ``payload`` is the typed view used for validation and routing. ``raw`` is the
    text exactly as the publisher sent it: the gateway forwards it untouched, so
    unknown fields, number spellings and key order reach recipients unchanged.
    ``raw`` is empty for an event built in code until it is encoded.
    """

    type: str
    version: str
    timestamp: str
    message_id: str
    sender: str
    payload: Payload
    raw: str = attrs.field(default="", eq=False, repr=False)


Message = ControlMessage | Event
