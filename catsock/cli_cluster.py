"""The CLI against a cluster's Redis (``cluster.redis`` set): ``refused``,
``ledger`` and ``config`` read the store every node shares, not the node's file;
``forget`` redacts it as well as the node's file.

``on_redis`` opens the cluster's log for one command, with reads that fail
rather than wait, and turns an unreachable Redis into a one-line error (exit 1),
never a traceback or a command that hangs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import click
import trio

from .config import Config, redacted_url
from .eventlog import ClientMissing, LogUnavailable, cluster_log

if TYPE_CHECKING:
    from .eventlog.privacy import ForgottenShared
    from .eventlog.redis import RedisEventLog

__all__ = ["forget_in_redis", "on_redis", "reachable", "where"]

T = TypeVar("T")


def _log(config: Config) -> RedisEventLog:
    try:
        return cluster_log(config, patient=False)
    except ClientMissing as exc:
        raise click.ClickException(str(exc)) from None


def on_redis(config: Config, func: Callable[[RedisEventLog], Awaitable[T]]) -> T:
    """``func(log)`` with the cluster's log open; exits 1 with a clear message if
    Redis does not answer."""
    log = _log(config)

    async def run() -> T:
        problem = await log.probe()
        if problem is not None:
            raise LogUnavailable(problem)
        async with log.open():
            return await func(log)

    try:
        return trio.run(run)
    except BaseException as exc:
        unreachable = _unreachable(exc)
        if unreachable is None:
            raise
        raise click.ClickException(f"cluster.redis: {unreachable}") from None


def forget_in_redis(
    config: Config, fields: Sequence[tuple[str, str]], user_id: str | None
) -> ForgottenShared:
    """``forget`` in the cluster's Redis: its log and its refused events."""
    from storage.privacy import Erasure

    from .eventlog.privacy import ForgetIncomplete, forget
    from .eventlog.redis import CALL_ERRORS

    erasure = Erasure.of(config.redact_fields(), fields, user_id)

    async def run(log: RedisEventLog) -> ForgottenShared:
        try:
            return await forget(log, erasure)
        except CALL_ERRORS as exc:
            # Part-way: what was redacted stays so; a second run does the rest.
            raise LogUnavailable(
                f"cannot reach Redis at {log.where}: {exc or type(exc).__name__}"
                " (the node's file is done; run forget again when Redis answers)"
            ) from None

    try:
        return on_redis(config, run)
    except ForgetIncomplete as exc:
        raise click.ClickException(f"cluster.redis: {exc}") from None


def reachable(config: Config) -> str | None:
    """Why the cluster's Redis cannot be reached (None: it answers)."""
    return trio.run(_log(config).probe)


def where(config: Config) -> str:
    """The cluster's Redis, printable (no password)."""
    return redacted_url(config.cluster.redis)


def _unreachable(exc: BaseException) -> str | None:
    """The message of a ``LogUnavailable`` in ``exc`` (the Redis client's task
    group may wrap it), else None."""
    if isinstance(exc, LogUnavailable):
        return str(exc)
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _unreachable(inner)
            if found is not None:
                return found
    return None
