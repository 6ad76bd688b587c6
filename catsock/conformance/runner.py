"""The runner core: how one check runs, and what it may use while it does.

``_Runner`` runs each ``_Check`` under its own timeout inside a fresh nursery
and turns what the check raised into a ``CheckResult``, retrying once when the
runner's own traffic may have caused a refusal. ``_Ctx`` is what a check
function receives: connections (``connect``, ``login``), pacing, and notes.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import attrs
import trio
import trio_websocket

from protocol import ErrorCode

from .conn import _clip, _Conn, _describe, _explain, _leaves, _Msg, _Target
from .results import CheckResult, GatewayUnreachable, _Fail, _Retry, _Skip
from .server import ServerControl
from .tokens import TOKEN_KINDS, JwtTarget, TargetLimits, _Budget, _client_type

#: Logins refused with CONNECTION_LIMIT (our closed connections not yet gone) are retried.
_LOGIN_ATTEMPTS: Final = 10


class _Ctx:
    def __init__(self, runner: _Runner, nursery: trio.Nursery, scope: trio.CancelScope) -> None:
        self.runner = runner
        self.nursery = nursery
        self.scope = scope
        self.waiting = "the check to start"
        self.notes: list[str] = []
        #: A session vector's clock: it starts at auth_success and moves only by the
        #: steps' ``wait``; ours moves all the time. ``slack`` is the difference.
        self.authed_at = trio.current_time()
        self.waited = 0.0
        self.conns: list[_Conn] = []

    def slack(self, until: float | None = None) -> float:
        """Seconds that passed since auth beyond the session vector's own waits."""
        now = trio.current_time() if until is None else until
        return max(0.0, now - self.authed_at - self.waited)

    def has(self, kind: str) -> bool:
        return kind in self.runner.tokens

    def extend(self, seconds: float) -> None:
        """Give the check ``seconds`` more before its timeout."""
        if seconds > 0:
            self.scope.deadline += seconds

    async def sleep(self, seconds: float) -> None:
        """Sleep without spending the check's timeout."""
        if seconds > 0:
            self.extend(seconds)
            await trio.sleep(seconds)

    async def connect(self, label: str) -> _Conn:
        conn = _Conn(self, label)
        self.waiting = f"{label}: the WebSocket handshake"
        try:
            await self.nursery.start(conn.hold)
        except Exception as exc:
            raise _Fail(f"{label}: cannot connect: {_explain(exc)}") from None
        self.conns.append(conn)
        return conn

    async def login(
        self, kind: str, role: str = "", *, extensions: Mapping[str, Any] | None = None
    ) -> _Conn:
        """A connection authenticated with the ``kind`` token: as a seed client, or
        asking for ``extensions`` (§10); ``conn.granted`` holds what was granted."""
        label = f"{kind} {role}".strip()
        fields: dict[str, Any] = {
            "type": "auth",
            "token": self.runner.tokens[kind],
            "client_type": _client_type(kind),
        }
        if extensions is not None:
            fields["extensions"] = dict(extensions)
        auth = json.dumps(fields)
        for _ in range(_LOGIN_ATTEMPTS):
            conn = await self.connect(label)
            conn.kind, conn.budget = kind, self.runner.budgets[kind]
            await conn.send(auth)
            msg = await conn.recv("auth_success")
            if msg.type == "auth_success":
                granted = msg.obj.get("extensions") if isinstance(msg.obj, dict) else None
                conn.granted = granted if isinstance(granted, dict) else {}
                return conn
            if msg.error_code() == ErrorCode.CONNECTION_LIMIT:
                # Our previous connections may not be gone yet on the gateway's side.
                await conn.aclose()
                await self.sleep(0.1)
                continue
            raise _Fail(f"{label}: expected auth_success, got {_describe(msg)}")
        raise _Retry(f"{label}: CONNECTION_LIMIT on every attempt", None)

    async def ensure_budget(self, kind: str, n: float) -> None:
        await self.sleep(self.runner.budgets[kind].wait_time(n))

    async def close_all(self) -> None:
        with trio.CancelScope(shield=True):
            for conn in self.conns:
                conn._release.set()
            for conn in self.conns:
                await conn.aclose()


CheckFn = Callable[[_Ctx], Awaitable[None]]


@attrs.frozen
class _Check:
    """One check: its name, its function, the token kinds it needs, the rule it
    holds the gateway to and the section of docs/protocol.md stating it.
    ``waits`` is the time the check spends on purpose (a vector's ``wait``, a
    deadline it lets pass) beyond its timeout, for the run's time estimate."""

    name: str
    run: CheckFn
    needs: tuple[str, ...] = ()
    rule: str = ""
    section: str = ""
    waits: float = 0.0


class _Runner:
    def __init__(
        self,
        target: _Target,
        tokens: Mapping[str, str],
        timeout: float,
        limits: TargetLimits | None = None,
        server: ServerControl | None = None,
        jwt: JwtTarget | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.target = target
        #: For the expiry checks (catsock/conformance/expiry.py), or None.
        self.jwt = jwt
        #: Unix time, as the target's clock should read it (tests drive a fake one).
        self.wall_clock = wall_clock
        self.tokens = dict(tokens)
        self.timeout = timeout
        self.limits = limits or TargetLimits()
        #: Control of the target's process (the ``faults`` profile), or None.
        self.server = server
        self.budgets = {kind: _Budget(_client_type(kind), self.limits) for kind in TOKEN_KINDS}

    async def preflight(self) -> None:
        """Open one WebSocket (no auth) so an unreachable gateway is one clear error."""
        try:
            with trio.fail_after(self.timeout):
                async with trio.open_nursery() as nursery:
                    ctx = _Ctx(self, nursery, nursery.cancel_scope)
                    conn = _Conn(ctx, "preflight")
                    await nursery.start(conn.hold)
                    await conn.aclose()
        except trio.TooSlowError:
            raise GatewayUnreachable(
                f"{self.target.url}: no WebSocket handshake within {self.timeout:g} s"
            ) from None
        except Exception as exc:
            raise GatewayUnreachable(f"{self.target.url}: {_explain(exc)}") from None

    async def run(self, check: _Check, profile: str = "") -> CheckResult:
        result = await self._run(check)
        return attrs.evolve(result, profile=profile, rule=check.rule, section=check.section)

    async def _run(self, check: _Check) -> CheckResult:
        start = trio.current_time()
        missing = [k for k in check.needs if k not in self.tokens]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            detail = f"needs the {' and '.join(missing)} token{plural}"
            return CheckResult(check.name, False, detail, 0.0, skipped=True)
        for attempt in (1, 2):
            outcome = await self._attempt(check)
            if isinstance(outcome, _Retry) and attempt == 1:
                if outcome.kind is not None:
                    # Our own traffic (or a previous run) emptied a bucket: let it refill.
                    self.budgets[outcome.kind].drain()
                    await trio.sleep(self.budgets[outcome.kind].wait_time(math.inf))
                else:
                    await trio.sleep(1.0)  # let the gateway notice our closed connections
                continue
            break
        seconds = trio.current_time() - start
        if isinstance(outcome, _Skip):
            return CheckResult(check.name, False, str(outcome), seconds, skipped=True)
        if isinstance(outcome, _Retry) and outcome.timing:
            return CheckResult(check.name, False, f"inconclusive: {outcome}", seconds, skipped=True)
        if isinstance(outcome, _Retry):
            return CheckResult(check.name, False, f"{outcome} (also after a retry)", seconds)
        if isinstance(outcome, BaseException):
            return CheckResult(check.name, False, _failure(outcome), seconds)
        return CheckResult(check.name, True, outcome, seconds)

    async def _attempt(self, check: _Check) -> str | BaseException:
        ctx: _Ctx | None = None
        try:
            with trio.fail_after(self.timeout) as scope:
                async with trio.open_nursery() as nursery:
                    ctx = _Ctx(self, nursery, scope)
                    try:
                        await check.run(ctx)
                    finally:
                        await ctx.close_all()
        except trio.TooSlowError:
            waiting = ctx.waiting if ctx is not None else "the check"
            return _Fail(f"timed out after {self.timeout:g} s waiting for {waiting}")
        except Exception as exc:
            return _pick(exc)
        assert ctx is not None
        return "; ".join(ctx.notes)


def _pick(exc: BaseException) -> BaseException:
    """The leaf of an exception group that decides the outcome."""
    leaves = [e for e in _leaves(exc) if not isinstance(e, trio.Cancelled)]
    for kind in (_Skip, _Fail, _Retry):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if leaves else exc


def _failure(exc: BaseException) -> str:
    if isinstance(exc, _Fail):
        return str(exc)
    if isinstance(exc, trio_websocket.ConnectionClosed):
        code = None if exc.reason is None else exc.reason.code
        return f"the connection was closed unexpectedly ({code})"
    return f"{type(exc).__name__}: {exc}"


def _same_events(label: str, got: list[_Msg], wanted: list[str]) -> None:
    """``got`` holds exactly the texts ``wanted`` (in any order)."""
    extra = Counter(msg.data for msg in got)
    extra.subtract(wanted)
    missing = [t for t, n in extra.items() if n < 0]
    surplus = [t for t, n in extra.items() if n > 0]
    if missing or surplus:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}, e.g. {_clip(missing[0], 100)}")
        if surplus:
            parts.append(f"unexpected {len(surplus)}, e.g. {_clip(surplus[0], 100)}")
        raise _Fail(f"{label}: {'; '.join(parts)}")
