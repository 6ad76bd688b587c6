"""Client credentials: named bearer tokens, stored only as hashes, and the JWT deny-list.

The CLI creates and revokes tokens (an opaque token may carry an expiry) and
revokes JWTs by ``jti``; the gateway loads the active set and the deny-list and
verifies clients.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from collections.abc import Mapping

import attrs
import sqlite_utils

from storage.db import iso

__all__ = [
    "Credential",
    "CredentialError",
    "check_jti",
    "create_token",
    "credentials_version",
    "data_version",
    "generate_token",
    "hash_token",
    "list_revoked_jtis",
    "list_tokens",
    "load_active",
    "load_revoked_jtis",
    "new_credential",
    "revoke_jti",
    "revoke_token",
    "verify",
]

TOKEN_PREFIX = "cs_"
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CLIENT_TYPE_RE = re.compile(r"[A-Z][A-Z0-9_]{0,31}")
_COLUMNS = (
    "name, client_type, user_id, token_hash, created_at, revoked_at, publish_only, expires_at"
)
#: Longest ``jti`` the deny-list takes (the gateway refuses longer ones anyway).
MAX_JTI_LENGTH = 256


@attrs.frozen
class Credential:
    """One row of the credentials table."""

    name: str
    client_type: str
    user_id: str | None
    token_hash: str
    created_at: str
    revoked_at: str | None
    #: Publishes only: joins no channel, so nothing is delivered or replayed to it.
    publish_only: bool = False
    #: Unix time from which the token no longer authenticates (None: never); a
    #: connection it opened is closed then unless the client refreshes.
    expires_at: float | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class CredentialError(Exception):
    """A credential could not be created: bad name or client type, or the name is taken."""


def generate_token() -> str:
    """Return a new random token; the prefix makes leaked tokens easy to grep for."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Return the hex SHA-256 of `token`, the only form in which tokens are stored."""
    # A fast unsalted hash is right here: tokens carry 256 random bits, so there is nothing
    # to brute-force or look up in a table, and verification runs on every connection.
    # surrogatepass: a client can send any str; hashing it must not raise.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _row_to_credential(
    row: tuple[str, str, str | None, str, str, str | None, int, float | None],
) -> Credential:
    return Credential(*row[:6], publish_only=bool(row[6]), expires_at=row[7])


def new_credential(
    *,
    name: str,
    client_type: str,
    user_id: str | None = None,
    publish_only: bool = False,
    expires_in: float | None = None,
    now: float | None = None,
) -> tuple[str, Credential]:
    """A new plain token and the row that stores it (hashed), checked but not stored:
    ``create_token`` stores it in SQLite, cluster mode in Redis
    (catsock/eventlog/credentials.py). Raises ``CredentialError`` for bad input."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise CredentialError(f"invalid credential name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    if not isinstance(client_type, str) or not _CLIENT_TYPE_RE.fullmatch(client_type):
        raise CredentialError(
            f"invalid client type {client_type!r}: use A-Z, 0-9 and _, starting with a letter,"
            " at most 32 characters"
        )
    if expires_in is not None and not (0 < expires_in < float("inf")):
        raise CredentialError(f"invalid expiry {expires_in!r}: use a positive number of seconds")
    token = generate_token()
    at = time.time() if now is None else now
    expires_at = None if expires_in is None else at + expires_in
    row = Credential(
        name, client_type, user_id, hash_token(token), iso(at), None, publish_only, expires_at
    )
    return token, row


def create_token(
    db: sqlite_utils.Database,
    *,
    name: str,
    client_type: str,
    user_id: str | None = None,
    publish_only: bool = False,
    expires_in: float | None = None,
    now: float | None = None,
) -> str:
    """Create a credential and return its plain token; this is the only time it exists.
    ``expires_in`` (seconds, positive): the token stops working that long after now."""
    token, row = new_credential(
        name=name,
        client_type=client_type,
        user_id=user_id,
        publish_only=publish_only,
        expires_in=expires_in,
        now=now,
    )
    try:
        with db.atomic():
            db.conn.execute(
                f"INSERT INTO credentials ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
                (
                    row.name,
                    row.client_type,
                    row.user_id,
                    row.token_hash,
                    row.created_at,
                    int(row.publish_only),
                    row.expires_at,
                ),
            )
            # A durable identity is kept every event from now on, even before it
            # first connects (storage/events.py, LOG_START).
            db.conn.execute(
                "INSERT OR REPLACE INTO cursors (identity, channel, seq, updated_at)"
                " SELECT ?, '*', COALESCE(MAX(seq), 0), ? FROM events",
                (name, time.time() if now is None else now),
            )
    except sqlite3.IntegrityError as exc:
        # Names are never reused, even once revoked, so logs keep meaning one client.
        raise CredentialError(f"a credential named {name!r} already exists") from exc
    return token


def list_tokens(db: sqlite_utils.Database) -> list[Credential]:
    """Return every credential, revoked ones included, oldest first."""
    rows = db.conn.execute(f"SELECT {_COLUMNS} FROM credentials ORDER BY created_at, name")
    return [_row_to_credential(row) for row in rows]


def revoke_token(db: sqlite_utils.Database, name: str, now: float | None = None) -> bool:
    """Revoke the credential `name`; False if there is no such active credential."""
    revoked_at = iso(time.time() if now is None else now)
    with db.atomic():
        cursor = db.conn.execute(
            "UPDATE credentials SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
            (revoked_at, name),
        )
    return cursor.rowcount == 1


def revoke_jti(db: sqlite_utils.Database, jti: str, now: float | None = None) -> bool:
    """Put a JWT's ``jti`` on the deny-list; False if it is there already."""
    check_jti(jti)
    revoked_at = iso(time.time() if now is None else now)
    with db.atomic():
        cursor = db.conn.execute(
            "INSERT OR IGNORE INTO revoked_jtis (jti, revoked_at) VALUES (?, ?)",
            (jti, revoked_at),
        )
    return cursor.rowcount == 1


def check_jti(jti: str) -> None:
    """Raise ``CredentialError`` unless ``jti`` can go on the deny-list."""
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
        raise CredentialError(f"invalid jti: use 1-{MAX_JTI_LENGTH} characters")


def list_revoked_jtis(db: sqlite_utils.Database) -> dict[str, str]:
    """The deny-list with when each ``jti`` went on it."""
    return dict(db.conn.execute("SELECT jti, revoked_at FROM revoked_jtis ORDER BY revoked_at"))


def load_revoked_jtis(db: sqlite_utils.Database) -> frozenset[str]:
    """Every ``jti`` on the deny-list."""
    return frozenset(row[0] for row in db.conn.execute("SELECT jti FROM revoked_jtis"))


def load_active(db: sqlite_utils.Database) -> dict[str, Credential]:
    """Return the unrevoked credentials keyed by token hash, ready for `verify`."""
    rows = db.conn.execute(f"SELECT {_COLUMNS} FROM credentials WHERE revoked_at IS NULL")
    return {cred.token_hash: cred for cred in map(_row_to_credential, rows)}


def verify(active: Mapping[str, Credential], token: str) -> Credential | None:
    """Return the active credential for `token`, or None if it does not authenticate."""
    if not isinstance(token, str) or not token:
        return None
    token_hash = hash_token(token)
    cred = active.get(token_hash)
    if cred is None or cred.revoked_at is not None:
        return None
    # The dict lookup is keyed by a hash, which leaks nothing usable about the token; the
    # constant-time compare is defence in depth should the mapping ever be keyed otherwise.
    if not hmac.compare_digest(cred.token_hash, token_hash):
        return None
    return cred


def data_version(db: sqlite_utils.Database) -> int:
    """Return SQLite's data_version: it changes when another connection commits a change."""
    # Cheap enough to poll: the gateway reloads credentials only when this number moves.
    row = db.conn.execute("PRAGMA data_version").fetchone()
    return int(row[0])


def credentials_version(db: sqlite_utils.Database) -> int:
    """A number that changes with every change to the tokens or the jti deny-list
    (triggers keep it; storage/db.py migration 9), and with nothing else."""
    row = db.conn.execute("SELECT version FROM credentials_version WHERE id = 1").fetchone()
    return 0 if row is None else int(row[0])
