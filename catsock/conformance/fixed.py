"""The ``strict`` profile's hand-written checks: auth, ping and routing as
docs/protocol.md has them, catsock's choices included (close codes, no
``extensions`` for a seed client, the DASHBOARD copy, user channels, the
publisher's exact text). The vector-driven checks are in ``decode_vectors`` and
``session_vectors``; the limits are ``limits``'s."""

from __future__ import annotations

import json
import uuid

from protocol import ErrorCode
from protocol import messages as m

from .conn import _PING
from .frames import _ADWARE_UPDATE, _BUDGET_UPDATE, _conversion, _event, _message_id
from .results import _Fail, _Skip
from .runner import _Check, _Ctx, _same_events
from .tokens import TOKEN_KINDS, _client_type


def strict_checks() -> list[_Check]:
    return [
        _Check(
            "auth.ok",
            _auth_ok,
            rule="auth_success with a connection_id and, for a seed client, no 'extensions'",
            section="§2",
        ),
        _Check(
            "auth.failed",
            _auth_failed,
            rule="a bad token gets AUTH_FAILED and close 1008",
            section="§2",
        ),
        _Check(
            "auth.required",
            _auth_required,
            ("CATS",),
            rule="AUTH_REQUIRED and no pong before auth",
            section="§2",
        ),
        _Check("ping.pong", _ping_pong, ("CATS",), rule="ping gets pong", section="§3.1"),
        _Check(
            "routing.conversion",
            _routing_conversion,
            ("CATS", "AFAD", "DASHBOARD"),
            rule="a conversion goes, as the publisher's exact text, to AFAD, DASHBOARD and "
            "the owner's and tier users' channels, and to no other CATS",
            section="§8.1",
        ),
        _Check(
            "routing.afad_to_cats",
            _routing_afad_to_cats,
            ("AFAD", "CATS"),
            rule="adware_update and budget_update go from AFAD to CATS only",
            section="§8.1",
        ),
        _Check(
            "routing.dashboard",
            _routing_dashboard,
            ("CATS", "DASHBOARD"),
            rule="stats_update and user_online go to DASHBOARD only",
            section="§8.1",
        ),
        _Check(
            "routing.user_bound",
            _routing_user_bound,
            ("CATS", "DASHBOARD@500"),
            rule="a token bound to user 500 gets exactly the events naming user 500",
            section="§8",
        ),
        _Check(
            "routing.no_echo",
            _routing_no_echo,
            ("CATS", "AFAD"),
            rule="the publisher never receives its own event",
            section="§8.2",
        ),
        _Check(
            "routing.sender_mismatch",
            _routing_sender_mismatch,
            ("AFAD",),
            rule="an envelope whose sender is not the token's client type gets "
            "SENDER_MISMATCH naming its message_id, and is not published",
            section="§8.2",
        ),
        _Check(
            "routing.event_not_allowed",
            _routing_event_not_allowed,
            ("CATS",),
            rule="an event the client type may not publish gets EVENT_NOT_ALLOWED naming its "
            "message_id, and is not published",
            section="§8.2",
        ),
    ]


# -- auth and ping ------------------------------------------------------------------


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
