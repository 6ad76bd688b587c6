"""catsock's SQLite storage: schema, credentials, connection/message logs, the event log.

Plain synchronous code with no trio import: the gateway calls it through trio.to_thread.
"""

from storage.audit import list_audit, write_audit
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
    Pruned,
    SeqTaken,
    StoredEvent,
    events_by_message_id,
    first_seq,
    ledger_rows,
    load_cursors,
    prune_events,
    read_after,
    recipients_of,
)
from storage.events import commit as commit_events
from storage.events import head as log_head
from storage.health import probe_writable
from storage.lag import Behind, LedgerSummary, behind, ledger_summary
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
from storage.recent import Recent, recent_events
from storage.refused import EventRefused, RefusedRetried, get_refused, list_refused

__all__ = [
    "LOG_START",
    "SCHEMA_VERSION",
    "Behind",
    "ConnectionClosed",
    "ConnectionHeartbeat",
    "ConnectionOpened",
    "Credential",
    "CredentialError",
    "EventRefused",
    "EventRow",
    "Forgotten",
    "LedgerRow",
    "LedgerSummary",
    "LogPolicy",
    "LogRow",
    "MessageLogged",
    "Outbox",
    "OutboxEntry",
    "OutboxError",
    "OutboxStatus",
    "Pruned",
    "Recent",
    "RefusedRetried",
    "SchemaVersionError",
    "SeqTaken",
    "StoredEvent",
    "behind",
    "close_dangling",
    "commit_events",
    "create_token",
    "data_version",
    "events_by_message_id",
    "first_seq",
    "forget",
    "generate_token",
    "get_refused",
    "hash_token",
    "iso",
    "ledger_rows",
    "ledger_summary",
    "list_audit",
    "list_refused",
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
    "recent_events",
    "recent_messages",
    "recipients_of",
    "redact",
    "revoke_token",
    "strip_personal",
    "verify",
    "write_audit",
    "write_batch",
]
