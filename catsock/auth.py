"""Token checks for the gateway, served from memory and kept fresh from their store.

The active credentials are held in memory so an auth never waits on the
database. They come from a ``Credentials`` source: embedded, the SQLite file
(``SqliteCredentials``); in cluster mode, Redis (catsock/eventlog/credentials.py).

SQLite: ``PRAGMA data_version`` tells cheaply when another process (the
``token`` CLI) changed the table; then the set is reloaded off the event loop.
Every check (``verify``, ``identify``) first makes sure that any change committed
before it was loaded (``sync``: one cheap ``data_version`` read off the event
loop, shared by concurrent callers), so a token created a moment ago works at
once and a revoked one is refused at once.

Cluster mode (a ``followed`` source): the gateway's watcher reloads the set when
the store's version moved (every ``CLUSTER_CREDENTIAL_REFRESH``, catsock/server.py),
so a check costs no round trip to Redis; only a token not in memory makes the
check look again first (a token created a moment ago works at once).

If the store cannot be read (``CREDENTIALS_UNAVAILABLE``), the credentials
already in memory are used.

With ``[jwt]`` configured (``jwt``: a ``JwtVerifier``), a token shaped like a JWT
is checked as one (catsock/jwtauth.py) and its ``jti`` against the deny-list
loaded with the credentials; any other token is looked up as an opaque token.
``check`` says why a token was refused (``AuthRefusal``); ``verify`` and
``identify`` are its two uses, the WebSocket ``auth`` (a client type claimed)
and the HTTP Bearer (the credential names the type).
"""

from __future__ import annotations

import hmac
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Set
from typing import Protocol

import attrs
import trio

import storage
from protocol import Principal

from .jwtauth import MAX_TOKEN_LENGTH, JwtRefusal, JwtVerifier, looks_like_jwt

__all__ = [
    "CREDENTIALS_UNAVAILABLE",
    "AuthRefusal",
    "Authenticator",
    "Credentials",
    "CredentialsUnavailable",
    "SqliteCredentials",
]

logger = logging.getLogger("catsock.auth")

#: The seed's shared token was a plain environment value; require some length
#: so a placeholder like "changeme" cannot open the gateway.
MIN_SHARED_TOKEN_LENGTH = 16


@attrs.frozen
class AuthRefusal:
    """Why a token does not authenticate, for the client's ``error_message`` (never
    the token). ``expired``: the credential was good, its time has passed."""

    detail: str = "invalid authentication token"
    expired: bool = False


_INVALID = AuthRefusal()


class CredentialsUnavailable(Exception):
    """The credential store cannot be read now (cluster mode: Redis does not answer)."""


#: What a source raises when it cannot be read; the credentials in memory stay in use.
CREDENTIALS_UNAVAILABLE = (sqlite3.Error, CredentialsUnavailable)

#: The active credentials by token hash, and the JWT deny-list.
Loaded = tuple[dict[str, storage.Credential], frozenset[str]]


class Credentials(Protocol):
    """Where the Authenticator's credentials come from."""

    #: True: the gateway's watcher keeps the set current, so a check does not look
    #: for changes first (only for a token it does not know).
    followed: bool

    def unchanged(self) -> bool:
        """Cheap, on the event loop: nothing changed since the last ``reload``."""

    async def reload(self) -> Loaded | None:
        """The set, if it may have changed since the last call (else None).
        Raises one of ``CREDENTIALS_UNAVAILABLE``."""

    def close(self) -> None: ...


class SqliteCredentials:
    """The embedded source: the ``credentials`` and ``revoked_jtis`` tables."""

    followed = False

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self._db = storage.open_db(db_path)
        self._version: int | None = None
        self._tokens_version: int | None = None

    def unchanged(self) -> bool:
        """Nothing was committed since the last load: ``PRAGMA data_version``, read on
        the event loop. It is a look at the WAL index in shared memory, microseconds
        and no lock to wait for; a login then needs no worker thread (the round trip
        was most of an auth's cost in a connection storm, issue 10). The gateway's
        own log writers move it with every commit, so when it moved, the tokens'
        own counter (one row, read on the loop too) says whether they did. Only
        while no reload is using the connection."""
        try:
            version = storage.data_version(self._db)
            if version == self._version:
                return True
            if storage.credentials_version(self._db) != self._tokens_version:
                return False
            self._version = version
            return True
        except sqlite3.Error:
            return False

    async def reload(self) -> Loaded | None:
        return await trio.to_thread.run_sync(self._reload)

    def _reload(self) -> Loaded | None:
        version = storage.data_version(self._db)
        if version == self._version:
            return None
        with self._db.atomic():  # one snapshot of both tables and their counter
            tokens_version = storage.credentials_version(self._db)
            if tokens_version == self._tokens_version:
                self._version = version
                return None
            active = storage.load_active(self._db)
            revoked = storage.load_revoked_jtis(self._db)
        self._version, self._tokens_version = version, tokens_version
        return active, revoked

    def close(self) -> None:
        self._db.close()


class Authenticator:
    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        shared_token: str | None = None,
        shared_client_types: Set[str] = frozenset(),
        jwt: JwtVerifier | None = None,
        wall_clock: Callable[[], float] = time.time,
        source: Credentials | None = None,
    ) -> None:
        """``source``: where the credentials come from (default: the SQLite file
        ``db_path``)."""
        if shared_token is not None and len(shared_token) < MIN_SHARED_TOKEN_LENGTH:
            raise ValueError(
                f"the shared token must be at least {MIN_SHARED_TOKEN_LENGTH} characters"
            )
        self._source = source if source is not None else SqliteCredentials(db_path)
        self._failing = False
        self._shared = shared_token
        self._shared_types = shared_client_types
        self.jwt = jwt
        self.wall_clock = wall_clock
        self._active: dict[str, storage.Credential] = {}
        self._revoked_jtis: frozenset[str] = frozenset()
        self._lock = trio.Lock()
        # The check that callers arriving now will share: not started yet (its owner
        # waits for the lock); None: the next caller starts one.
        self._next: trio.Event | None = None

    async def refresh(self) -> bool:
        """Reload the credentials if the store may have changed; True if it did.

        Raises one of ``CREDENTIALS_UNAVAILABLE`` if the store cannot be read."""
        async with self._lock:
            return await self._check()

    async def sync(self, *, fresh: bool = False) -> None:
        """Return once every change committed before this call is loaded (a
        ``followed`` source: at once, unless ``fresh``). Callers that arrive
        together share one check; a store error is logged (DEBUG) and the
        credentials in memory stay in use."""
        if not fresh and (
            self._source.followed
            or (self._next is None and not self._lock.locked() and self._source.unchanged())
        ):
            return
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
                except CREDENTIALS_UNAVAILABLE as exc:
                    logger.debug("credential check failed, using the cached set: %s", exc)
                finally:
                    ticket.set()

    async def _check(self) -> bool:
        try:
            loaded = await self._source.reload()
        except CREDENTIALS_UNAVAILABLE:
            self._failing = True
            raise
        self._failing = False
        if loaded is None:
            return False
        self._active, self._revoked_jtis = loaded
        return True

    async def check(
        self, token: str, client_type: str | None, shared_as: str | None = None
    ) -> Principal | AuthRefusal:
        """The principal for a good token, or why it is refused.

        ``client_type``: the type the client claims (WebSocket ``auth``); the
        credential's must equal it. ``None`` (HTTP): the credential names the type.
        The seed's shared token names none, so it passes only for the claimed
        ``client_type``, or over HTTP ``shared_as``, if that is a known type."""
        await self.sync()
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            return _INVALID
        if self.jwt is not None and looks_like_jwt(token):
            return self._check_jwt(self.jwt, token, client_type)
        credential = storage.verify(self._active, token)
        if (
            credential is None
            and self._source.followed
            and not self._failing
            and not self.is_shared(token)
        ):
            # Perhaps created on another node a moment ago: look once (an outage
            # skips this, so unknown tokens cannot make logins wait on Redis).
            await self.sync(fresh=True)
            credential = storage.verify(self._active, token)
        if credential is not None:
            if client_type is not None and credential.client_type != client_type:
                return _INVALID
            if credential.expired(self.wall_clock()):
                return AuthRefusal("token expired", expired=True)
            return Principal(
                credential.name,
                credential.client_type,
                credential.user_id,
                receives=not credential.publish_only,
                expires_at=credential.expires_at,
            )
        claimed = client_type if client_type is not None else shared_as
        if claimed is not None and claimed in self._shared_types and self.is_shared(token):
            # The seed granted whatever type the client claimed; so do we, within
            # the known types, under one identity per type.
            return Principal(f"shared:{claimed}", claimed, credential="shared")
        return _INVALID

    def _check_jwt(
        self, verifier: JwtVerifier, token: str, client_type: str | None
    ) -> Principal | AuthRefusal:
        identity = verifier.verify(token)
        if isinstance(identity, JwtRefusal):
            logger.debug("JWT refused: %s", identity.detail)
            if identity.expired:
                return AuthRefusal("token expired", expired=True)
            return _INVALID
        if client_type is not None and identity.client_type != client_type:
            logger.debug("JWT refused: it is for %s, not %s", identity.client_type, client_type)
            return _INVALID
        if identity.jti is not None and identity.jti in self._revoked_jtis:
            return AuthRefusal("token revoked")
        return Principal(
            identity.sub,
            identity.client_type,
            identity.user_id,
            expires_at=identity.expires_at,
            credential="jwt",
            jti=identity.jti,
        )

    async def verify(self, token: str, client_type: str) -> Principal | None:
        """The principal for a good token whose client type matches, else ``None``."""
        principal = await self.check(token, client_type)
        return principal if isinstance(principal, Principal) else None

    async def identify(self, token: str, shared_as: str | None = None) -> Principal | None:
        """The principal for a good token, whatever its client type (HTTP requests name
        none: the credential does). The seed's shared token carries no type, so it
        passes only with ``shared_as``, a known client type the caller claims."""
        principal = await self.check(token, None, shared_as)
        return principal if isinstance(principal, Principal) else None

    def is_shared(self, token: str) -> bool:
        """Whether ``token`` is the seed's shared token (which names no client type)."""
        return self._shared is not None and hmac.compare_digest(
            token.encode(), self._shared.encode()
        )

    def is_active(self, principal: Principal) -> bool:
        """Whether ``principal``'s credential is still unrevoked: an opaque token by
        its name, a JWT by its ``jti`` (shared tokens always are). Expiry is the
        connection's own deadline, not checked here."""
        if principal.credential == "shared":
            return self._shared is not None
        if principal.credential == "jwt":
            return principal.jti is None or principal.jti not in self._revoked_jtis
        identity = principal.identity
        return any(c.name == identity for c in self._active.values())

    def has_tokens(self) -> bool:
        return bool(self._active) or self._shared is not None or self.jwt is not None

    def close(self) -> None:
        self._source.close()
