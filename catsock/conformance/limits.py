"""The ``limits`` profile's hand-written checks: the size limit, the rate limits
and the auth deadline, each as the target is configured (``TargetLimits``, from
the command line), not as catsock's defaults would have them. The vectors that
pin catsock's default limits (size.json, the rate-limit and auth-deadline
sessions) join the profile too, and are skipped when the limits differ.
"""

from __future__ import annotations

import math

from protocol import ErrorCode
from protocol import messages as m

from .conn import _PING, _describe
from .results import _Fail, _Retry, _Skip
from .runner import _Check, _Ctx

#: The token kind whose bucket ``limits.rate`` empties, and the one that checks sizes.
_RATE_KIND = "DASHBOARD"
_SIZE_KIND = "CATS"


def limit_checks() -> list[_Check]:
    return [
        _Check(
            "limits.message_size",
            _message_size,
            (_SIZE_KIND,),
            rule="a frame of exactly the size limit is accepted; one byte more gets "
            "MESSAGE_TOO_LARGE and close 1009",
            section="§4.1",
        ),
        _Check(
            "limits.auth_deadline",
            _auth_deadline,
            rule="no auth before the auth deadline: error CONNECTION_TIMEOUT, then close 1008",
            section="§2",
            waits=10.0,
        ),
    ]


def last_limit_checks() -> list[_Check]:
    """Checks that empty a bucket: they run after everything else of the profile."""
    return [
        _Check(
            "limits.rate",
            _rate,
            (_RATE_KIND,),
            rule="a burst over the bucket gets RATE_LIMIT_EXCEEDED with a retry_after no "
            "longer than one token's refill, and a message after retry_after passes",
            section="§9",
        )
    ]


async def _message_size(ctx: _Ctx) -> None:
    limit = ctx.runner.limits.max_message_size
    conn = await ctx.login(_SIZE_KIND)
    head, tail = '{"type":"ping","padding":"', '"}'
    filler = max(0, limit - len(head) - len(tail))
    await conn.send(head + "x" * filler + tail)
    msg = await conn.recv(f"pong to a frame of {limit} bytes")
    if msg.type != "pong":
        raise _Fail(f"a frame of exactly {limit} bytes (the limit) got {_describe(msg)}")
    await conn.send(head + "x" * (filler + 1) + tail)
    await conn.expect_error(ErrorCode.MESSAGE_TOO_LARGE)
    await conn.expect_closed(1009)


async def _auth_deadline(ctx: _Ctx) -> None:
    deadline = ctx.runner.limits.auth_timeout
    ctx.extend(deadline)  # the wait is the check, not the gateway being slow
    conn = await ctx.connect("silent client")
    await conn.expect_error(ErrorCode.CONNECTION_TIMEOUT)
    await conn.expect_closed(1008)


async def _rate(ctx: _Ctx) -> None:
    """A burst of pings over the bucket: RATE_LIMIT_EXCEEDED with a positive
    retry_after; the runner then stops, so the abuse close never trips."""
    limit = ctx.runner.limits.rate(_RATE_KIND)
    if limit is None:
        raise _Skip("the target has no rate limits (--no-rate-limits)")
    await ctx.ensure_budget(_RATE_KIND, math.inf)
    conn = await ctx.login(_RATE_KIND)
    most = 3 * limit.burst
    sent = pongs = 0
    retry: float | None = None
    while retry is None and sent < most:
        batch = min(5, most - sent)
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
        burst = limit.burst
        raise _Fail(f"{sent} pings at once were all answered ({_RATE_KIND}'s burst is {burst})")
    if pongs < limit.burst:
        # The bucket may not have been full (earlier traffic): the runner lets it
        # refill and runs the check once more.
        detail = f"only {pongs} pongs before RATE_LIMIT_EXCEEDED; the burst is {limit.burst}"
        raise _Retry(detail, _RATE_KIND)
    one_token = 60.0 / limit.per_minute
    if retry > one_token + 0.005:
        raise _Fail(f"retry_after {retry} is longer than one token's refill ({one_token:.3f} s)")
    await ctx.sleep(retry + 0.01)
    await conn.send(_PING, paced=False)
    await conn.expect_type("pong")
    ctx.notes.append(f"{pongs} pongs, then RATE_LIMIT_EXCEEDED with retry_after {retry}")
