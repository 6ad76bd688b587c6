"""catsock's SQLite storage: schema, credentials, connection/message logs, the event log.

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
from storage.events import (
    LOG_START,
    EventRow,
    LedgerRow,
    SeqTaken,
    StoredEvent,
    events_by_message_id,
    ledger_rows,
    load_cursors,
    prune_events,
    read_after,
    recipients_of,
)
from storage.events import commit as commit_events
from storage.events import head as log_head
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
from storage.privacy import Forgotten, forget, strip_personal

__all__ = [
    "LOG_START",
    "SCHEMA_VERSION",
    "ConnectionClosed",
    "ConnectionHeartbeat",
    "ConnectionOpened",
    "Credential",
    "CredentialError",
    "EventRow",
    "Forgotten",
    "LedgerRow",
    "LogPolicy",
    "LogRow",
    "MessageLogged",
    "Outbox",
    "OutboxEntry",
    "OutboxError",
    "OutboxStatus",
    "SchemaVersionError",
    "SeqTaken",
    "StoredEvent",
    "close_dangling",
    "commit_events",
    "create_token",
    "data_version",
    "events_by_message_id",
    "forget",
    "generate_token",
    "hash_token",
    "iso",
    "ledger_rows",
    "list_tokens",
    "load_active",
    "load_cursors",
    "log_head",
    "migrate",
    "open_db",
    "probe_writable",
    "prune",
    "prune_events",
    "read_after",
    "recent_connections",
    "recent_messages",
    "recipients_of",
    "redact",
    "revoke_token",
    "strip_personal",
    "verify",
    "write_batch",
]
