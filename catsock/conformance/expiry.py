"""Conformance checks for credentials that expire (protocol.md §2.1), for any gateway
that enables them: expiry closes a live connection with ``TOKEN_EXPIRED`` and 4002,
a refresh for the same identity keeps it open past the first expiry, and a refresh
for another identity is refused without changing the deadline.

Each check is one ``async`` function taking the gateway's URL and the tokens it
needs and returning a ``CheckResult``; nothing is raised for what the gateway
does. The ``check_*`` functions at the end join the ``extensions`` profile
(``profiles.module_checks``, as ``jwt.<name>``): given the target's JWT secret
(``JwtTarget``, ``--jwt-secret``) they mint the short-lived tokens each needs,
and are skipped without it. A token's expiry
is read from its JWT ``exp`` (unverified: the gateway verifies) unless
``expires_at`` gives it. ``leeway`` is the gateway's clock-skew allowance
(``jwt.leeway``); ``slack`` covers the network and timers. Short-lived tokens
keep a run quick (``mint_hs`` makes them, given the gateway's HMAC secret).
``wall_clock`` is Unix time, and waits are ``trio.sleep``: tests drive both with
a fake clock.
"""

from __future__ import annotations

import base64
import json
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import jwt
import trio
import trio_websocket

from .profiles import waits
from .results import CheckResult, _Fail, _Skip
from .runner import _Ctx

__all__ = [
    "CHECKS",
    "expiry_closes",
    "mint_hs",
    "refresh_extends",
    "refresh_other_identity_refused",
    "token_expiry",
]

#: Seconds past ``exp + leeway`` the gateway has to send its TOKEN_EXPIRED.
SLACK: Final = 5.0
#: How long before the expiry the connection must still answer a ping.
BEFORE: Final = 1.0
#: Seconds to wait for any single answer (auth_success, pong, an error).
ANSWER: Final = 10.0
TOKEN_EXPIRED_CLOSE: Final = 4002

Clock = Callable[[], float]


class _Failed(Exception):
    pass


def token_expiry(token: str) -> float | None:
    """A JWT's ``exp`` (Unix time), read without verifying it; None if there is none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp)


def mint_hs(
    secret: str,
    *,
    sub: str,
    client_type: str,
    ttl: float,
    user_id: str | None = None,
    issuer: str = "",
    audience: str = "",
    now: float | None = None,
) -> str:
    """A short-lived HS256 token for these checks, signed with the gateway's secret."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": sub,
        "client_type": client_type,
        "iat": issued,
        "exp": issued + max(1, math.ceil(ttl)),
    }
    if user_id is not None:
        claims["user_id"] = user_id
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


class _Session:
    """One WebSocket to the gateway, read for control messages only (events skipped)."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(message))

    async def next(self, waiting_for: str, within: float = ANSWER) -> dict[str, Any]:
        """The next auth_success, error or pong; ``_Failed`` on a close or a timeout."""
        with trio.move_on_after(within):
            while True:
                try:
                    data = await self.ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    code = exc.reason.code if exc.reason is not None else None
                    raise _Failed(f"closed ({code}) while waiting for {waiting_for}") from None
                try:
                    obj = json.loads(data)
                except ValueError:
                    raise _Failed(f"a frame that is not JSON: {str(data)[:80]!r}") from None
                if isinstance(obj, dict) and obj.get("type") in ("auth_success", "error", "pong"):
                    return obj
        raise _Failed(f"no answer within {within:g} s while waiting for {waiting_for}")

    async def auth(self, token: str, client_type: str) -> dict[str, Any]:
        await self.send({"type": "auth", "token": token, "client_type": client_type})
        return await self.next("the answer to auth")

    async def ping(self, why: str) -> None:
        await self.send({"type": "ping"})
        reply = await self.next(f"a pong ({why})")
        if reply["type"] != "pong":
            raise _Failed(f"{why}: a ping got {_brief(reply)}")

    async def expect_expiry(self, deadline: float, clock: Clock) -> None:
        """``TOKEN_EXPIRED`` and close 4002 by ``deadline`` (Unix time)."""
        within = max(0.0, deadline - clock())
        reply = await self.next("TOKEN_EXPIRED", within)
        code = reply.get("payload", {}).get("error_code") if reply["type"] == "error" else None
        if code != "TOKEN_EXPIRED":
            raise _Failed(f"expected error TOKEN_EXPIRED at the expiry, got {_brief(reply)}")
        with trio.move_on_after(ANSWER):
            try:
                while True:
                    await self.ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                closed = exc.reason.code if exc.reason is not None else None
                if closed != TOKEN_EXPIRED_CLOSE:
                    raise _Failed(f"TOKEN_EXPIRED, then close {closed}, not 4002") from None
                return
        raise _Failed("TOKEN_EXPIRED was not followed by a close")


def _brief(reply: dict[str, Any]) -> str:
    if reply.get("type") == "error":
        payload = reply.get("payload") or {}
        return f"error {payload.get('error_code')} ({payload.get('error_message')})"
    return str(reply.get("type"))


async def _run(
    name: str,
    url: str,
    ssl_context: ssl.SSLContext | None,
    body: Callable[[_Session], Awaitable[str]],
) -> CheckResult:
    start = trio.current_time()
    try:
        async with trio_websocket.open_websocket_url(url, ssl_context=ssl_context) as ws:
            detail = await body(_Session(ws))
    except _Failed as failure:
        return CheckResult(name, False, str(failure), trio.current_time() - start)
    except (OSError, trio_websocket.HandshakeError) as exc:
        return CheckResult(name, False, f"cannot connect: {exc}", trio.current_time() - start)
    return CheckResult(name, True, detail, trio.current_time() - start)


def _skip(name: str, why: str) -> CheckResult:
    return CheckResult(name, False, why, 0.0, skipped=True)


async def _login(session: _Session, token: str, client_type: str) -> str:
    reply = await session.auth(token, client_type)
    if reply["type"] != "auth_success":
        raise _Failed(f"the expiring token was refused: {_brief(reply)}")
    return str(reply.get("connection_id"))


async def _sleep_until(moment: float, clock: Clock) -> None:
    await trio.sleep(max(0.0, moment - clock()))


async def expiry_closes(
    url: str,
    token: str,
    client_type: str,
    *,
    expires_at: float | None = None,
    leeway: float = 0.0,
    slack: float = SLACK,
    ssl_context: ssl.SSLContext | None = None,
    wall_clock: Clock = time.time,
) -> CheckResult:
    """A connection whose token expires answers until then, and at the expiry gets
    ``TOKEN_EXPIRED`` and close 4002 (protocol.md §2.1)."""
    name = "expiry: TOKEN_EXPIRED and close 4002 at exp"
    exp = expires_at if expires_at is not None else token_expiry(token)
    if exp is None:
        return _skip(name, "the token has no exp (give expires_at for an opaque token)")
    if exp - wall_clock() <= BEFORE:
        return _skip(name, "the token expires too soon (or has expired) to be checked")

    async def body(session: _Session) -> str:
        await _login(session, token, client_type)
        await _sleep_until(exp - BEFORE, wall_clock)
        await session.ping("just before the expiry")
        await session.expect_expiry(exp + leeway + slack, wall_clock)
        late = wall_clock() - exp
        if late < -slack:  # the gateway's clock may run a little ahead of ours
            raise _Failed(f"TOKEN_EXPIRED came {-late:.1f} s before exp")
        return f"closed {late:+.1f} s after exp"

    return await _run(name, url, ssl_context, body)


async def refresh_extends(
    url: str,
    token: str,
    fresh_token: str,
    client_type: str,
    *,
    expires_at: float | None = None,
    leeway: float = 0.0,
    slack: float = SLACK,
    ssl_context: ssl.SSLContext | None = None,
    wall_clock: Clock = time.time,
) -> CheckResult:
    """An ``auth`` with a fresh token for the same identity, before the first token
    expires, is answered ``auth_success`` with the same ``connection_id``, and the
    connection outlives the first token. ``fresh_token`` must outlive
    ``token``'s expiry by more than ``leeway + slack``."""
    name = "expiry: a refresh for the same identity extends the deadline"
    exp = expires_at if expires_at is not None else token_expiry(token)
    fresh_exp = token_expiry(fresh_token)
    if exp is None:
        return _skip(name, "the token has no exp (give expires_at for an opaque token)")
    if exp - wall_clock() <= BEFORE:
        return _skip(name, "the token expires too soon (or has expired) to be checked")
    if fresh_exp is not None and fresh_exp <= exp + leeway + slack + BEFORE:
        return _skip(name, "the fresh token does not outlive the first one by enough")

    async def body(session: _Session) -> str:
        first = await _login(session, token, client_type)
        reply = await session.auth(fresh_token, client_type)
        if reply["type"] != "auth_success":
            raise _Failed(f"the refresh was refused: {_brief(reply)}")
        if reply.get("connection_id") != first:
            raise _Failed(
                f"the refresh answered connection_id {reply.get('connection_id')!r}, "
                f"not {first!r}"
            )
        await _sleep_until(exp + leeway + slack, wall_clock)
        await session.ping("past the first token's expiry, after a refresh")
        return "auth_success with the same connection_id; open past the first exp"

    return await _run(name, url, ssl_context, body)


async def refresh_other_identity_refused(
    url: str,
    token: str,
    other_token: str,
    client_type: str,
    *,
    expires_at: float | None = None,
    leeway: float = 0.0,
    slack: float = SLACK,
    ssl_context: ssl.SSLContext | None = None,
    wall_clock: Clock = time.time,
) -> CheckResult:
    """A refresh with a good token for another identity (``other_token``: another
    ``sub``, same client type) is refused with ``AUTH_FAILED``; the connection stays
    open and still expires with the first token."""
    name = "expiry: a refresh for another identity is refused"
    exp = expires_at if expires_at is not None else token_expiry(token)
    if exp is None:
        return _skip(name, "the token has no exp (give expires_at for an opaque token)")
    if exp - wall_clock() <= BEFORE:
        return _skip(name, "the token expires too soon (or has expired) to be checked")

    async def body(session: _Session) -> str:
        await _login(session, token, client_type)
        reply = await session.auth(other_token, client_type)
        code = reply.get("payload", {}).get("error_code") if reply["type"] == "error" else None
        if code != "AUTH_FAILED":
            raise _Failed(f"a refresh for another identity got {_brief(reply)}, not AUTH_FAILED")
        await session.ping("after the refused refresh")
        await session.expect_expiry(exp + leeway + slack, wall_clock)
        return "AUTH_FAILED, still open, then TOKEN_EXPIRED at the first exp"

    return await _run(name, url, ssl_context, body)


#: The checks, by the name a runner may list them under.
CHECKS: Final = {
    "expiry_closes": expiry_closes,
    "refresh_extends": refresh_extends,
    "refresh_other_identity_refused": refresh_other_identity_refused,
}


# -- as checks of a profile (``extensions``: ``jwt.<name>``) -------------------------

#: Seconds the first token of a check lives: time to log in and ping before it ends.
TTL: Final = 6.0
#: The client type the minted tokens claim: a dashboard receives, publishes nothing.
CLIENT_TYPE: Final = "DASHBOARD"


def _mint(ctx: _Ctx, sub: str, ttl: float) -> str:
    target = ctx.runner.jwt
    if target is None:
        raise _Skip("needs the gateway's JWT secret (--jwt-secret) to mint expiring tokens")
    ctx.extend(ttl + target.leeway + SLACK + ANSWER)  # it waits for the expiry
    return mint_hs(
        target.secret,
        sub=sub,
        client_type=CLIENT_TYPE,
        ttl=ttl,
        issuer=target.issuer,
        audience=target.audience,
        now=ctx.runner.wall_clock(),
    )


def _options(ctx: _Ctx) -> dict[str, Any]:
    target = ctx.runner.jwt
    return {
        "leeway": 0.0 if target is None else target.leeway,
        "ssl_context": ctx.runner.target.ssl_context,
        "wall_clock": ctx.runner.wall_clock,
    }


def _verdict(result: CheckResult) -> None:
    if result.skipped:
        raise _Skip(result.detail)
    if not result.passed:
        raise _Fail(result.detail)


@waits(TTL + SLACK)
async def check_expiry_closes(ctx: _Ctx) -> None:
    """At a token's exp the connection gets TOKEN_EXPIRED and close 4002."""
    token = _mint(ctx, "conformance-expiry-a", TTL)
    _verdict(await expiry_closes(ctx.runner.target.url, token, CLIENT_TYPE, **_options(ctx)))


@waits(TTL + SLACK)
async def check_refresh_extends(ctx: _Ctx) -> None:
    """An auth with a fresh token of the same identity keeps the connection past exp."""
    token = _mint(ctx, "conformance-expiry-a", TTL)
    target = ctx.runner.jwt
    assert target is not None  # _mint skipped otherwise
    fresh = _mint(ctx, "conformance-expiry-a", 2 * (TTL + target.leeway + SLACK))
    url = ctx.runner.target.url
    _verdict(await refresh_extends(url, token, fresh, CLIENT_TYPE, **_options(ctx)))


@waits(TTL + SLACK)
async def check_refresh_other_identity_refused(ctx: _Ctx) -> None:
    """A refresh with another identity's token is AUTH_FAILED; the first exp holds."""
    token = _mint(ctx, "conformance-expiry-a", TTL)
    other = _mint(ctx, "conformance-expiry-b", 4 * TTL)
    url = ctx.runner.target.url
    _verdict(
        await refresh_other_identity_refused(url, token, other, CLIENT_TYPE, **_options(ctx))
    )
