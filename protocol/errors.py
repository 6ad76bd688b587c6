"""The one error type of the wire protocol, its codes, and the close codes.

Hierarchy (everything the package raises)::

    CatsockProtocolError
    ├── ProtocolError        bad input from the peer: carries the reply to send
    └── LocalProtocolError   the runtime misused the state machine (a bug)

Every bad input, whatever its shape, becomes one ``ProtocolError`` carrying the
error code of seed 000 §7.1 (plus the few catsock adds) and the WebSocket close
code to use, or ``None`` when the connection stays open. Like wsproto's
``event_hint``, the error knows its reply, so the runtime never has to decide.
"""

from __future__ import annotations

import enum

__all__ = [
    "CatsockProtocolError",
    "CloseCode",
    "ErrorCode",
    "LocalProtocolError",
    "ProtocolError",
]


class ErrorCode(enum.StrEnum):
    """Values of ``payload.error_code`` in an ``error`` message."""

    # Seed 000 §7.1.
    AUTH_REQUIRED = "AUTH_REQUIRED"
    AUTH_FAILED = "AUTH_FAILED"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    PROCESSING_ERROR = "PROCESSING_ERROR"
    CONNECTION_TIMEOUT = "CONNECTION_TIMEOUT"
    SEND_FAILED = "SEND_FAILED"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    # catsock additions: each names one refusal the seed lumped together.
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    SENDER_MISMATCH = "SENDER_MISMATCH"
    EVENT_NOT_ALLOWED = "EVENT_NOT_ALLOWED"
    ALREADY_AUTHENTICATED = "ALREADY_AUTHENTICATED"
    CONNECTION_LIMIT = "CONNECTION_LIMIT"
    SLOW_CONSUMER = "SLOW_CONSUMER"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    OVERLOADED = "OVERLOADED"
    #: The credential of a live connection reached its expiry (a JWT's ``exp``, an
    #: opaque token's ``--expires-in``) and no refresh came in time.
    TOKEN_EXPIRED = "TOKEN_EXPIRED"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the gateway uses (RFC 6455 §7.4, plus 4000-4999)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002  # broken framing (catsock/transport/frames.py)
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    # Private range: reasons RFC 6455 has no code for.
    HEARTBEAT_TIMEOUT = 4000
    SLOW_CONSUMER = 4001
    TOKEN_EXPIRED = 4002


class CatsockProtocolError(Exception):
    """Root of every exception the protocol package raises."""


class ProtocolError(CatsockProtocolError):
    """The peer sent something the protocol refuses.

    ``code`` goes into the ``error`` reply; ``close_code`` is the WebSocket close
    code to end the connection with, or ``None`` if the connection survives.
    ``message_id`` names the refused message when it could be read.
    ``retry_after`` (seconds) accompanies ``RATE_LIMIT_EXCEEDED``.
    """

    def __init__(
        self,
        code: ErrorCode,
        detail: str,
        *,
        close_code: CloseCode | None = None,
        message_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.close_code = close_code
        self.message_id = message_id
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"ProtocolError({self.code.value!r}, {self.detail!r}, close_code={self.close_code!r})"
        )


class LocalProtocolError(CatsockProtocolError):
    """The caller drove the state machine in a way it does not allow (a bug)."""
