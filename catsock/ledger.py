"""The delivery ledger, explained: what happened to one message, for whom, and why.

``explain`` reads the event log, the ledger rows, the cursors, the credentials
and the connection log, and returns plain facts (``Story``) that
``python -m catsock ledger MESSAGE_ID [--recipient NAME]`` prints. It answers
"why did AFAD not get conversion X?" in one command (docs/delivery.md §6).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import attrs
import sqlite_utils

import storage
from protocol import subscriptions_for

from .entries import PRIORITY_NAMES

__all__ = ["Story", "explain", "refusals"]


@attrs.frozen
class Story:
    """The facts about one event: where it came from and what each recipient got."""

    event: dict[str, Any]
    lines: list[str]  # the event's own facts
    recipients: dict[str, list[str]]  # identity -> what happened, in order


def explain(
    db: sqlite_utils.Database,
    message_id: str,
    *,
    recipient: str | None = None,
    durable_types: Collection[str] = ("CATS", "AFAD"),
) -> list[Story]:
    """One story per logged event with ``message_id`` (one per publishing identity)."""
    stories = []
    for event in storage.events_by_message_id(db, message_id):
        channels = event["channels"].split()
        priority = PRIORITY_NAMES.get(event["priority"], str(event["priority"]))
        lines = [
            f"seq {event['seq']}: {event['type']} from {event['sender']}"
            f" ({event['connection_id'] or 'HTTP'}), accepted {storage.iso(event['created_at'])}",
            f"routed to channels: {' '.join(channels) or '(none)'}; priority {priority}",
        ]
        if event["expires_at"] is not None:
            lines.append(f"expires {storage.iso(event['expires_at'])}")
        names = _candidates(db, event, channels, recipient)
        recipients = {
            name: _fate(db, event, channels, name, durable_types) for name in names
        }
        stories.append(Story(event, lines, recipients))
    return stories


def _candidates(
    db: sqlite_utils.Database, event: dict[str, Any], channels: list[str], recipient: str | None
) -> list[str]:
    if recipient is not None:
        return [recipient]
    names = {row["identity"] for row in storage.ledger_rows(db, event["seq"])}
    names |= {row["identity"] for row in storage.recipients_of(db, channels)}
    for credential in storage.list_tokens(db):
        if credential.publish_only:
            continue
        if set(channels) & set(subscriptions_for(credential.client_type, credential.user_id)):
            names.add(credential.name)
    names.discard(event["sender"])
    return sorted(names)


def _fate(
    db: sqlite_utils.Database,
    event: dict[str, Any],
    channels: list[str],
    name: str,
    durable_types: Collection[str],
) -> list[str]:
    seq = event["seq"]
    if name == event["sender"]:
        return [f"{name} published it; nobody receives its own events"]
    credential = next((c for c in storage.list_tokens(db) if c.name == name), None)
    listens: tuple[str, ...] = ()
    if credential is not None and credential.publish_only:
        return [f"{name} is a publish-only token: nothing is delivered to it"]
    if credential is not None:
        listens = subscriptions_for(credential.client_type, credential.user_id)
        if not set(listens) & set(channels):
            return [
                f"not routed to {name}: it listens on {' '.join(listens)}, the event went to "
                f"{' '.join(channels) or 'no channel'}"
            ]
    facts = []
    for row in storage.ledger_rows(db, seq, name):
        when = storage.iso(row["at"])
        kind = row["kind"]
        where = row["connection_id"] or "an unnamed connection"
        if kind == "written":
            facts.append(f"written to {where} at {when}")
        elif kind == "acked":
            facts.append(f"acked on {where} at {when}")
        elif kind == "expired":
            facts.append(f"expired before it could be written ({when}); not delivered")
        elif kind == "dropped":
            facts.append(f"dropped at {when}: {row['detail']}")
    if facts:
        return facts
    durable = credential is not None and credential.client_type in durable_types
    cursors = storage.load_cursors(db, name)
    mine = [cursors[c] for c in listens if c in cursors]
    if durable:
        position = min(mine) if mine else cursors.get(storage.LOG_START)
        if position is not None and position >= seq:
            return [f"delivered: {name}'s cursor ({position}) is past it (no ledger row kept)"]
        where = "not connected yet" if position is None else f"cursor at seq {position}"
        return [f"waiting in the log for {name} ({where}); replayed when it connects"]
    if credential is None:
        return [f"no record for {name}: no such token, and nothing written to it"]
    return [
        f"not written to {name}: it is not durable ({credential.client_type}), so it gets "
        "events only while connected, and this one was written to none of its connections"
    ]


def refusals(db: sqlite_utils.Database, message_id: str) -> list[str]:
    """What the refused-event store says of ``message_id``: each time it was
    refused, why, and what became of a retry (storage/refused.py)."""
    lines = []
    for row in reversed(storage.list_refused(db, message_id=message_id, limit=1000)):
        via = row["connection_id"] or row["transport"]
        line = (
            f"refused {row['at']} from {row['identity']} ({via}): {row['reason']}:"
            f" {row['detail']} (refused event {row['id']})"
        )
        if row["retried_at"] is not None:
            result = row["retry_result"]
            if row["retry_seq"] is not None:
                result += f" as seq {row['retry_seq']}"
            line += f"; retried {row['retried_at']}: {result}"
        lines.append(line)
    return lines
