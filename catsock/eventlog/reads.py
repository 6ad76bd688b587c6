"""Reads of cluster mode's shared log for the console and the CLI (catsock/views.py).

Never on delivery's path: ``GET /api/history``'s window (``recent``), the
ledger's explanation of one message_id (``events_by_message_id``,
``ledger_since``, ``cursors_all``) and the recipients' lag (``behind``,
``ledger_newest``). Each is the Redis counterpart of a query the embedded
views run on the SQLite file (named in its docstring), bounded the same way,
over the stream and the events moved out of it (catsock/eventlog/moved.py).
``RedisEventLog`` exposes them as methods (``SharedEventLog``); each read goes
through its ``guarded`` so it waits for, or fails on, an outage as the log does.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import storage

from . import moved
from .packing import seq_of, unpack

if TYPE_CHECKING:
    from .redis import RedisEventLog

__all__ = [
    "behind", "cursors_all", "events_by_message_id", "ledger_newest", "ledger_since",
    "recent",
]  # fmt: skip

#: Entries one XRANGE or XREVRANGE of these reads returns at most.
PAGE = 1000


async def recent(
    log: RedisEventLog, channels: Collection[str], since: float, limit: int, scan: int
) -> tuple[list[storage.Recent], bool]:
    """As ``storage.recent_events``: the stream newest first by seq."""
    wanted = set(channels)
    found: list[storage.Recent] = []
    top: int | None = None
    looked = 0
    while looked < scan:
        entries = await log.guarded(
            functools.partial(moved.backward, log, top, None, min(PAGE, scan - looked))
        )
        if not entries:
            return found[::-1], False
        for entry in entries:
            looked += 1
            kind, channels_text, _, _, _, created_at, body = unpack(entry.field_values["e"])
            if created_at < since:
                return found[::-1], False
            if wanted.intersection(channels_text.split()):
                found.append(storage.Recent(seq_of(entry.identifier), created_at, kind, body))
                if len(found) >= limit:
                    return found[::-1], True
        top = seq_of(entries[-1].identifier) - 1
    return found[::-1], True


async def events_by_message_id(log: RedisEventLog, message_id: str) -> list[storage.EventRow]:
    """As ``storage.events_by_message_id``, found through the dedup index: only
    events younger than ``delivery.retention_days`` (the index's expiry)."""
    pattern = log.key("dedup:") + "*\n" + _glob_escape(message_id)
    keys = await log.guarded(functools.partial(_scan, log, pattern))
    rows = []
    for key in keys:
        stored = await log.guarded(functools.partial(log.client.get, key))
        if not stored:
            continue
        seq = int(stored.partition(" ")[0])
        entries = await log.guarded(functools.partial(moved.forward, log, seq, seq, 1))
        rows += [_event_row(entry) for entry in entries]
    return sorted(rows, key=lambda r: r.seq)


async def ledger_since(log: RedisEventLog, at: float, cap: int) -> list[storage.LedgerRow]:
    """Ledger rows stored from about ``at`` (unix time; a minute earlier, for
    nodes' clocks that differ) on, at most ``cap``, oldest first (for
    ``storage.ledger_rows``)."""
    start = f"{max(int((at - 60) * 1000), 0)}-0"
    rows: list[storage.LedgerRow] = []
    while len(rows) < cap:
        entries = await log.guarded(
            functools.partial(
                log.client.xrange, log.key("ledger"), start, "+", count=min(PAGE, cap - len(rows))
            )
        )
        if not entries:
            break
        rows += [_ledger_row(entry) for entry in entries]
        start = f"({entries[-1].identifier}"
    return rows


async def ledger_newest(log: RedisEventLog, count: int) -> list[storage.LedgerRow]:
    """The newest ``count`` ledger rows of the cluster, oldest first (for
    ``storage.ledger_summary``)."""
    entries = await log.guarded(
        functools.partial(log.client.xrevrange, log.key("ledger"), "+", "-", count=count)
    )
    return [_ledger_row(entry) for entry in reversed(entries)]


async def cursors_all(log: RedisEventLog) -> dict[str, dict[str, int]]:
    """Every identity's cursors, ``{identity: {channel: seq}}``."""
    prefix = log.key("cursors:")
    keys = await log.guarded(functools.partial(_scan, log, prefix + "*"))
    return {key[len(prefix) :]: await log.load_cursors(key[len(prefix) :]) for key in keys}


async def behind(
    log: RedisEventLog, positions: Mapping[str, int], exclude_sender: str, cap: int, scan: int
) -> storage.Behind:
    """As ``storage.behind``, looking at no more than ``scan`` entries after the
    lowest position (past that the count is "at least": capped)."""
    if not positions:
        return storage.Behind(0, None, False)
    after, count, oldest, looked = min(positions.values()), 0, None, 0
    while looked < scan:
        entries = await log.guarded(
            functools.partial(moved.forward, log, after + 1, None, min(PAGE, scan - looked))
        )
        if not entries:
            return storage.Behind(count, oldest, False)
        for entry in entries:
            looked += 1
            f, seq = entry.field_values, seq_of(entry.identifier)
            _, channels, _, _, _, created_at, _ = unpack(f["e"])
            if f["s"] != exclude_sender and any(
                seq > positions.get(c, seq) for c in channels.split()
            ):
                count += 1
                oldest = created_at if oldest is None else oldest
                if count > cap:
                    return storage.Behind(cap, oldest, True)
        after = seq_of(entries[-1].identifier)
    return storage.Behind(count, oldest, True)


async def _scan(log: RedisEventLog, pattern: str) -> list[str]:
    return [key async for key in log.client.scan_iter(match=pattern, count=1000)]


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _event_row(entry: Any) -> storage.EventRow:
    f = entry.field_values
    kind, channels, priority, expires, connection, created, body = unpack(f["e"])
    return storage.EventRow(
        seq_of(entry.identifier), f["m"], f["s"], connection or None, kind,
        tuple(channels.split()), priority, created, float(expires) if expires else None, body,
    )  # fmt: skip


def _ledger_row(entry: Any) -> storage.LedgerRow:
    f = entry.field_values
    return storage.LedgerRow(
        f["i"], f["k"], int(f["f"]), int(f["l"]), f["n"] or None, float(f["a"]), f["d"] or None
    )
