"""catsock's SQLite storage: schema, credentials, and connection/message logs.

Plain synchronous code with no trio import: the gateway calls it through trio.to_thread.
"""

from storage.credentials import (
    Credential,
    CredentialError,
    create_token,
    data_version,
    generate_token,
    hash_token,
    list_tokens,
    load_active,
    revoke_token,
    verify,
)
from storage.db import SCHEMA_VERSION, SchemaVersionError, iso, migrate, open_db
from storage.health import probe_writable
from storage.logs import (
    ConnectionClosed,
    ConnectionHeartbeat,
    ConnectionOpened,
    LogPolicy,
    LogRow,
    MessageLogged,
    close_dangling,
    prune,
    recent_connections,
    recent_messages,
    redact,
    write_batch,
)
from storage.outbox import Outbox, OutboxEntry, OutboxError, OutboxStatus

__all__ = [
    "SCHEMA_VERSION",
    "ConnectionClosed",
    "ConnectionHeartbeat",
    "ConnectionOpened",
    "Credential",
    "CredentialError",
    "LogPolicy",
    "LogRow",
    "MessageLogged",
    "Outbox",
    "OutboxEntry",
    "OutboxError",
    "OutboxStatus",
    "SchemaVersionError",
    "close_dangling",
    "create_token",
    "data_version",
    "generate_token",
    "hash_token",
    "iso",
    "list_tokens",
    "load_active",
    "migrate",
    "open_db",
    "probe_writable",
    "prune",
    "recent_connections",
    "recent_messages",
    "redact",
    "revoke_token",
    "verify",
    "write_batch",
]
