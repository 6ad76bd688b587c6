"""Token checks for the gateway, served from memory and kept fresh from SQLite.

The active credentials are held in memory so an auth never waits on the
database. ``PRAGMA data_version`` tells cheaply when another process (the
``token`` CLI) changed the table; then the set is reloaded off the event loop.
Every check (``verify``, ``identify``) first makes sure that any change committed
before it was loaded (``sync``: one cheap ``data_version`` read off the event
loop, shared by concurrent callers), so a token created a moment ago works at
once and a revoked one is refused at once. If the database cannot be read, the
credentials already in memory are used.
"""

from __future__ import annotations

import hmac
import logging
import os
import sqlite3
from collections.abc import Set

import trio

import storage
from protocol import Principal

__all__ = ["Authenticator"]

logger = logging.getLogger("catsock.auth")

#: The seed's shared token was a plain environment value; require some length
#: so a placeholder like "changeme" cannot open the gateway.
MIN_SHARED_TOKEN_LENGTH = 16


class Authenticator:
    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        shared_token: str | None = None,
        shared_client_types: Set[str] = frozenset(),
    ) -> None:
        if shared_token is not None and len(shared_token) < MIN_SHARED_TOKEN_LENGTH:
            raise ValueError(
                f"the shared token must be at least {MIN_SHARED_TOKEN_LENGTH} characters"
            )
        self._db = storage.open_db(db_path)
        self._shared = shared_token
        self._shared_types = shared_client_types
        self._active: dict[str, storage.Credential] = {}
        self._version: int | None = None
        self._lock = trio.Lock()
        # The check that callers arriving now will share: not started yet (its owner
        # waits for the lock); None: the next caller starts one.
        self._next: trio.Event | None = None

    async def refresh(self) -> bool:
        """Reload the credentials if the table may have changed; True if it did.

        Raises ``sqlite3.Error`` if the database cannot be read."""
        async with self._lock:
            return await self._check()

    async def sync(self) -> None:
        """Return once every change committed before this call is loaded. Callers
        that arrive together share one check; a database error is logged (DEBUG)
        and the credentials in memory stay in use."""
        ticket = self._next
        if ticket is not None:
            await ticket.wait()  # a check that starts after we arrived
            return
        # Everyone arriving until this check starts shares it: a storm of logins
        # costs a check or two, not a trip through the lock each (which, one
        # waiter per scheduler round, made 10,000 logins queue behind each other).
        ticket = self._next = trio.Event()
        # Shielded: the callers sharing it must not wait forever for a cancelled
        # owner; the check is one short read (or the database's busy timeout).
        with trio.CancelScope(shield=True):
            async with self._lock:
                self._next = None
                try:
                    await self._check()
                except sqlite3.Error as exc:
                    logger.debug("credential check failed, using the cached set: %s", exc)
                finally:
                    ticket.set()

    async def _check(self) -> bool:
        return await trio.to_thread.run_sync(self._reload)

    def _reload(self) -> bool:
        version = storage.data_version(self._db)
        if version == self._version:
            return False
        self._active = storage.load_active(self._db)
        self._version = version
        return True

    async def verify(self, token: str, client_type: str) -> Principal | None:
        """The principal for a good token whose client type matches, else ``None``."""
        await self.sync()
        credential = storage.verify(self._active, token)
        if credential is not None:
            if credential.client_type != client_type:
                return None
            return Principal(
                credential.name,
                credential.client_type,
                credential.user_id,
                receives=not credential.publish_only,
            )
        if client_type in self._shared_types and self.is_shared(token):
            # The seed granted whatever type the client claimed; so do we, within
            # the known types, under one identity per type.
            return Principal(f"shared:{client_type}", client_type)
        return None

    async def identify(self, token: str, shared_as: str | None = None) -> Principal | None:
        """The principal for a good token, whatever its client type (HTTP requests name
        none: the credential does). The seed's shared token carries no type, so it
        passes only with ``shared_as``, a known client type the caller claims."""
        await self.sync()
        credential = storage.verify(self._active, token)
        if credential is not None:
            return Principal(
                credential.name,
                credential.client_type,
                credential.user_id,
                receives=not credential.publish_only,
            )
        if shared_as is not None and shared_as in self._shared_types and self.is_shared(token):
            return Principal(f"shared:{shared_as}", shared_as)
        return None

    def is_shared(self, token: str) -> bool:
        """Whether ``token`` is the seed's shared token (which names no client type)."""
        return self._shared is not None and hmac.compare_digest(
            token.encode(), self._shared.encode()
        )

    def is_active(self, identity: str) -> bool:
        """Whether ``identity`` still has an unrevoked token (shared ones always do)."""
        if identity.startswith("shared:"):
            return self._shared is not None
        return any(c.name == identity for c in self._active.values())

    def has_tokens(self) -> bool:
        return bool(self._active) or self._shared is not None

    def close(self) -> None:
        self._db.close()
