"""The suite: which checks a run performs (``plan``: the profiles' checks, in
the registry's order), how long it may take (``estimate``), and the entry
points ``run_conformance`` and ``check_names``."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Final

import attrs
import trio
import trio_websocket

from .conn import _leaves, _open_stream, _parse_url, _Target
from .profiles import DEFAULT_PROFILES, PROFILES
from .results import CheckResult, GatewayUnreachable
from .runner import _Check, _Runner
from .server import ServerControl, ServerFailed
from .tokens import TOKEN_KINDS, JwtTarget, TargetLimits, _client_type


async def run_conformance(
    url: str,
    tokens: Mapping[str, str],
    *,
    profiles: Sequence[str] = DEFAULT_PROFILES,
    timeout: float | None = None,  # noqa: ASYNC109 - per check, not for the whole run
    ssl_context: ssl.SSLContext | None = None,
    only: Sequence[str] = (),
    limits: TargetLimits | None = None,
    server: ServerControl | None = None,
    jwt: JwtTarget | None = None,
    wall_clock: Callable[[], float] = time.time,
    on_start: Callable[[], None] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run the checks of ``profiles`` against the gateway at ``url``; one result each,
    in the order of ``plan``. ``on_start`` is called once the gateway answered a
    handshake, ``on_result`` with each result as it is known.

    ``tokens`` maps token kinds (``TOKEN_KINDS``) to tokens. ``timeout`` is the
    time each check may take (default: its profile's). ``only`` keeps the checks
    whose name starts with one of its prefixes. ``limits`` are the target's
    configured limits (default: catsock's). ``server`` starts the target first,
    and lets the ``faults`` profile kill and restart it; it is stopped at the end.
    ``ssl_context`` is used for ``wss://`` (default: the system's trust store).
    ``jwt`` lets the expiry checks mint tokens (skipped without it); ``wall_clock``
    is the Unix time they compare the target's expiries with.
    Raises ``ValueError`` for a bad URL, profile or token kind,
    ``GatewayUnreachable`` if no WebSocket handshake succeeds (or ``server``
    does not start).
    """
    unknown = sorted(set(tokens) - set(TOKEN_KINDS))
    if unknown:
        raise ValueError(f"unknown token kind {unknown[0]!r}; use {', '.join(TOKEN_KINDS)}")
    if timeout is not None and not timeout > 0:
        raise ValueError("timeout must be positive")
    planned = plan(profiles, only)
    runner = _Runner(
        _parse_url(url, ssl_context), tokens, timeout or 5.0, limits, server, jwt, wall_clock
    )
    try:
        if server is not None:
            try:
                await server.start()
            except ServerFailed as exc:
                raise GatewayUnreachable(f"--server-cmd: {exc}") from None
        await runner.preflight()
        if on_start is not None:
            on_start()
        results: list[CheckResult] = []
        async with trio.open_nursery() as keepers:
            # A durable gateway (catsock) replays what an identity missed while it had
            # no connection. One connection per system identity, open for the whole run,
            # keeps every check's connections live instead (docs/delivery.md §2).
            async with trio.open_nursery() as starting:  # both at once
                for kind in _KEPT_ONLINE:
                    if kind in tokens:
                        keep = partial(_keep_online, runner.target, tokens[kind], kind)
                        starting.start_soon(keepers.start, keep, _KEEPER_PATIENCE)
            for item in planned:
                runner.timeout = timeout or PROFILES[item.profile].timeout
                result = await runner.run(item.check, item.profile)
                results.append(result)
                if on_result is not None:
                    on_result(result)
            keepers.cancel_scope.cancel()
    finally:
        if server is not None:
            await server.stop()
    return results


@attrs.frozen
class Planned:
    """One check of a run: its profile, and how long it may take (``timeout``
    plus ``waits``, the time it spends on purpose)."""

    profile: str
    check: _Check

    @property
    def name(self) -> str:
        return self.check.name

    def longest(self, timeout: float | None) -> float:
        return (timeout or PROFILES[self.profile].timeout) + self.check.waits


def plan(profiles: Sequence[str] = DEFAULT_PROFILES, only: Sequence[str] = ()) -> list[Planned]:
    """The checks a run of ``profiles`` performs, in order (``ValueError`` for an
    unknown profile). ``only`` keeps the names starting with one of its prefixes."""
    bad = [p for p in profiles if p not in PROFILES]
    if bad:
        raise ValueError(f"unknown profile {bad[0]!r}; use {', '.join(PROFILES)}")
    wanted = [name for name in PROFILES if name in profiles]  # the registry's order
    return [
        Planned(name, check)
        for name in wanted
        for check in PROFILES[name].checks()
        if not only or check.name.startswith(tuple(only))
    ]


def estimate(planned: Sequence[Planned], timeout: float | None = None) -> float:
    """The longest a run of ``planned`` can take, in seconds: every check at its
    timeout (or ``timeout``) plus its own waits. A passing run takes far less."""
    return sum(item.longest(timeout) for item in planned)


#: Seconds the run waits for a kept connection's auth_success before it goes on.
_KEEPER_PATIENCE: Final = 1.0
#: How a kept connection may end without ending the run.
_KEEPER_ENDS: Final = (
    OSError,
    trio.BrokenResourceError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
)
#: Token kinds whose identities the runner keeps online (catsock's durable defaults).
_KEPT_ONLINE: Final = ("CATS", "AFAD")


async def _keep_online(
    target: _Target,
    token: str,
    kind: str,
    patience: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Authenticate as ``kind`` and read (and drop) everything until cancelled;
    started once ``auth`` was answered, or ``patience`` seconds passed."""
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
            # A gateway that never answers must not hold up the run: its checks fail.
            with trio.move_on_after(patience):
                await ws.get_message()
            task_status.started()
            started = True
            while True:
                await ws.get_message()
    except Exception as exc:
        # The checks will report what is wrong with this gateway (or it was killed).
        if not all(isinstance(leaf, _KEEPER_ENDS) for leaf in _leaves(exc)):
            raise
    finally:
        if stream is not None:
            await trio.aclose_forcefully(stream)
    if not started:
        task_status.started()


def check_names(profiles: Sequence[str] = DEFAULT_PROFILES) -> list[str]:
    """The names of every check of ``profiles``, in the order a run performs them."""
    return [item.name for item in plan(profiles)]
