"""What the client hands you and raises: answers, received events, errors, ids.

Plain values with no I/O, so applications (and the CLI) can import and match on
them without caring how the client is put together. ``Publication`` is the one
with behaviour: the client finishes it once the gateway's answer is recorded.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import attrs
import trio


class ClientError(Exception):
    """Base of the client's errors."""


class AuthError(ClientError):
    """The gateway refused the token (``AUTH_FAILED``): reconnecting cannot help."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectError(ClientError):
    """``max_attempts`` connection attempts in a row failed."""


class ClientClosed(ClientError):
    """The client was closed before the publish was answered (it stays PENDING in the outbox)."""


class PublishError(ClientError):
    """The gateway (or, for ``MESSAGE_TOO_LARGE``, the client) refused a publish."""

    def __init__(self, code: str, message: str, message_id: str) -> None:
        super().__init__(f"{code}: {message} (message_id {message_id})")
        self.code = code
        self.message = message
        self.message_id = message_id


@attrs.frozen
class Accepted:
    """The gateway committed the event as ``seq``; ``duplicate``: it had it already.
    ``seq`` is None when the gateway did not grant ``acks`` (then it only means *sent*)."""

    message_id: str
    seq: int | None
    duplicate: bool = False


@attrs.frozen
class ReceivedEvent:
    """An event from the gateway. ``message`` is the whole decoded envelope (what the seed's
    handlers get), ``text`` the frame as received; ``seq`` is None without acks/resume."""

    seq: int | None
    type: str
    message_id: str
    sender: str
    payload: dict[str, Any]
    message: dict[str, Any]
    text: str


Handler: TypeAlias = Callable[[ReceivedEvent], Awaitable[None] | None]


def timestamp(now: float | None = None) -> str:
    """``gmdate('Y-m-d\\TH:i:s\\Z')``: UTC to the second, e.g. ``2025-10-29T12:34:56Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def new_message_id() -> str:
    """A unique id in the style of PHP's ``uniqid('msg_', true)``: microseconds in hex, then
    64 random bits (so ids from several processes in the same microsecond still differ)."""
    micros = time.time_ns() // 1000
    return f"msg_{micros // 1_000_000:08x}{micros % 1_000_000:05x}.{secrets.token_hex(8)}"


class Publication:
    """A queued publish: ``message_id`` now, ``await result()`` for the gateway's answer."""

    def __init__(self, message_id: str, type_: str, text: str) -> None:
        self.message_id = message_id
        self.type = type_
        self.text = text
        self._done = trio.Event()
        self._result: Accepted | None = None
        self._error: ClientError | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def result(self) -> Accepted:
        """Wait for the answer: ``Accepted``, or raise ``PublishError`` / ``ClientClosed``."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _finish(self, outcome: Accepted | ClientError) -> None:
        if self._done.is_set():
            return
        if isinstance(outcome, Accepted):
            self._result = outcome
        else:
            self._error = outcome
        self._done.set()


def single_error(
    group: BaseExceptionGroup[BaseException], cancelled: type[BaseException]
) -> BaseException | None:
    """The one exception in ``group`` (nested groups flattened) that is not a
    ``cancelled`` (the runtime's cancellation), else None."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None
