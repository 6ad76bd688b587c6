"""The connection state machine: decoded messages in, actions out. No I/O.

Theory of operation
-------------------
A connection starts in ``AWAITING_AUTH``. The runtime decodes each frame with
``protocol.codec`` and hands the result to ``receive`` (or the ``ProtocolError``
to ``receive_invalid``). The machine first *classifies* the input (an ``Input``
below: rate limits and sender checks happen here), then looks the pair
(state, input) up in ``TRANSITIONS`` for the next state, then returns the
actions for the runtime to carry out, in order: ``Send`` a message, ``Verify``
credentials, ``Subscribe`` to channels, ``Publish`` an event to channels,
``StartHeartbeat``, ``Acknowledge`` a recipient's ack, ``Close`` with a code.

``Verify`` moves the machine to ``AUTHENTICATING``; the runtime checks the token
and answers with ``auth_accepted`` or ``auth_rejected`` before it feeds another
message. ``timeout`` reports an expired deadline (auth or heartbeat); ``expired``
reports that the credential of an active connection reached its expiry
(``Principal.expires_at``); ``closed`` reports that the transport is gone.

Refresh: an ``auth`` on an ``ACTIVE`` connection whose credential expires is a
refresh, ``Verify(refresh=True)``; the state stays ``ACTIVE`` and the runtime
answers with ``refresh_accepted`` (the new principal must be the same identity,
client type and user) or ``refresh_rejected`` before it feeds another message.
On a connection whose credential never expires a second ``auth`` is refused
with ``ALREADY_AUTHENTICATED``, as before. A pair missing from the table is a runtime
bug and raises ``LocalProtocolError``.

Every state change is in ``TRANSITIONS``; docs/protocol.md's diagram is
generated from it (``python -m protocol.diagram``), so the two cannot drift.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import attrs

from . import messages as m
from .errors import CloseCode, ErrorCode, LocalProtocolError, ProtocolError
from .extensions import HeartbeatOffer, negotiate
from .limits import DEFAULT_RATE_LIMITS, FALLBACK_RATE_LIMIT, RateLimit, TokenBucket
from .routing import RoutingTable, subscriptions_for

__all__ = [
    "TRANSITIONS",
    "Acknowledge",
    "Action",
    "Close",
    "ConnectionMachine",
    "Input",
    "MachineConfig",
    "Principal",
    "Publish",
    "Send",
    "StartHeartbeat",
    "State",
    "Subscribe",
    "Verify",
    "iso_timestamp",
]


class State(enum.Enum):
    AWAITING_AUTH = "AWAITING_AUTH"
    AUTHENTICATING = "AUTHENTICATING"
    ACTIVE = "ACTIVE"
    CLOSED = "CLOSED"


class Input(enum.Enum):
    AUTH = "auth"
    PING = "ping"
    PONG = "pong"
    ACK = "ack"
    EVENT = "event"  # an event the sender may publish
    REFUSED = "refused"  # an event it may not (sender mismatch, type not allowed)
    PEER_ERROR = "peer error"
    SERVER_ONLY = "server-only message"  # auth_success / auth_failed from a client
    INVALID = "invalid"  # a ProtocolError the connection survives
    RATE_LIMITED = "rate limited"
    FATAL = "fatal"  # a ProtocolError that closes
    AUTH_OK = "credentials accepted"
    AUTH_REJECTED = "credentials rejected"
    TIMEOUT = "timeout"
    CLOSE = "transport closed"


_A, _U, _C, _X = State.AWAITING_AUTH, State.AUTHENTICATING, State.ACTIVE, State.CLOSED
_I = Input

TRANSITIONS: Final[Mapping[tuple[State, Input], State]] = {
    (_A, _I.AUTH): _U,
    (_A, _I.PING): _A,
    (_A, _I.PONG): _A,
    (_A, _I.ACK): _A,
    (_A, _I.EVENT): _A,
    (_A, _I.PEER_ERROR): _A,
    (_A, _I.SERVER_ONLY): _A,
    (_A, _I.INVALID): _A,
    (_A, _I.FATAL): _X,
    (_A, _I.TIMEOUT): _X,
    (_A, _I.CLOSE): _X,
    (_U, _I.AUTH_OK): _C,
    (_U, _I.AUTH_REJECTED): _X,
    (_U, _I.TIMEOUT): _X,
    (_U, _I.CLOSE): _X,
    (_C, _I.AUTH): _C,
    (_C, _I.PING): _C,
    (_C, _I.PONG): _C,
    (_C, _I.ACK): _C,
    (_C, _I.EVENT): _C,
    (_C, _I.REFUSED): _C,
    (_C, _I.PEER_ERROR): _C,
    (_C, _I.SERVER_ONLY): _C,
    (_C, _I.INVALID): _C,
    (_C, _I.RATE_LIMITED): _C,
    (_C, _I.FATAL): _X,
    (_C, _I.TIMEOUT): _X,
    (_C, _I.CLOSE): _X,
    (_X, _I.CLOSE): _X,
}


# --- actions -------------------------------------------------------------------


@attrs.frozen(slots=True)
class Send:
    message: m.ControlMessage


@attrs.frozen(slots=True)
class Verify:
    token: str
    client_type: str
    #: A refresh of an active connection's credential (answer with
    #: ``refresh_accepted`` / ``refresh_rejected``).
    refresh: bool = False


@attrs.frozen(slots=True)
class Subscribe:
    channels: tuple[str, ...]


@attrs.frozen(slots=True)
class Publish:
    event: m.Event
    channels: tuple[str, ...]


@attrs.frozen(slots=True)
class StartHeartbeat:
    interval: float


@attrs.frozen(slots=True)
class Acknowledge:
    """The recipient has every event up to ``seq`` (negotiated ``acks`` only)."""

    seq: int


@attrs.frozen(slots=True)
class Close:
    code: CloseCode
    reason: str


Action = Send | Verify | Subscribe | Publish | StartHeartbeat | Acknowledge | Close


@attrs.frozen(slots=True)
class Principal:
    """Who a connection is once its token checked out."""

    identity: str
    client_type: str
    user_id: str | None = None
    #: False for a publish-only token: it joins no channel.
    receives: bool = True
    #: Unix time from which the credential is no longer honoured (a JWT's ``exp``
    #: plus the configured leeway, an opaque token's expiry); None: never. A
    #: connection whose credential expires may refresh it with a new ``auth``.
    expires_at: float | None = None
    #: What kind of credential it is: ``"token"`` (an opaque token, revoked by its
    #: name), ``"jwt"`` (revoked by ``jti``), ``"shared"`` (the seed's shared token).
    credential: str = "token"
    #: A JWT's ``jti``, if it has one.
    jti: str | None = None


@attrs.frozen(slots=True)
class MachineConfig:
    """Per-gateway settings the machine needs. ``heartbeat=None`` turns the
    negotiated server heartbeat off; ``rate_limits=None`` turns limits off."""

    routing: RoutingTable = attrs.Factory(RoutingTable)
    rate_limits: Mapping[str, RateLimit] | None = DEFAULT_RATE_LIMITS
    fallback_rate_limit: RateLimit = FALLBACK_RATE_LIMIT
    #: Rejections a client may rack up (refilled at its rate) before it is closed.
    abuse_limit: int = 100
    #: Messages other than ``auth`` tolerated before auth, then close 1008.
    max_unauthenticated: int = 5
    heartbeat: HeartbeatOffer | None = attrs.Factory(HeartbeatOffer)

    def rate_limit(self, client_type: str) -> RateLimit | None:
        if self.rate_limits is None:
            return None
        return self.rate_limits.get(client_type, self.fallback_rate_limit)


def iso_timestamp(wall: float) -> str:
    """The seed's timestamp format, ``gmdate('Y-m-d\\TH:i:s\\Z')``."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_PEER_KIND: Final[Mapping[type, Input]] = {
    m.Auth: Input.AUTH,
    m.Ping: Input.PING,
    m.Pong: Input.PONG,
    m.Error: Input.PEER_ERROR,
    m.AuthSuccess: Input.SERVER_ONLY,
    m.AuthFailed: Input.SERVER_ONLY,
    m.Accepted: Input.SERVER_ONLY,
    m.Ack: Input.ACK,
    m.Event: Input.EVENT,
}


class ConnectionMachine:
    """One connection's protocol state. See the module docstring.

    ``clock`` is monotonic seconds (rate limits); ``wall_clock`` is Unix time
    (timestamps in replies). Both are injected so tests control time.
    """

    def __init__(
        self,
        connection_id: str,
        config: MachineConfig,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self.connection_id = connection_id
        self.config = config
        self.state = State.AWAITING_AUTH
        self.principal: Principal | None = None
        self.extensions: dict[str, Any] | None = None
        self._clock = clock
        self._wall = wall_clock
        self._unauthenticated = 0
        self._requested: dict[str, Any] | None = None
        self._buckets: tuple[TokenBucket, ...] = ()
        self._violations: TokenBucket | None = None

    # -- inputs -------------------------------------------------------------------

    def receive(self, message: m.Message) -> list[Action]:
        """Feed one decoded message from the peer."""
        kind = _PEER_KIND[type(message)]
        if self.state in (State.AUTHENTICATING, State.CLOSED):
            self._move(kind)  # raises: the runtime must settle auth / stop feeding first
        if self.state is State.ACTIVE:
            # A refused publish names its message_id, so a client knows what to retry.
            limited = self._charge(message.message_id if isinstance(message, m.Event) else None)
            if limited is not None:
                return limited
        elif self.state is State.AWAITING_AUTH and kind is not Input.AUTH:
            return self._unauthenticated_input(kind, None)

        if kind is Input.AUTH:
            assert isinstance(message, m.Auth)
            return self._auth(message)
        if kind is Input.PING:
            self._move(kind)
            return [Send(m.Pong(timestamp=self._now()))]
        if kind is Input.EVENT:
            assert isinstance(message, m.Event)
            return self._event(message)
        if kind is Input.ACK:
            assert isinstance(message, m.Ack)
            self._move(kind)
            if self.extensions is None or "acks" not in self.extensions:
                return [self._error(ErrorCode.INVALID_MESSAGE, "ack needs the acks extension")]
            return [Acknowledge(message.seq)]
        if kind is Input.SERVER_ONLY:
            self._move(kind)
            return [self._error(ErrorCode.INVALID_MESSAGE, f"{message.type} is sent by gateways")]
        self._move(kind)  # PONG, PEER_ERROR: nothing to answer
        return []

    def receive_invalid(self, error: ProtocolError) -> list[Action]:
        """Feed a frame the codec refused."""
        if error.close_code is not None:
            self._move(Input.FATAL)
            return [self._reply(error), Close(error.close_code, error.code.value)]
        if self.state in (State.AUTHENTICATING, State.CLOSED):
            self._move(Input.INVALID)  # raises, as in receive()
        if self.state is State.ACTIVE:
            limited = self._charge()
            if limited is not None:
                return limited
        elif self.state is State.AWAITING_AUTH:
            return self._unauthenticated_input(Input.INVALID, error)
        self._move(Input.INVALID)
        return [self._reply(error)]

    def auth_accepted(
        self, principal: Principal, identity_bucket: TokenBucket | None = None
    ) -> list[Action]:
        """The token of the pending ``Verify`` is good. ``identity_bucket`` is the
        limiter shared by every connection of this identity (the runtime owns it)."""
        self._move(Input.AUTH_OK)
        self.principal = principal
        limit = self.config.rate_limit(principal.client_type)
        if limit is not None:
            now = self._clock()
            own = limit.bucket(now)
            self._buckets = (own,) if identity_bucket is None else (own, identity_bucket)
            self._violations = TokenBucket(own.rate, self.config.abuse_limit, now)
        self.extensions = negotiate(self._requested, self.config.heartbeat)
        actions: list[Action] = [
            Send(
                m.AuthSuccess(
                    connection_id=self.connection_id,
                    timestamp=self._now(),
                    extensions=self.extensions,
                )
            ),
            Subscribe(
                subscriptions_for(principal.client_type, principal.user_id)
                if principal.receives
                else ()
            ),
        ]
        heartbeat = (self.extensions or {}).get("heartbeat")
        if heartbeat is not None:
            actions.append(StartHeartbeat(heartbeat["interval"]))
        return actions

    def auth_rejected(
        self,
        detail: str = "invalid authentication token",
        code: ErrorCode = ErrorCode.AUTH_FAILED,
    ) -> list[Action]:
        """The pending ``Verify`` failed (seed: error, then close 1008). ``code`` is
        ``AUTH_FAILED`` for a bad token, ``CONNECTION_LIMIT`` when the identity
        already holds as many connections as it may."""
        self._move(Input.AUTH_REJECTED)
        return [self._error(code, detail), Close(CloseCode.POLICY_VIOLATION, code.value)]

    def refresh_accepted(self, principal: Principal) -> list[Action]:
        """The token of a pending refresh (``Verify(refresh=True)``) is good.
        It must name the connection's identity, client type and user; then it
        replaces the principal (and its expiry) and ``auth_success`` answers with
        the same ``connection_id``. Any other principal is refused, and the
        connection keeps its credential and its deadline."""
        current = self.principal
        if self.state is not State.ACTIVE or current is None:
            raise LocalProtocolError(f"no refresh is pending in state {self.state.value}")
        if (
            principal.identity != current.identity
            or principal.client_type != current.client_type
            or principal.user_id != current.user_id
            or principal.receives != current.receives
        ):
            return self.refresh_rejected(
                "refresh refused: the token names another identity, client type or user"
            )
        self.principal = principal
        return [
            Send(
                m.AuthSuccess(
                    connection_id=self.connection_id,
                    timestamp=self._now(),
                    extensions=self.extensions,
                )
            )
        ]

    def refresh_rejected(self, detail: str = "refresh refused") -> list[Action]:
        """The token of a pending refresh is not good: ``AUTH_FAILED``; the
        connection stays open with its current credential until that expires."""
        if self.state is not State.ACTIVE:
            raise LocalProtocolError(f"no refresh is pending in state {self.state.value}")
        return [self._error(ErrorCode.AUTH_FAILED, detail)]

    def expired(self) -> list[Action]:
        """The active connection's credential reached ``Principal.expires_at`` with
        no refresh: ``TOKEN_EXPIRED``, then close 4002."""
        self._move(Input.TIMEOUT)
        return [
            self._error(ErrorCode.TOKEN_EXPIRED, "the token expired; authenticate again"),
            Close(CloseCode.TOKEN_EXPIRED, ErrorCode.TOKEN_EXPIRED.value),
        ]

    def timeout(self) -> list[Action]:
        """A deadline passed: auth not completed in time, or heartbeat silence."""
        waiting = self.state in (State.AWAITING_AUTH, State.AUTHENTICATING)
        self._move(Input.TIMEOUT)
        if waiting:
            return [
                self._error(ErrorCode.CONNECTION_TIMEOUT, "not authenticated in time"),
                Close(CloseCode.POLICY_VIOLATION, "auth timeout"),
            ]
        return [Close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")]

    def closed(self) -> None:
        """The transport is gone; nothing more will be sent or received."""
        self._move(Input.CLOSE)

    # -- helpers ----------------------------------------------------------------

    def _move(self, kind: Input) -> None:
        try:
            self.state = TRANSITIONS[self.state, kind]
        except KeyError:
            raise LocalProtocolError(
                f"{kind.value!r} is not allowed in state {self.state.value}"
            ) from None

    def _now(self) -> str:
        return iso_timestamp(self._wall())

    def _error(
        self,
        code: ErrorCode,
        detail: str,
        message_id: str | None = None,
        retry_after: float | None = None,
    ) -> Send:
        return Send(
            m.Error(
                payload=m.ErrorPayload(
                    error_code=code.value,
                    error_message=detail,
                    message_id=message_id,
                    retry_after=retry_after,
                ),
                timestamp=self._now(),
            )
        )

    def _reply(self, error: ProtocolError) -> Send:
        return self._error(error.code, error.detail, error.message_id, error.retry_after)

    def _unauthenticated_input(self, kind: Input, error: ProtocolError | None) -> list[Action]:
        self._unauthenticated += 1
        if self._unauthenticated > self.config.max_unauthenticated:
            self._move(Input.FATAL)
            return [
                self._error(ErrorCode.AUTH_REQUIRED, "too many messages before auth"),
                Close(CloseCode.POLICY_VIOLATION, ErrorCode.AUTH_REQUIRED.value),
            ]
        self._move(kind)
        if error is not None:
            return [self._reply(error)]
        return [self._error(ErrorCode.AUTH_REQUIRED, "authentication required")]

    def _charge(self, message_id: str | None = None) -> list[Action] | None:
        """Take a token from every bucket; ``None`` if the message may pass."""
        if not self._buckets:
            return None
        now = self._clock()
        # Check every bucket before taking from any: a refused message costs nothing.
        wait = max(bucket.wait(now) for bucket in self._buckets)
        if not wait:
            for bucket in self._buckets:
                bucket.take(now)
            return None
        assert self._violations is not None
        if self._violations.take(now):
            self._move(Input.FATAL)
            return [
                self._error(ErrorCode.RATE_LIMIT_EXCEEDED, "sustained rate limit abuse"),
                Close(CloseCode.POLICY_VIOLATION, ErrorCode.RATE_LIMIT_EXCEEDED.value),
            ]
        self._move(Input.RATE_LIMITED)
        # Rounded up to the millisecond: a client that waits this long gets through.
        retry = math.ceil(wait * 1000) / 1000
        return [
            self._error(ErrorCode.RATE_LIMIT_EXCEEDED, "rate limit exceeded", message_id, retry)
        ]

    def _auth(self, message: m.Auth) -> list[Action]:
        if self.state is State.ACTIVE:
            self._move(Input.AUTH)
            if self.principal is not None and self.principal.expires_at is not None:
                return [Verify(message.token, message.client_type, refresh=True)]
            return [self._error(ErrorCode.ALREADY_AUTHENTICATED, "already authenticated")]
        self._move(Input.AUTH)
        self._requested = message.extensions
        return [Verify(message.token, message.client_type)]

    def _event(self, event: m.Event) -> list[Action]:
        assert self.principal is not None
        client_type = self.principal.client_type
        route = self.config.routing.get(event.type)
        refusal: tuple[ErrorCode, str] | None = None
        if event.sender != client_type:
            # Seed 004's spoofing fault: identity comes from the token, not the message.
            refusal = (
                ErrorCode.SENDER_MISMATCH,
                f"sender {event.sender[:32]!r} does not match the authenticated "
                f"client type {client_type!r}",
            )
        elif route is None or client_type not in route.senders:
            refusal = (ErrorCode.EVENT_NOT_ALLOWED, f"{client_type} may not publish {event.type}")
        if refusal is not None:
            self._move(Input.REFUSED)
            return [self._error(*refusal, event.message_id)]
        self._move(Input.EVENT)
        assert route is not None
        return [Publish(event, tuple(route.targets(event.payload)))]
