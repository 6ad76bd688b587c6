"""Cluster mode's credentials: the tokens and the JWT deny-list in Redis, for every node.

Keys (under the cluster's hash tag, beside the event log's):

- ``{prefix}:credentials`` a hash ``name -> JSON row``; the row has the fields of
  the SQLite ``credentials`` table (storage/credentials.py), so a token is
  stored only as its SHA-256, exactly as in embedded mode. Names are the keys:
  creating a name that exists fails, and a name is never reused, even revoked;
- ``{prefix}:revoked-jtis`` a hash ``jti -> revoked_at`` (the JWT deny-list);
- ``{prefix}:credentials:version`` a counter bumped by every change, in the same
  script as the change. A node polls it and reloads when it moved
  (``SharedCredentials``, the Authenticator's source in cluster mode). A store
  created anew (or after Redis lost its data) starts the counter at a random
  number, so a node never mistakes the new store for the one it had read.

``RedisCredentials`` is the store (the ``token`` CLI uses it directly);
``SharedCredentials`` feeds it to catsock/auth.py. Every failure to reach Redis
is raised as ``catsock.auth.CredentialsUnavailable``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import attrs
import coredis
import orjson
import trio

import storage
from catsock.auth import CredentialsUnavailable
from catsock.config import ClusterConfig

from . import LogUnavailable
from .redis import CALL_ERRORS, RedisEventLog

__all__ = ["CredentialSet", "RedisCredentials", "SharedCredentials", "open_credentials"]

logger = logging.getLogger("catsock.eventlog.credentials")

_ERRORS = (*CALL_ERRORS, LogUnavailable)
_FIELDS = tuple(f.name for f in attrs.fields(storage.Credential))

# Every script that changes the store starts the counter at ARGV[1] (a random
# number) where it does not exist, then bumps it. KEYS: version, rows, jtis.
_BUMP = """
local function bump()
  if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[1]) end
  redis.call('INCR', KEYS[1])
end
"""
# ARGV[2]: the version the caller holds. Answers {version} when it is unchanged.
_LOAD = """
local v = redis.call('GET', KEYS[1]) or ''
if v == ARGV[2] then return {v} end
return {v, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
"""
# ARGV[2]: name, ARGV[3]: row.
_CREATE = (
    _BUMP
    + """
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then return 0 end
bump()
return 1
"""
)
# ARGV[2]: name, ARGV[3]: the row as read, ARGV[4]: the row revoked. 0: changed meanwhile.
_REVOKE = (
    _BUMP
    + """
if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
bump()
return 1
"""
)
# ARGV[2]: jti, ARGV[3]: revoked_at.
_REVOKE_JTI = (
    _BUMP
    + """
if redis.call('HSETNX', KEYS[3], ARGV[2], ARGV[3]) == 0 then return 0 end
bump()
return 1
"""
)
# ARGV[2]: '1' to import only into a store that does not exist yet; then n, n
# (name, row) pairs, m, m (jti, revoked_at) pairs. Names and jtis already there stay.
# Answers how many were added, -1 when the store existed.
_IMPORT = (
    _BUMP
    + """
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local added, i = 0, 4
for r = 1, tonumber(ARGV[3]) do
  added = added + redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2
end
local m = tonumber(ARGV[i]); i = i + 1
for r = 1, m do
  added = added + redis.call('HSETNX', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2
end
bump()
return added
"""
)


@attrs.frozen
class CredentialSet:
    """What the store holds. ``version`` "": the store does not exist (never
    written, or Redis lost its data)."""

    version: str
    rows: tuple[storage.Credential, ...] = ()
    revoked_jtis: Mapping[str, str] = attrs.field(factory=dict)

    def active(self) -> dict[str, storage.Credential]:
        return {c.token_hash: c for c in self.rows if c.revoked_at is None}


def _dump(row: storage.Credential) -> str:
    return orjson.dumps(attrs.asdict(row)).decode()


def _parse(text: str) -> storage.Credential:
    """A stored row; ``ValueError`` if it is not one catsock wrote."""
    fields = orjson.loads(text)
    if not isinstance(fields, dict) or not all(
        isinstance(fields.get(k), str) for k in ("name", "client_type", "token_hash")
    ):
        raise ValueError("not a credential row")
    values: dict[str, Any] = {k: fields.get(k) for k in _FIELDS}
    return storage.Credential(**values)


def _pairs(flat: list[Any]) -> Iterable[tuple[str, str]]:
    return zip(flat[::2], flat[1::2], strict=True)


class RedisCredentials:
    """The cluster's credential store, over a coredis client the caller holds open."""

    def __init__(
        self,
        client: Callable[[], coredis.Redis[str]],
        key: Callable[[str], str],
        *,
        where: str,
        timeout: float,
    ) -> None:
        self._client = client
        self._keys = [key("credentials:version"), key("credentials"), key("revoked-jtis")]
        self.where = where
        self._timeout = timeout
        self._scripts: dict[str, Any] = {}

    @classmethod
    def of(cls, log: RedisEventLog, timeout: float) -> RedisCredentials:
        """The store of ``log``'s cluster, on ``log``'s pool (usable while it is open)."""
        return cls(lambda: log.client, log.key, where=log.where, timeout=timeout)

    async def _guarded(self, request: Callable[[coredis.Redis[str]], Awaitable[Any]]) -> Any:
        try:
            with trio.fail_after(self._timeout + 1):
                return await request(self._client())
        except _ERRORS as exc:
            problem = f"cannot reach Redis at {self.where}: {_why(exc)}"
            raise CredentialsUnavailable(problem) from None

    async def _run(self, script: str, *args: str | int) -> Any:
        seed = secrets.randbelow(1 << 40) * 1000

        def run(client: coredis.Redis[str]) -> Awaitable[Any]:
            registered = self._scripts.get(script)
            if registered is None:
                registered = self._scripts[script] = client.register_script(script)
            return registered(keys=self._keys, args=[seed, *args])

        return await self._guarded(run)

    async def load(self, known: str | None = None) -> CredentialSet | None:
        """Everything the store holds; None if its version is still ``known``."""
        found = await self._run(_LOAD, "" if known is None else known)
        version = str(found[0])
        if known is not None and version == known:
            return None
        if len(found) == 1:  # the store does not exist, and the caller knew one
            return CredentialSet("")
        rows = []
        for name, text in _pairs(found[1]):
            try:
                rows.append(_parse(text))
            except ValueError as exc:  # orjson's JSONDecodeError is one too
                # Written by something else than catsock: skipped, not a crash.
                logger.warning("credential store: skipped the malformed row %r: %s", name, exc)
        rows.sort(key=_order)
        return CredentialSet(version, tuple(rows), dict(_pairs(found[2])))

    async def create(self, row: storage.Credential) -> None:
        """Store a new credential; ``CredentialError`` if its name is taken."""
        if not await self._run(_CREATE, row.name, _dump(row)):
            raise storage.CredentialError(f"a credential named {row.name!r} already exists")

    async def revoke(self, name: str, revoked_at: str) -> bool:
        """Revoke the credential ``name``; False if there is no such active credential."""
        rows = self._keys[1]
        while True:
            text = await self._guarded(lambda client: client.hget(rows, name))
            if text is None:
                return False
            try:
                row = _parse(text)
            except ValueError:
                raise storage.CredentialError(f"the stored row of {name!r} is malformed") from None
            if row.revoked_at is not None:
                return False
            revoked = attrs.evolve(row, revoked_at=revoked_at)
            if await self._run(_REVOKE, name, text, _dump(revoked)):
                return True
            # The row changed between the read and the write: read it again.

    async def revoke_jti(self, jti: str, revoked_at: str) -> bool:
        """Put a JWT's ``jti`` on the deny-list; False if it is there already."""
        storage.check_jti(jti)
        return bool(await self._run(_REVOKE_JTI, jti, revoked_at))

    async def import_rows(
        self,
        rows: Iterable[storage.Credential],
        jtis: Mapping[str, str],
        *,
        only_if_empty: bool,
    ) -> int | None:
        """Copy rows and deny-listed jtis in (names and jtis there already stay as
        they are); how many were added, None if ``only_if_empty`` and the store exists."""
        rows = list(rows)
        args: list[str | int] = ["1" if only_if_empty else "0", len(rows)]
        for row in rows:
            args += (row.name, _dump(row))
        args.append(len(jtis))
        for jti, at in jtis.items():
            args += (jti, at)
        added = int(await self._run(_IMPORT, *args))
        return None if added < 0 else added


def _order(row: storage.Credential) -> tuple[str, str]:
    return (row.created_at, row.name)


def _why(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


@contextlib.asynccontextmanager
async def open_credentials(cluster: ClusterConfig) -> AsyncIterator[RedisCredentials]:
    """The store of ``cluster`` on a connection of its own (for the CLI)."""
    log = RedisEventLog(cluster, retention_rows=1, retention_days=1)
    async with log.open():
        yield RedisCredentials.of(log, cluster.timeout)


class SharedCredentials:
    """The Authenticator's source in cluster mode (catsock/auth.py ``Credentials``).

    The gateway's watcher polls it (``followed``: a check does not wait for it). Its
    first load copies the node's SQLite tokens into the store if the store does not
    exist yet (the one-time migration, docs/scaling.md). Should the store vanish
    while a node runs (Redis restarted without its data), the node keeps the tokens
    in memory and writes back what it last read."""

    followed = True

    def __init__(self, store: RedisCredentials, database: str | os.PathLike[str]) -> None:
        self._store = store
        self._database = database
        self._migrated = False
        self._local: frozenset[str] = frozenset()
        self._last: CredentialSet | None = None

    @property
    def where(self) -> str:
        return self._store.where

    def unchanged(self) -> bool:
        return True

    async def reload(self) -> tuple[dict[str, storage.Credential], frozenset[str]] | None:
        if not self._migrated:
            await self._migrate()
        found = await self._store.load(None if self._last is None else self._last.version)
        if found is None:
            return None
        if not found.version:
            await self._restore()
            return None
        if self._last is None and self._local - {r.name for r in found.rows}:
            missing = sorted(self._local - {r.name for r in found.rows})
            logger.warning(
                "%d token(s) of %s are not in the cluster's store (%s), which held tokens"
                " already when this node started: `python -m catsock token import` copies them",
                len(missing),
                self._database,
                ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else ""),
            )
        self._last = found
        return found.active(), frozenset(found.revoked_jtis)

    async def _migrate(self) -> None:
        try:
            rows, jtis = await trio.to_thread.run_sync(_read_local, self._database)
        except sqlite3.Error as exc:
            logger.warning("cannot read the tokens of %s to import them: %s", self._database, exc)
            rows, jtis = [], {}
        added = await self._store.import_rows(rows, jtis, only_if_empty=True)
        self._migrated = True
        self._local = frozenset(r.name for r in rows)
        if added is not None:
            logger.warning(
                "the cluster's credential store was empty: imported %d token(s) and revoked"
                " JWT id(s) from %s",
                added,
                self._database,
            )

    async def _restore(self) -> None:
        last = self._last
        if last is None:
            return
        added = await self._store.import_rows(last.rows, last.revoked_jtis, only_if_empty=True)
        if added is not None:
            logger.warning(
                "the cluster's credential store at %s was gone (Redis lost its data?):"
                " wrote back the %d token(s) and revoked JWT id(s) this node had read",
                self.where,
                added,
            )

    def close(self) -> None:
        pass


def _read_local(
    database: str | os.PathLike[str],
) -> tuple[list[storage.Credential], dict[str, str]]:
    db = storage.open_db(database)
    try:
        return storage.list_tokens(db), storage.list_revoked_jtis(db)
    finally:
        db.close()
