"""A module of extra conformance checks, as a later module (JWT expiry) will add
one: ``module_checks`` turns its ``check_*`` functions into checks of a profile."""

from __future__ import annotations

from catsock.conformance import Ctx, needs, section


@needs("CATS")
async def check_two_pings(ctx: Ctx) -> None:
    """Two pings in a row get two pongs.

    More text that is not part of the rule."""
    conn = await ctx.login("CATS")
    for _ in range(2):
        await conn.send('{"type":"ping"}')
    for _ in range(2):
        await conn.expect_type("pong")


@section("§3.1")
@needs("AFAD", "DASHBOARD")
async def check_pong_is_ignored(ctx: Ctx) -> None:
    """A pong from the client gets no answer."""
    conn = await ctx.login("AFAD")
    await conn.send('{"type":"pong"}')
    await conn.quiet()


async def helper_not_a_check(ctx: Ctx) -> None:
    """Not named check_*: not a check."""


def check_not_async() -> None:
    """Not a coroutine function: not a check."""
