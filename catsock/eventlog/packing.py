"""How cluster mode stores an event in the Redis stream (catsock/eventlog/redis.py).

An entry has three fields: ``s`` the sender, ``m`` the message_id, and ``e``
everything else packed into one string. coredis parses every field of a reply in
Python, so one string to send, store and parse instead of eight was most of
what reading the log back cost per event. The entry's ID is ``<seq>-0``.
"""

from __future__ import annotations

import storage

__all__ = ["pack", "seq_of", "unpack"]

#: Separates the packed fields. The body, last, is a valid JSON text, which never
#: holds the character raw; the others are the gateway's own words and numbers.
SEP = "\x1f"


def pack(e: storage.EventRow) -> str:
    """The ``e`` field of ``e``: type, channels, priority, expiry, connection,
    creation time, body."""
    expires = "" if e.expires_at is None else repr(e.expires_at)
    return SEP.join((
        e.type, " ".join(e.channels), str(e.priority), expires,
        e.connection_id or "", repr(e.created_at), e.body,
    ))  # fmt: skip


def unpack(packed: str) -> tuple[str, str, int, str, str, float, str]:
    """``pack`` undone: type, channels, priority, expires, connection, created, body."""
    kind, channels, priority, expires, connection, created, body = packed.split(SEP, 6)
    return kind, channels, int(priority), expires, connection, float(created), body


def seq_of(identifier: object) -> int:
    """The seq of a stream entry ID (``<seq>-0``)."""
    return int(str(identifier).split("-", 1)[0])
