"""The suite: which checks a run performs, in which order, and the entry points
``run_conformance`` and ``check_names``."""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping, Sequence
from typing import Final

import trio
import trio_websocket

from protocol.conformance import load_decode_vectors, load_session_vectors

from .conn import _open_stream, _parse_url, _Target
from .decode_vectors import _decode_vector_check
from .fixed import (
    _auth_failed,
    _auth_ok,
    _auth_required,
    _message_too_large,
    _ping_pong,
    _rate_limit,
    _routing_afad_to_cats,
    _routing_conversion,
    _routing_dashboard,
    _routing_event_not_allowed,
    _routing_no_echo,
    _routing_sender_mismatch,
    _routing_user_bound,
)
from .results import CheckResult
from .runner import _Check, _Runner
from .session_vectors import _limits_rate, _session_check
from .tokens import TOKEN_KINDS, _client_type


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
    except (
        OSError,
        trio.BrokenResourceError,
        trio_websocket.HandshakeError,
        trio_websocket.ConnectionClosed,
    ):
        pass  # the checks will report what is wrong with this gateway
    finally:
        if stream is not None:
            await trio.aclose_forcefully(stream)
    if not started:
        task_status.started()


def check_names() -> list[str]:
    """The names of every check, in the order a run performs them."""
    return [check.name for check in _checks()]


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
