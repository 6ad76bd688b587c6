"""The fixed checks: auth, ping, limits and routing, each written by hand
against docs/protocol.md (the vector-driven checks are in ``decode_vectors``
and ``session_vectors``)."""

from __future__ import annotations

import json
import uuid

from protocol import DEFAULT_RATE_LIMITS, ErrorCode
from protocol import messages as m

from .conn import _PING, _describe
from .frames import _ADWARE_UPDATE, _BUDGET_UPDATE, _conversion, _event, _message_id
from .results import _Fail, _Skip
from .runner import _Ctx, _same_events
from .tokens import TOKEN_KINDS, _client_type

# -- auth, ping and limits ------------------------------------------------------------------


async def _auth_ok(ctx: _Ctx) -> None:
    kinds = [k for k in TOKEN_KINDS if ctx.has(k)]
    if not kinds:
        raise _Skip("no token given")
    for kind in kinds:
        conn = await ctx.connect(kind)
        auth = {"type": "auth", "token": ctx.runner.tokens[kind], "client_type": _client_type(kind)}
        await conn.send(json.dumps(auth))
        msg = await conn.expect_type("auth_success")
        assert isinstance(msg.message, m.AuthSuccess)
        if not msg.message.connection_id:
            raise _Fail(f"{kind}: auth_success has an empty connection_id")
        if "extensions" in msg.obj:
            raise _Fail(f"{kind}: auth_success to a seed client (no extensions) has 'extensions'")
        await conn.aclose()


async def _auth_failed(ctx: _Ctx) -> None:
    conn = await ctx.connect("bad token")
    token = f"conformance-wrong-{uuid.uuid4().hex}"
    await conn.send(json.dumps({"type": "auth", "token": token, "client_type": "CATS"}))
    await conn.expect_error(ErrorCode.AUTH_FAILED)
    await conn.expect_closed(1008)


async def _auth_required(ctx: _Ctx) -> None:
    conn = await ctx.connect("CATS")
    conn.kind, conn.budget = "CATS", ctx.runner.budgets["CATS"]
    await conn.send(_PING)
    await conn.expect_error(ErrorCode.AUTH_REQUIRED)
    auth = {"type": "auth", "token": ctx.runner.tokens["CATS"], "client_type": "CATS"}
    await conn.send(json.dumps(auth))
    # Proves the ping got no pong: the next message after the error is auth_success.
    await conn.expect_type("auth_success")
    await conn.send(_PING)
    await conn.expect_type("pong")


async def _ping_pong(ctx: _Ctx) -> None:
    conn = await ctx.login("CATS")
    await conn.send(_PING)
    msg = await conn.expect_type("pong")
    stamp = msg.obj.get("timestamp")
    if stamp is not None and not isinstance(stamp, str):
        raise _Fail(f"pong timestamp should be a string, is {stamp!r}")


async def _message_too_large(ctx: _Ctx) -> None:
    conn = await ctx.login("CATS")
    await conn.send('{"type":"ping","padding":"' + "x" * 70_000 + '"}')
    await conn.expect_error(ErrorCode.MESSAGE_TOO_LARGE)
    await conn.expect_closed(1009)


async def _rate_limit(ctx: _Ctx) -> None:
    """A burst of pings well over DASHBOARD's burst: RATE_LIMIT_EXCEEDED with a
    positive retry_after; the runner then stops, so the abuse close never trips."""
    burst = DEFAULT_RATE_LIMITS["DASHBOARD"].burst
    conn = await ctx.login("DASHBOARD")
    sent = pongs = 0
    retry: float | None = None
    while retry is None and sent < 3 * burst:
        batch = min(5, 3 * burst - sent)
        for _ in range(batch):
            await conn.send(_PING, paced=False)
        sent += batch
        for _ in range(batch):
            msg = await conn.recv("pong or RATE_LIMIT_EXCEEDED")
            if msg.type == "pong":
                pongs += 1
            elif msg.error_code() == ErrorCode.RATE_LIMIT_EXCEEDED:
                assert isinstance(msg.message, m.Error)
                value = msg.message.payload.retry_after
                if value is None or not value > 0:
                    raise _Fail(f"RATE_LIMIT_EXCEEDED needs a positive retry_after, got {value!r}")
                retry = value
            else:
                raise _Fail(f"expected pong or RATE_LIMIT_EXCEEDED, got {_describe(msg)}")
    if retry is None:
        raise _Fail(f"{sent} pings at once were all answered (DASHBOARD's burst is {burst})")
    # Stop sending: after retry_after one more ping must pass on the same connection.
    await ctx.sleep(retry + 0.01)
    await conn.send(_PING, paced=False)
    await conn.expect_type("pong")
    ctx.notes.append(f"{pongs} pongs, then RATE_LIMIT_EXCEEDED with retry_after {retry}")


# -- routing --------------------------------------------------------------------------------


async def _routing_conversion(ctx: _Ctx) -> None:
    cats = await ctx.login("CATS", "publisher")
    afad = await ctx.login("AFAD")
    dash = await ctx.login("DASHBOARD")
    other = await ctx.login("CATS", "observer")
    user = await ctx.login("DASHBOARD@500") if ctx.has("DASHBOARD@500") else None
    text = _event("conversion", "CATS", _conversion(500, 499))
    await cats.send(text)
    await afad.expect_text(text)
    await dash.expect_text(text)
    if user is not None:
        await user.expect_text(text)
    else:
        ctx.notes.append("user:500 not checked (no DASHBOARD@500 token)")
    await cats.quiet()
    await other.quiet()


async def _routing_afad_to_cats(ctx: _Ctx) -> None:
    afad = await ctx.login("AFAD", "publisher")
    cats = await ctx.login("CATS")
    other = await ctx.login("AFAD", "observer")
    dash = await ctx.login("DASHBOARD") if ctx.has("DASHBOARD") else None
    texts = [_event("adware_update", "AFAD", _ADWARE_UPDATE)]
    texts.append(_event("budget_update", "AFAD", _BUDGET_UPDATE))
    for text in texts:
        await afad.send(text)
    for text in texts:
        await cats.expect_text(text)
    await afad.quiet()
    await other.quiet()
    if dash is not None:
        await dash.quiet()


async def _routing_dashboard(ctx: _Ctx) -> None:
    cats = await ctx.login("CATS", "publisher")
    dash = await ctx.login("DASHBOARD")
    afad = await ctx.login("AFAD") if ctx.has("AFAD") else None
    texts = [
        _event("stats_update", "CATS", {"period": "2025-10-29", "clicks": 1520}),
        _event("user_online", "CATS", {"user_id": "500", "user_name": "アフィリエイターX"}),
    ]
    for text in texts:
        await cats.send(text)
    for text in texts:
        await dash.expect_text(text)
    await cats.quiet()
    if afad is not None:
        await afad.quiet()


async def _routing_user_bound(ctx: _Ctx) -> None:
    cats = await ctx.login("CATS", "publisher")
    user = await ctx.login("DASHBOARD@500", "(user 500)")
    wanted = [
        _event("conversion", "CATS", _conversion(500, 499)),  # the owner
        _event("conversion", "CATS", _conversion(501, "500")),  # a tier user, as a string
        _event("click", "CATS", {"access_id": 1, "adware_id": 100, "owner_id": "500"}),
        _event("stats_update", "CATS", {"owner_id": 500, "clicks": 3}),
    ]
    unwanted = [
        _event("conversion", "CATS", _conversion(501, 502)),
        _event("conversion", "CATS", _conversion("0500")),
        _event("stats_update", "CATS", {"owner_id": 777}),
        _event("user_online", "CATS", {"user_id": 500}),
        _event(
            "budget_alert",
            "CATS",
            {"adware_id": 1, "current_budget": 9, "limit": 10, "usage_percentage": 90},
        ),
    ]
    for text in [*wanted, *unwanted]:
        await cats.send(text)
    await cats.quiet()
    _same_events(user.label, await user.until_barrier(), wanted)


async def _routing_no_echo(ctx: _Ctx) -> None:
    cats = await ctx.login("CATS", "publisher")
    afad = await ctx.login("AFAD", "publisher")
    conversion = _event("conversion", "CATS", _conversion(500, 499))
    await cats.send(conversion)
    await cats.quiet()  # the barrier: its own event must not come first
    await afad.expect_text(conversion)  # ... and it was published
    update = _event("adware_update", "AFAD", _ADWARE_UPDATE)
    await afad.send(update)
    await afad.quiet()
    await cats.expect_text(update)


async def _routing_sender_mismatch(ctx: _Ctx) -> None:
    afad = await ctx.login("AFAD", "publisher")
    other = await ctx.login("AFAD", "observer")
    text = _event("conversion", "CATS", _conversion(500))  # AFAD claiming to be CATS
    await afad.send(text)
    await afad.expect_error(ErrorCode.SENDER_MISMATCH, message_id=_message_id(text))
    await afad.quiet()
    await other.quiet()  # nothing was published to type:AFAD


async def _routing_event_not_allowed(ctx: _Ctx) -> None:
    cats = await ctx.login("CATS", "publisher")
    other = await ctx.login("CATS", "observer")
    text = _event("adware_update", "CATS", _ADWARE_UPDATE)  # AFAD → CATS only
    await cats.send(text)
    await cats.expect_error(ErrorCode.EVENT_NOT_ALLOWED, message_id=_message_id(text))
    await cats.quiet()
    await other.quiet()  # nothing was published to type:CATS
    if ctx.has("DASHBOARD"):
        dash = await ctx.login("DASHBOARD", "publisher")
        text = _event("conversion", "DASHBOARD", _conversion(500))
        await dash.send(text)
        await dash.expect_error(ErrorCode.EVENT_NOT_ALLOWED, message_id=_message_id(text))
        await dash.quiet()
