"""Checks from the session vectors (``protocol/vectors``): each vector's steps
are replayed on one connection, with the run's real tokens, while observers
on the channels we hold tokens for check what was published.

The vectors assume a clock that moves only by their steps' ``wait``; on a real
wire time also passes between frames, so rate-limit answers are judged with that
slack, and a replay too slow to be conclusive is reported as such.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

import trio

from protocol import DEFAULT_RATE_LIMITS, ErrorCode
from protocol import messages as m
from protocol.conformance import (
    MISSING,
    ExpectClose,
    ExpectError,
    ExpectHeartbeat,
    ExpectPublish,
    ExpectSend,
    SessionStep,
    SessionVector,
    lookup,
)
from protocol.privacy import DEFAULT_PERSONAL_FIELDS, Projection, fold, project

from .conn import _PING, _Conn, _describe, _Msg
from .frames import _fresh_id
from .results import _Fail, _Retry, _Skip
from .runner import _Check, _Ctx, _same_events
from .tokens import BOUND_USER, TOKEN_KINDS, _client_type

#: The spec's default auth deadline (§2); a session vector's silent step waits this long.
AUTH_TIMEOUT_ALLOWANCE: Final = 10.0
#: Vector tokens and the kinds of token that replace them on the wire.
_VECTOR_TOKENS: Final = {
    "token-cats": "CATS",
    "token-afad": "AFAD",
    "token-dashboard": "DASHBOARD",
    "token-dashboard-user-500": "DASHBOARD@500",
}
#: Observers for session vectors: the channel each token kind's connection joins.
_USER_BOUND: Final = Projection(fold(DEFAULT_PERSONAL_FIELDS))
_OBSERVER_CHANNELS: Final = {
    "CATS": "type:CATS",
    "AFAD": "type:AFAD",
    "DASHBOARD": "type:DASHBOARD",
    "DASHBOARD@500": f"user:{BOUND_USER}",
}


def _session_kind(vector: SessionVector) -> str | None:
    if vector.user_id is None:
        return vector.client_type if vector.client_type in TOKEN_KINDS else None
    kind = f"{vector.client_type}@{vector.user_id}"
    return kind if kind in TOKEN_KINDS else None


#: Which profile a session vector belongs to, by a part of its name (first
#: match); the rest are ``strict``.
_PROFILE_BY_NAME: Final = (
    ("rate_limit", "limits"),
    ("auth_timeout", "limits"),
    ("connection_limit", "limits"),
    ("too_large", "limits"),
    ("heartbeat", "extensions"),
    ("extensions", "extensions"),
)
#: The section of docs/protocol.md a session vector pins, by a part of its name.
_SECTION_BY_NAME: Final = (
    ("rate_limit", "§9"),
    ("too_large", "§4.1"),
    ("utf8", "§4"),
    ("heartbeat", "§10.1"),
    ("extensions", "§10"),
    ("user_bound", "§8"),
    ("spoofed", "§8.2"),
    ("as_afad", "§8.2"),
    ("not_allowed", "§8.2"),
    ("may_not", "§8.2"),
    ("second_auth", "§7"),
    ("server_only", "§7"),
    ("after_auth", "§7"),
    ("auth", "§2"),
    ("ping", "§2"),
)


def session_vector_profile(vector: SessionVector) -> str:
    return next((p for part, p in _PROFILE_BY_NAME if part in vector.name), "strict")


def _section(vector: SessionVector) -> str:
    return next((s for part, s in _SECTION_BY_NAME if part in vector.name), "§8.1")


def _session_check(vector: SessionVector) -> _Check:
    kind = _session_kind(vector)
    name = f"session.{vector.name}"
    pins_defaults = session_vector_profile(vector) == "limits"
    waits = sum(step.wait * step.repeat for step in vector.steps)
    waits += sum(AUTH_TIMEOUT_ALLOWANCE for step in vector.steps if step.is_timeout)

    async def run(ctx: _Ctx) -> None:
        if pins_defaults and not ctx.runner.limits.is_default():
            raise _Skip(
                "the vector assumes catsock's default limits; the limits.* checks cover "
                "the target's"
            )
        if kind is None:
            raise _Skip(f"no token kind for a {vector.client_type} bound to {vector.user_id}")
        for step in vector.steps:
            if step.auth == "reject" and step.reject_code != ErrorCode.AUTH_FAILED:
                raise _Skip(
                    f"needs the gateway to answer {step.reject_code}: that depends on runtime "
                    "settings (the per-identity connection limit) the runner cannot know"
                )
        await _replay_session(ctx, vector, kind)

    needs = () if kind is None else (kind,)
    return _Check(name, run, needs, vector.description, _section(vector), waits)


def _substitute(frame: str | bytes, tokens: Mapping[str, str]) -> str | bytes:
    """The vector's placeholder tokens replaced by the run's real ones."""
    if not isinstance(frame, str):
        return frame
    for placeholder, kind in _VECTOR_TOKENS.items():
        if kind in tokens:
            frame = frame.replace(json.dumps(placeholder), json.dumps(tokens[kind]))
    return frame


def _json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON values: ``1 != true``, ``"500" != 500``, ``10 == 10.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _retry_after_ok(actual: float | None, expected: float, slack: float) -> bool:
    """The vectors assume no time passes between frames. On a real wire the bucket
    refills during the ``slack`` seconds the replay took beyond the vector's waits,
    so retry_after may come out shorter by up to that much (and never longer)."""
    if actual is None or not actual > 0:
        return False
    return expected - slack - 0.005 <= actual <= expected + 0.005


def _refill(kind: str | None, elapsed: float) -> float:
    """Tokens §9's bucket for ``kind`` gains in ``elapsed`` seconds."""
    limit = DEFAULT_RATE_LIMITS.get(_client_type(kind or ""), DEFAULT_RATE_LIMITS["DASHBOARD"])
    return elapsed * limit.per_minute / 60.0


def _frames_after_auth(vector: SessionVector) -> int:
    count, authed = 0, False
    for step in vector.steps:
        if authed and step.send is not None:
            count += step.repeat
        authed = authed or step.auth == "accept"
    return count


def _limits_rate(vector: SessionVector) -> bool:
    return any(
        isinstance(e, ExpectError) and e.code == ErrorCode.RATE_LIMIT_EXCEEDED
        for step in vector.steps
        for e in step.expect
    )


async def _replay_session(ctx: _Ctx, vector: SessionVector, kind: str) -> None:
    tokens = ctx.runner.tokens
    # Observers: one connection per channel we hold a token for, when events are published.
    observers: dict[str, _Conn] = {}
    expected: dict[str, list[str]] = {}
    if any(isinstance(e, ExpectPublish) for step in vector.steps for e in step.expect):
        for okind, channel in _OBSERVER_CHANNELS.items():
            if okind in tokens:
                observers[channel] = await ctx.login(okind, f"observer ({channel})")
                expected[channel] = []
    budget = ctx.runner.budgets[kind]
    if _limits_rate(vector):
        await ctx.sleep(budget.wait_time(math.inf))  # the vector needs a full bucket
    else:
        await ctx.sleep(budget.wait_time(_frames_after_auth(vector) + 1))

    conn = await ctx.connect(f"{kind} ({vector.client_type} session)")
    conn.kind, conn.budget = kind, budget
    ended = False
    for number, step in enumerate(vector.steps, 1):
        label = f"step {number}"
        if step.wait:
            # A millisecond more: the spec's clock moves exactly ``wait``, ours a bit more.
            await ctx.sleep(step.wait + 0.001)
            ctx.waited += step.wait
        if step.is_timeout:
            if conn.authed:
                ctx.notes.append(
                    f"{label} not replayed: staying silent to the gateway's pings is not "
                    "possible with a WebSocket client that answers them"
                )
                ended = True
                break
            ctx.extend(AUTH_TIMEOUT_ALLOWANCE)
        frame = None if step.is_timeout else _substitute(step.data(), tokens)
        frames = [frame if frame is None else _fresh_id(frame) for _ in range(step.repeat)]
        for each in frames:
            if each is not None:
                await conn.send(each, paced=False)
        for each in frames:
            if await _expectations(ctx, conn, step, each, label, expected):
                ended = True
    if not ended and conn.authed:
        # Barrier: anything the gateway sent that no step expected arrives before this.
        await conn.send(_PING, paced=False)
        msg = await conn.recv("the final barrier's pong")
        if msg.type != "pong" and msg.error_code() != ErrorCode.RATE_LIMIT_EXCEEDED:
            raise _Fail(f"after the last step the gateway sent {_describe(msg)}")
    for channel, observer in observers.items():
        _same_events(observer.label, await observer.until_barrier(), expected[channel])
    if any(isinstance(e, ExpectHeartbeat) for step in vector.steps for e in step.expect):
        ctx.notes.append("WebSocket pings (heartbeat) not observed: the client answers them")


async def _expectations(
    ctx: _Ctx,
    conn: _Conn,
    step: SessionStep,
    frame: str | bytes | None,
    label: str,
    expected: dict[str, list[str]],
) -> bool:
    """Check one repetition of ``step``'s answers; True once the connection closed."""
    for exp in step.expect:
        if isinstance(exp, ExpectSend):
            msg = await conn.recv(f"{exp.type} ({label})")
            if msg.problem is not None or msg.type != exp.type:
                raise _step_error(ctx, conn, label, exp.type, msg)
            if exp.type == "auth_success":
                ctx.authed_at, ctx.waited = trio.current_time(), 0.0
            for path, value in exp.fields.items():
                got = lookup(msg.obj, path)
                if got is MISSING or not _json_equal(got, value):
                    shown = "nothing" if got is MISSING else json.dumps(got)
                    raise _Fail(
                        f"{label}: {exp.type}.{path} should be {json.dumps(value)}, is {shown}"
                    )
            for path in exp.absent:
                if lookup(msg.obj, path) is not MISSING:
                    raise _Fail(f"{label}: {exp.type} should have no {path!r}")
        elif isinstance(exp, ExpectError):
            msg = await _recv_error(ctx, conn, exp.code, label)
            if msg.problem is not None or msg.error_code() != exp.code:
                raise _step_error(ctx, conn, label, f"error {exp.code}", msg)
            assert isinstance(msg.message, m.Error)
            if exp.retry_after is not None:
                actual = msg.message.payload.retry_after
                slack = ctx.slack()
                if not _retry_after_ok(actual, exp.retry_after, slack):
                    raise _Fail(
                        f"{label}: retry_after should be {exp.retry_after} (less up to the "
                        f"{slack:.3f} s the replay took beyond the vector's waits), is {actual!r}"
                    )
            if exp.close is not None:
                await conn.expect_closed(exp.close)
                return True
        elif isinstance(exp, ExpectClose):
            await conn.expect_closed(exp.code)
            return True
        elif isinstance(exp, ExpectPublish):
            assert isinstance(frame, str)
            for channel in exp.channels:
                if channel in expected:
                    # A user-bound token gets events without visitors' personal fields
                    # (docs/privacy.md: the default projection).
                    user = channel.startswith("user:")
                    expected[channel].append(project(frame, _USER_BOUND) if user else frame)
        # verify, subscribe and heartbeat are not visible on the wire.
    return False


async def _recv_error(ctx: _Ctx, conn: _Conn, code: str, label: str) -> _Msg:
    what = f"error {code} ({label})"
    if code != ErrorCode.RATE_LIMIT_EXCEEDED:
        return await conn.recv(what)
    # If the burst was slow, the gateway may rightly have accepted the frame and
    # sent nothing: do not let that look like a hang.
    sent_at = trio.current_time()
    with trio.move_on_at(ctx.scope.deadline - 0.2 * ctx.runner.timeout):
        return await conn.recv(what)
    # How long the gateway took over the burst: until the observers got their last
    # copy (a lower bound), or until we sent the last frame.
    arrivals = [c.last_arrival for c in ctx.conns if c is not conn and c.last_arrival]
    slack = ctx.slack(max([sent_at, *arrivals]))
    detail = f"{label}: no error {code} arrived (the frame was accepted)"
    if _refill(conn.kind, slack) >= 0.5:
        raise _timing(detail, slack, conn.kind)
    raise _Fail(detail)


def _timing(detail: str, slack: float, kind: str | None) -> _Retry:
    return _Retry(
        f"{detail}; the replay took {slack:.3f} s beyond the vector's waits, enough for "
        "the bucket to refill meanwhile, but the vector assumes that no time passes "
        "between frames",
        kind,
        timing=True,
    )


def _step_error(ctx: _Ctx, conn: _Conn, label: str, what: str, msg: _Msg) -> Exception:
    detail = f"{label}: expected {what}, got {_describe(msg)}"
    # Likely caused by our own earlier traffic: the runner retries the check once.
    if msg.error_code() == ErrorCode.RATE_LIMIT_EXCEEDED:
        return _Retry(detail, conn.kind)
    if msg.error_code() == ErrorCode.CONNECTION_LIMIT:
        return _Retry(detail, None)
    slack = ctx.slack()
    if what == f"error {ErrorCode.RATE_LIMIT_EXCEEDED}" and _refill(conn.kind, slack) >= 0.5:
        # The replay was slow enough for the bucket to refill a token meanwhile.
        return _timing(detail, slack, conn.kind)
    return _Fail(detail)
