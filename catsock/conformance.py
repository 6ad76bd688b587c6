"""The network conformance runner: check any gateway against docs/protocol.md.

``run_conformance(url, tokens)`` drives a gateway over the network only, as a
client would: trio-websocket connections on ``url``, frames built by hand or
taken from the conformance vectors (``protocol.conformance``), and every reply
decoded with ``protocol.Codec``. It never imports or inspects a gateway's code,
so it checks catsock and any other implementation alike.

Tokens come one per kind: ``CATS``, ``AFAD``, ``DASHBOARD`` (an admin dashboard,
not bound to a user) and optionally ``DASHBOARD@500`` (a dashboard token bound
to user 500). A check that needs a token it was not given is reported as SKIP.

Every check is an independent async function with its own connections, run
under its own ``trio.fail_after(timeout)``; checks run one after another, so the
gateway should carry no other traffic for these client types during a run.
"Nothing arrived" is proven with a barrier: the connection sends ``ping`` and
everything before the ``pong`` is what arrived. The runner paces what it sends
to stay inside the rate limits of §9, which it models per token (it assumes the
tokens were idle before the run); time spent pacing, and the ``wait`` of a
session vector, does not count against a check's timeout. A check that still
meets an unexpected ``RATE_LIMIT_EXCEEDED`` (or ``CONNECTION_LIMIT``) is run once
more after the token's bucket had time to refill.
"""

from __future__ import annotations

import enum
import json
import math
import re
import secrets
import ssl
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs
import trio
import trio_websocket

from protocol import DEFAULT_RATE_LIMITS, DEFAULT_ROUTES, Codec, ErrorCode, ProtocolError
from protocol import messages as m
from protocol.conformance import (
    MISSING,
    DecodeVector,
    ExpectClose,
    ExpectError,
    ExpectHeartbeat,
    ExpectPublish,
    ExpectSend,
    SessionStep,
    SessionVector,
    load_decode_vectors,
    load_session_vectors,
    lookup,
)

__all__ = [
    "TOKEN_KINDS",
    "CheckResult",
    "GatewayUnreachable",
    "Status",
    "check_names",
    "run_conformance",
]

#: The token kinds a run can be given (``--token KIND=TOKEN``).
TOKEN_KINDS: Final = ("CATS", "AFAD", "DASHBOARD", "DASHBOARD@500")

#: The spec's default auth deadline (§2); a session vector's silent step waits this long.
AUTH_TIMEOUT_ALLOWANCE: Final = 10.0
#: The user the ``DASHBOARD@500`` token is bound to, as in the vectors.
BOUND_USER: Final = "500"
#: The pacing model refills a little slower than §9 says, to stay on the safe side.
_PACE_FACTOR: Final = 0.9
_LOGIN_ATTEMPTS: Final = 10
_CLOSE_GRACE: Final = 2.0
_PING: Final = '{"type":"ping"}'
#: Vector tokens and the kinds of token that replace them on the wire.
_VECTOR_TOKENS: Final = {
    "token-cats": "CATS",
    "token-afad": "AFAD",
    "token-dashboard": "DASHBOARD",
    "token-dashboard-user-500": "DASHBOARD@500",
}
#: Observers for session vectors: the channel each token kind's connection joins.
_OBSERVER_CHANNELS: Final = {
    "CATS": "type:CATS",
    "AFAD": "type:AFAD",
    "DASHBOARD": "type:DASHBOARD",
    "DASHBOARD@500": f"user:{BOUND_USER}",
}
_ROUTES: Final = {route.event_type: route for route in DEFAULT_ROUTES}


class Status(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@attrs.frozen
class CheckResult:
    """One check's outcome. ``status`` is PASS, FAIL or SKIP; ``passed`` is true
    only for PASS (a skipped check neither passed nor failed). ``detail`` says
    what went wrong, why it was skipped, or what a passing check could not see."""

    name: str
    passed: bool
    detail: str
    seconds: float
    skipped: bool = attrs.field(default=False, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.passed and self.skipped:
            raise ValueError("a check cannot be both passed and skipped")

    @property
    def status(self) -> Status:
        if self.skipped:
            return Status.SKIP
        return Status.PASS if self.passed else Status.FAIL


class GatewayUnreachable(Exception):
    """No WebSocket connection could be opened to the gateway at all."""


# -- outcomes inside a check ------------------------------------------------------------


class _Fail(Exception):
    """The gateway did something the spec does not allow (the message says what)."""


class _Skip(Exception):
    """The check cannot apply to this run."""


class _Retry(Exception):
    """A transient refusal the runner likely caused itself: a rate limit (``kind``
    names the token whose bucket to let refill) or a connection limit (``None``)."""

    def __init__(self, detail: str, kind: str | None, *, timing: bool = False) -> None:
        super().__init__(detail)
        self.kind = kind
        #: The vector's "no time passes" assumption did not hold: inconclusive, not wrong.
        self.timing = timing


# -- rate-limit pacing --------------------------------------------------------------------


class _Budget:
    """The runner's model of one token's rate-limit bucket (§9), assumed full at start."""

    def __init__(self, client_type: str) -> None:
        limit = DEFAULT_RATE_LIMITS.get(client_type, DEFAULT_RATE_LIMITS["DASHBOARD"])
        self.capacity = float(limit.burst)
        self.rate = limit.per_minute / 60.0 * _PACE_FACTOR
        self._level = self.capacity
        self._stamp: float | None = None

    def level(self) -> float:
        now = trio.current_time()
        if self._stamp is not None:
            self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now
        return self._level

    def spend(self, n: float = 1.0) -> None:
        self._level = max(0.0, self.level() - n)

    def drain(self) -> None:
        self.level()
        self._level = 0.0

    def wait_time(self, n: float) -> float:
        """Seconds until ``n`` tokens are modelled to be there."""
        missing = min(n, self.capacity) - self.level()
        return max(0.0, missing / self.rate)


# -- one client connection ----------------------------------------------------------------


@attrs.frozen
class _Target:
    url: str
    host: str
    port: int
    resource: str
    ssl_context: ssl.SSLContext | None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _parse_url(url: str, ssl_context: ssl.SSLContext | None) -> _Target:
    """A ``ws://`` or ``wss://`` URL as a connection target; ``ValueError`` if unusable."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"{url!r} is not a ws:// or wss:// URL")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    if parts.scheme == "ws" and ssl_context is not None:
        raise ValueError("a TLS context applies to wss:// URLs only")
    if parts.scheme == "wss" and ssl_context is None:
        ssl_context = ssl.create_default_context()
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    default_port = 443 if parts.scheme == "wss" else 80
    return _Target(url, parts.hostname, port or default_port, resource, ssl_context)


@attrs.frozen
class _Msg:
    """One message from the gateway: its frame, its JSON and its decoded form."""

    data: str | bytes
    obj: Any = None
    message: m.Message | None = None
    problem: str | None = None

    @property
    def type(self) -> str | None:
        return None if self.message is None else self.message.type

    def error_code(self) -> str | None:
        return self.message.payload.error_code if isinstance(self.message, m.Error) else None


def _clip(data: str | bytes, limit: int = 160) -> str:
    text = repr(data)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(msg: _Msg) -> str:
    if msg.problem is not None:
        return f"a message the protocol refuses ({msg.problem}): {_clip(msg.data)}"
    message = msg.message
    if isinstance(message, m.Error):
        p = message.payload
        extra = "" if p.retry_after is None else f", retry_after {p.retry_after}"
        return f"error {p.error_code} ({p.error_message!r}{extra})"
    if isinstance(message, m.Event):
        return f"a {message.type} event (message_id {message.message_id!r})"
    assert message is not None
    return message.type


class _Conn:
    """A client connection whose frames are collected in the background.

    ``recv`` takes the next message; ``closed`` and ``close_code`` tell how the
    gateway ended the connection. A holder task in the check's nursery owns the
    socket and closes it when the check releases the connection.
    """

    def __init__(self, ctx: _Ctx, label: str) -> None:
        self.ctx = ctx
        self.label = label
        self.kind: str | None = None
        self.budget: _Budget | None = None
        self.authed = False
        self.sent: set[str] = set()
        self.closed = False
        self.close_code: int | None = None
        self._ws: Any = None
        self._items: list[str | bytes] = []
        #: When the last message arrived (trio time), or None.
        self.last_arrival: float | None = None
        self._cursor = 0
        self._lot = trio.lowlevel.ParkingLot()
        self._release = trio.Event()
        self._done = trio.Event()

    # -- lifecycle ---------------------------------------------------------------

    async def hold(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        target = self.ctx.runner.target
        stream = await _open_stream(target)
        started = False
        try:
            async with trio.open_nursery() as inner:
                self._ws = await trio_websocket.wrap_client_stream(
                    inner,
                    stream,
                    target.host_header,
                    target.resource,
                    max_message_size=4 * 1024 * 1024,
                )
                task_status.started()
                started = True
                inner.start_soon(self._read)
                await self._release.wait()
                with trio.move_on_after(_CLOSE_GRACE):
                    await self._ws.aclose()
                inner.cancel_scope.cancel()
        except Exception:
            if not started:
                raise
        finally:
            self.closed = True
            self._lot.unpark_all()
            try:
                await trio.aclose_forcefully(stream)
            finally:
                self._done.set()

    async def _read(self) -> None:
        try:
            while True:
                self._items.append(await self._ws.get_message())
                self.last_arrival = trio.current_time()
                self._lot.unpark_all()
        except trio_websocket.ConnectionClosed as exc:
            self.close_code = None if exc.reason is None else exc.reason.code
        finally:
            self.closed = True
            self._lot.unpark_all()

    async def aclose(self) -> None:
        self._release.set()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(_CLOSE_GRACE + 1):
                await self._done.wait()

    # -- sending -------------------------------------------------------------------

    async def send(self, data: str | bytes, *, paced: bool = True) -> None:
        """Send one frame (text for ``str``, binary for ``bytes``). After auth it
        takes a token from the pacing model, waiting for one unless ``paced`` is off."""
        if self.authed and self.budget is not None:
            if paced:
                await self.ctx.sleep(self.budget.wait_time(1))
            self.budget.spend(1)
        if isinstance(data, str):
            self.sent.add(data)
        try:
            await self._ws.send_message(data)
        except trio_websocket.ConnectionClosed as exc:
            code = None if exc.reason is None else exc.reason.code
            raise _Fail(f"{self.label}: the connection was closed ({code}) before a send") from None

    # -- receiving ------------------------------------------------------------------

    async def recv(self, what: str) -> _Msg:
        """The next message; fails if the connection closes first."""
        self.ctx.waiting = f"{self.label}: {what}"
        while self._cursor >= len(self._items):
            if self.closed:
                raise _Fail(
                    f"{self.label}: the connection was closed ({self.close_code}) "
                    f"while waiting for {what}"
                )
            await self._lot.park()
        data = self._items[self._cursor]
        self._cursor += 1
        msg = _decode(data)
        if isinstance(msg.message, m.AuthSuccess):
            self.authed = True
        return msg

    def _unexpected(self, msg: _Msg, what: str) -> Exception:
        if msg.error_code() == ErrorCode.RATE_LIMIT_EXCEEDED:
            return _Retry(f"{self.label}: expected {what}, got {_describe(msg)}", self.kind)
        if isinstance(msg.data, str) and msg.data in self.sent:
            own = "event" if isinstance(msg.message, m.Event) else "frame"
            return _Fail(f"{self.label}: expected {what}, got its own {own} back (echo)")
        return _Fail(f"{self.label}: expected {what}, got {_describe(msg)}")

    async def expect_type(self, type_: str) -> _Msg:
        msg = await self.recv(type_)
        if msg.problem is not None or msg.type != type_:
            raise self._unexpected(msg, type_)
        return msg

    async def expect_error(self, code: str, *, message_id: str | None = None) -> m.Error:
        what = f"error {code}"
        msg = await self.recv(what)
        if msg.problem is not None or msg.error_code() != code:
            raise self._unexpected(msg, what)
        assert isinstance(msg.message, m.Error)
        if message_id is not None and msg.message.payload.message_id != message_id:
            raise _Fail(
                f"{self.label}: error {code} should name message_id {message_id!r}, "
                f"named {msg.message.payload.message_id!r}"
            )
        return msg.message

    async def expect_closed(self, code: int) -> None:
        """The gateway closes with ``code`` and sends nothing more."""
        what = f"close {code}"
        self.ctx.waiting = f"{self.label}: {what}"
        while not self.closed and self._cursor >= len(self._items):
            await self._lot.park()
        if self._cursor < len(self._items):
            raise _Fail(f"{self.label}: expected {what}, got {_describe(await self.recv(what))}")
        if self.close_code != code:
            raise _Fail(f"{self.label}: expected {what}, the gateway closed with {self.close_code}")

    async def expect_text(self, text: str) -> None:
        """The next message is exactly ``text`` (a forwarded event, verbatim)."""
        msg = await self.recv("a forwarded event")
        if msg.data == text:
            return
        if isinstance(msg.message, m.Event) and msg.message.message_id == _message_id(text):
            raise _Fail(f"{self.label}: the event arrived, but not verbatim: {_clip(msg.data)}")
        raise self._unexpected(msg, f"the published text {_clip(text, 80)}")

    async def until_barrier(self) -> list[_Msg]:
        """Send ``ping`` and return everything that arrives before its ``pong``."""
        await self.send(_PING)
        before: list[_Msg] = []
        while True:
            msg = await self.recv("pong (barrier)")
            if msg.type == "pong":
                return before
            if msg.error_code() == ErrorCode.RATE_LIMIT_EXCEEDED:
                raise self._unexpected(msg, "pong")
            before.append(msg)

    async def quiet(self) -> None:
        """Nothing arrives before the barrier's ``pong``."""
        await self.send(_PING)
        msg = await self.recv("pong (barrier)")
        if msg.type != "pong":
            raise self._unexpected(msg, "nothing before the barrier's pong")


def _decode(data: str | bytes) -> _Msg:
    if isinstance(data, bytes):
        return _Msg(data, problem="a binary frame; gateways send text frames only")
    try:
        obj = json.loads(data)
    except ValueError:
        obj = None
    try:
        message = _CODEC.decode(data)
    except ProtocolError as exc:
        return _Msg(data, obj, problem=f"{exc.code}: {exc.detail}")
    return _Msg(data, obj, message)


_CODEC: Final = Codec()


async def _open_stream(target: _Target) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    if target.ssl_context is None:
        return await trio.open_tcp_stream(target.host, target.port)
    stream = await trio.open_ssl_over_tcp_stream(
        target.host, target.port, ssl_context=target.ssl_context, https_compatible=True
    )
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


# -- one check's context ------------------------------------------------------------------


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

    async def login(self, kind: str, role: str = "") -> _Conn:
        """A connection authenticated with the ``kind`` token (as a seed client)."""
        label = f"{kind} {role}".strip()
        auth = json.dumps(
            {"type": "auth", "token": self.runner.tokens[kind], "client_type": _client_type(kind)}
        )
        for _ in range(_LOGIN_ATTEMPTS):
            conn = await self.connect(label)
            conn.kind, conn.budget = kind, self.runner.budgets[kind]
            await conn.send(auth)
            msg = await conn.recv("auth_success")
            if msg.type == "auth_success":
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


def _client_type(kind: str) -> str:
    return kind.partition("@")[0]


def _explain(exc: BaseException) -> str:
    leaf = next(_leaves(exc), exc)
    if isinstance(leaf, trio_websocket.ConnectionRejected):
        return f"the WebSocket handshake was refused with HTTP {leaf.status_code}"
    if isinstance(leaf, ssl.SSLError | ssl.CertificateError):
        return f"TLS: {leaf}"
    if isinstance(leaf, trio.BrokenResourceError) and isinstance(leaf.__cause__, ssl.SSLError):
        return f"TLS: {leaf.__cause__}"
    if isinstance(leaf, OSError):
        text = leaf.strerror or str(leaf)
        # trio's "all attempts to connect ... failed" keeps the reasons in its cause.
        causes = [] if leaf.__cause__ is None else list(_leaves(leaf.__cause__))
        reasons = sorted({c.strerror for c in causes if isinstance(c, OSError) and c.strerror})
        if reasons and not any(r in text for r in reasons):
            text += f" ({', '.join(reasons)})"
        return text
    return str(leaf) or type(leaf).__name__


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub)
    else:
        yield exc


# -- the runner ---------------------------------------------------------------------------

CheckFn = Callable[[_Ctx], Awaitable[None]]


@attrs.frozen
class _Check:
    name: str
    run: CheckFn
    needs: tuple[str, ...] = ()


class _Runner:
    def __init__(self, target: _Target, tokens: Mapping[str, str], timeout: float) -> None:
        self.target = target
        self.tokens = dict(tokens)
        self.timeout = timeout
        self.budgets = {kind: _Budget(_client_type(kind)) for kind in TOKEN_KINDS}

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

    async def run(self, check: _Check) -> CheckResult:
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


async def run_conformance(
    url: str,
    tokens: Mapping[str, str],
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 - per check, not for the whole run
    ssl_context: ssl.SSLContext | None = None,
    only: Sequence[str] = (),
) -> list[CheckResult]:
    """Run the conformance checks against the gateway at ``url``; one result each.

    ``tokens`` maps token kinds (``TOKEN_KINDS``) to tokens. ``only`` keeps the
    checks whose name starts with one of its prefixes. ``ssl_context`` is used
    for ``wss://`` (default: the system's trust store). Raises ``ValueError`` for
    a bad URL or an unknown token kind, ``GatewayUnreachable`` if no WebSocket
    handshake succeeds.
    """
    unknown = sorted(set(tokens) - set(TOKEN_KINDS))
    if unknown:
        raise ValueError(f"unknown token kind {unknown[0]!r}; use {', '.join(TOKEN_KINDS)}")
    if not timeout > 0:
        raise ValueError("timeout must be positive")
    runner = _Runner(_parse_url(url, ssl_context), tokens, timeout)
    await runner.preflight()
    selected = [c for c in _checks() if not only or c.name.startswith(tuple(only))]
    async with trio.open_nursery() as keepers:
        # A durable gateway (catsock) replays what an identity missed while it had
        # no connection. One connection per system identity, open for the whole run,
        # keeps every check's connections live instead (docs/delivery.md §2).
        for kind in _KEPT_ONLINE:
            if kind in tokens:
                await keepers.start(_keep_online, runner.target, tokens[kind], kind)
        results = [await runner.run(check) for check in selected]
        keepers.cancel_scope.cancel()
    return results


#: Token kinds whose identities the runner keeps online (catsock's durable defaults).
_KEPT_ONLINE: Final = ("CATS", "AFAD")


async def _keep_online(
    target: _Target,
    token: str,
    kind: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Authenticate as ``kind`` and read (and drop) everything until cancelled."""
    stream: trio.abc.Stream | None = None
    started = False
    try:
        stream = await _open_stream(target)
        async with trio.open_nursery() as inner:
            ws = await trio_websocket.wrap_client_stream(
                inner, stream, target.host_header, target.resource
            )
            auth = {"type": "auth", "token": token, "client_type": _client_type(kind)}
            await ws.send_message(json.dumps(auth))
            await ws.get_message()
            task_status.started()
            started = True
            while True:
                await ws.get_message()
    except (OSError, trio.BrokenResourceError, trio_websocket.HandshakeError,
            trio_websocket.ConnectionClosed):
        pass  # the checks will report what is wrong with this gateway
    finally:
        if stream is not None:
            await trio.aclose_forcefully(stream)
    if not started:
        task_status.started()


def check_names() -> list[str]:
    """The names of every check, in the order a run performs them."""
    return [check.name for check in _checks()]


# -- building frames ------------------------------------------------------------------------


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _event(type_: str, sender: str, payload: Mapping[str, Any]) -> str:
    """A fresh event text with a unique message_id, as a seed publisher writes it."""
    return json.dumps(
        {
            "version": "1.0",
            "type": type_,
            "timestamp": _now(),
            "message_id": f"conformance-{uuid.uuid4()}",
            "sender": sender,
            "payload": payload,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _message_id(text: str) -> str | None:
    try:
        value = json.loads(text).get("message_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _conversion(owner: int | str, *tier_users: int | str) -> dict[str, Any]:
    return {
        "pay_id": 12345,
        "access_id": 67890,
        "adware_id": 100,
        "adware_name": "商品A",
        "owner_id": owner,
        "owner_name": "アフィリエイターX",
        "cost": 1000,
        "sales": 5000,
        "state": "PENDING",
        "tier_rewards": [
            {"tier_level": i + 1, "user_id": u, "user_name": "親", "rate": 10, "amount": 100}
            for i, u in enumerate(tier_users)
        ],
        "created_at": "2025-10-29T12:34:56Z",
    }


_ADWARE_UPDATE: Final = {"adware_id": 100, "action": "UPDATE", "data": {"money": 1000}}
_BUDGET_UPDATE: Final = {"adware_id": 100, "limit": 200000}


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


# -- decode vectors -----------------------------------------------------------------------

#: What an accepted control message gets once authenticated (§7 ACTIVE), ``None``: nothing.
_CONTROL_REPLY: Final[Mapping[str, tuple[str, str | None] | None]] = {
    "auth": ("error", ErrorCode.ALREADY_AUTHENTICATED),
    "auth_success": ("error", ErrorCode.INVALID_MESSAGE),
    "auth_failed": ("error", ErrorCode.INVALID_MESSAGE),
    "ping": ("pong", None),
    "pong": None,
    "error": None,
    # The conformance login negotiates no extensions, so acks are not granted.
    "ack": ("error", ErrorCode.INVALID_MESSAGE),
    "accepted": ("error", ErrorCode.INVALID_MESSAGE),
}


def _decode_vector_check(vector: DecodeVector, index: int) -> _Check:
    name = f"vector.{vector.name}"
    if vector.error is not None or vector.type in _CONTROL_REPLY:
        # Refusals and control messages do not depend on the client type: spread
        # them over CATS and AFAD, whose buckets are the largest.
        kind = ("CATS", "AFAD")[index % 2]

        async def run_control(ctx: _Ctx) -> None:
            await _replay_decode_vector(ctx, vector, kind)

        return _Check(name, run_control, (kind,))
    publisher, outcome, observer = _event_plan(vector)
    needs = (publisher,)

    async def run_event(ctx: _Ctx) -> None:
        await _replay_event_vector(ctx, vector, publisher, outcome, observer)

    return _Check(name, run_event, needs)


async def _replay_decode_vector(ctx: _Ctx, vector: DecodeVector, kind: str) -> None:
    await ctx.ensure_budget(kind, 2)
    conn = await ctx.login(kind)
    await conn.send(vector.data())
    if vector.error is not None:
        await conn.expect_error(vector.error)
        if vector.close is not None:
            await conn.expect_closed(vector.close)
            return
        await conn.quiet()  # the connection stays open and nothing else came
        return
    assert vector.type is not None
    reply = _CONTROL_REPLY[vector.type]
    if reply is None:
        await conn.quiet()
    elif reply[0] == "error":
        assert reply[1] is not None
        await conn.expect_error(reply[1])
        await conn.quiet()
    else:
        await conn.expect_type(reply[0])


def _event_plan(vector: DecodeVector) -> tuple[str, str | None, str | None]:
    """Who publishes an accepted event vector, the refusal expected (``None``:
    published) and whose type channel observes it (``None``: nobody we have)."""
    assert vector.type is not None
    route = _ROUTES[vector.type]
    sender = json.loads(vector.data()).get("sender")
    if sender in ("CATS", "AFAD", "DASHBOARD"):
        publisher = sender
        outcome = None if sender in route.senders else ErrorCode.EVENT_NOT_ALLOWED
    else:
        publisher = sorted(route.senders)[0]
        outcome = ErrorCode.SENDER_MISMATCH
    observers = [t for t in route.to_types if t in ("CATS", "AFAD", "DASHBOARD")]
    return publisher, outcome, observers[0] if observers else None


async def _replay_event_vector(
    ctx: _Ctx, vector: DecodeVector, publisher: str, outcome: str | None, observer: str | None
) -> None:
    text = _fresh_id(vector.data())
    assert isinstance(text, str)
    watcher = None
    if outcome is None and observer is not None:
        if ctx.has(observer):
            watcher = await ctx.login(observer, "observer")
        else:
            ctx.notes.append(f"delivery not checked (no {observer} token)")
    await ctx.ensure_budget(publisher, 2)
    conn = await ctx.login(publisher, "publisher")
    await conn.send(text)
    if outcome is not None:
        await conn.expect_error(outcome, message_id=_message_id(text))
    await conn.quiet()
    if watcher is not None:
        await watcher.expect_text(text)


# -- session vectors ----------------------------------------------------------------------


def _session_kind(vector: SessionVector) -> str | None:
    if vector.user_id is None:
        return vector.client_type if vector.client_type in TOKEN_KINDS else None
    kind = f"{vector.client_type}@{vector.user_id}"
    return kind if kind in TOKEN_KINDS else None


def _session_check(vector: SessionVector) -> _Check:
    kind = _session_kind(vector)
    name = f"session.{vector.name}"

    async def run(ctx: _Ctx) -> None:
        if kind is None:
            raise _Skip(f"no token kind for a {vector.client_type} bound to {vector.user_id}")
        for step in vector.steps:
            if step.auth == "reject" and step.reject_code != ErrorCode.AUTH_FAILED:
                raise _Skip(
                    f"needs the gateway to answer {step.reject_code}: that depends on runtime "
                    "settings (the per-identity connection limit) the runner cannot know"
                )
        await _replay_session(ctx, vector, kind)

    return _Check(name, run, () if kind is None else (kind,))


_MESSAGE_ID = re.compile(r'("message_id"\s*:\s*")([^"\\]{0,100})(")')


def _fresh_id(frame: str | bytes) -> str | bytes:
    """The frame with a message_id no earlier publish used: gateways may (catsock
    does) deduplicate publishes by message_id, and the vectors share ids."""
    if not isinstance(frame, str):
        return frame
    suffix = f"~{secrets.token_hex(4)}"
    return _MESSAGE_ID.sub(lambda g: g[1] + g[2] + suffix + g[3], frame, count=1)


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
                    expected[channel].append(frame)
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


# -- the list of checks ---------------------------------------------------------------------


def _checks() -> list[_Check]:
    checks = [
        _Check("auth.ok", _auth_ok),
        _Check("auth.failed", _auth_failed),
        _Check("auth.required", _auth_required, ("CATS",)),
        _Check("ping.pong", _ping_pong, ("CATS",)),
        _Check("routing.conversion", _routing_conversion, ("CATS", "AFAD", "DASHBOARD")),
        _Check("routing.afad_to_cats", _routing_afad_to_cats, ("AFAD", "CATS")),
        _Check("routing.dashboard", _routing_dashboard, ("CATS", "DASHBOARD")),
        _Check("routing.user_bound", _routing_user_bound, ("CATS", "DASHBOARD@500")),
        _Check("routing.no_echo", _routing_no_echo, ("CATS", "AFAD")),
        _Check("routing.sender_mismatch", _routing_sender_mismatch, ("AFAD",)),
        _Check("routing.event_not_allowed", _routing_event_not_allowed, ("CATS",)),
        _Check("limits.message_too_large", _message_too_large, ("CATS",)),
    ]
    checks += [_decode_vector_check(v, i) for i, v in enumerate(load_decode_vectors())]
    sessions = load_session_vectors()
    # Vectors that need a full bucket go last, so the others never wait for one to refill.
    checks += [_session_check(v) for v in sessions if not _limits_rate(v)]
    checks += [_session_check(v) for v in sessions if _limits_rate(v)]
    checks.append(_Check("limits.rate", _rate_limit, ("DASHBOARD",)))
    return checks
