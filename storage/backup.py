"""Online backups, checks and restores of catsock's database (``python -m catsock db``).

``backup`` copies a live database with SQLite's online backup API in one step:
the copy is the database as of one read transaction (WAL lets the gateway keep
committing meanwhile), so it holds every event committed before the backup
started and no half of any transaction. The copy is written beside its
destination, checked (``PRAGMA quick_check``), made a self-contained
rollback-journal file and renamed into place, so a crash never leaves a partial
file under the destination's name.

``check`` runs ``PRAGMA integrity_check`` and compares the schema version with
this catsock's, without changing the file (no migration).

``restore`` puts a checked backup in place of a database no gateway holds. A
running gateway holds a shared ``flock(2)`` on its database file for as long as
it runs (``hold``); ``restore`` takes an exclusive one, without waiting, and
refuses if it cannot. ``flock`` locks are separate from the POSIX locks SQLite
itself uses, so holding one changes nothing for SQLite, and the kernel drops it
when the process ends, ``kill -9`` included. The database being replaced is
first copied to ``<database>.pre-restore-<UTC time>``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs

from storage.db import SCHEMA_VERSION

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BackupError",
    "BackupResult",
    "CheckResult",
    "DatabaseHeld",
    "RestoreResult",
    "backup",
    "check",
    "hold",
    "restore",
]

#: Tables every database of the current schema has.
TABLES = ("credentials", "connections", "messages", "events", "cursors", "ledger")


class BackupError(Exception):
    """The backup, check or restore could not be done (the message says why)."""


class DatabaseHeld(BackupError):
    """A running gateway holds the database: stop it first."""


@attrs.frozen
class CheckResult:
    path: str
    #: ``PRAGMA integrity_check``'s lines: ``["ok"]`` when sound.
    integrity: list[str]
    schema_version: int
    #: Tables of the current schema that are missing.
    missing_tables: list[str]
    events: int
    last_seq: int | None
    tokens: int

    @property
    def ok(self) -> bool:
        return (
            self.integrity == ["ok"]
            and self.schema_version <= SCHEMA_VERSION
            and (self.schema_version < SCHEMA_VERSION or not self.missing_tables)
        )

    def problems(self) -> list[str]:
        out = []
        if self.integrity != ["ok"]:
            out += [f"integrity: {line}" for line in self.integrity[:20]]
        if self.schema_version > SCHEMA_VERSION:
            out.append(
                f"schema version {self.schema_version} is newer than this catsock "
                f"supports ({SCHEMA_VERSION})"
            )
        elif self.schema_version == SCHEMA_VERSION and self.missing_tables:
            out.append("missing tables: " + ", ".join(self.missing_tables))
        return out


@attrs.frozen
class BackupResult:
    source: str
    destination: str
    bytes: int
    seconds: float
    #: The newest event in the copy (None: no event).
    last_seq: int | None
    events: int


@attrs.frozen
class RestoreResult:
    backup: str
    database: str
    #: Where the database that was replaced went (None: there was none).
    previous: str | None
    check: CheckResult


def _connect_existing(
    path: str | os.PathLike[str], *, readonly: bool = False
) -> sqlite3.Connection:
    """A connection to an existing file: never creates one (``mode=rw``/``ro``)."""
    target = Path(path)
    if not target.is_file():
        raise BackupError(f"{os.fspath(path)!r} does not exist or is not a file")
    mode = "ro" if readonly else "rw"
    uri = f"file:{quote(str(target.resolve()))}?mode={mode}"
    try:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {os.fspath(path)!r}: {exc}") from None
    return conn


def _scalar(conn: sqlite3.Connection, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def _summary(conn: sqlite3.Connection) -> tuple[int, int | None, int]:
    """Events, the newest seq and tokens (0 / None where a table is missing)."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    events, last, tokens = 0, None, 0
    if "events" in tables:
        events = int(_scalar(conn, "SELECT count(*) FROM events") or 0)
        value = _scalar(conn, "SELECT max(seq) FROM events")
        last = None if value is None else int(value)
    if "credentials" in tables:
        tokens = int(_scalar(conn, "SELECT count(*) FROM credentials") or 0)
    return events, last, tokens


def check(path: str | os.PathLike[str]) -> CheckResult:
    """Integrity and schema version of the database at ``path``; changes nothing."""
    conn = _connect_existing(path)
    try:
        try:
            integrity = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
            version = int(_scalar(conn, "PRAGMA user_version") or 0)
            tables = {
                row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            events, last, tokens = _summary(conn)
        except sqlite3.DatabaseError as exc:
            return CheckResult(os.fspath(path), [str(exc)], 0, list(TABLES), 0, None, 0)
    finally:
        conn.close()
    missing = [t for t in TABLES if t not in tables]
    return CheckResult(os.fspath(path), integrity, version, missing, events, last, tokens)


def backup(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    started: Callable[[], None] | None = None,
) -> BackupResult:
    """Copy the live database ``source`` to ``destination`` (see the module docstring).

    ``started`` is called once the copy's read transaction is open: every event
    committed before that call is in the copy."""
    dest = Path(destination)
    if dest.exists() and not overwrite:
        raise BackupError(f"{os.fspath(destination)!r} exists; choose another name")
    if dest.resolve() == Path(source).resolve():
        raise BackupError("the backup cannot be the database itself")
    if not dest.parent.is_dir():
        raise BackupError(f"the directory {os.fspath(dest.parent)!r} does not exist")
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    began = time.monotonic()
    src = _connect_existing(source)
    try:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        dst = sqlite3.connect(partial)
        try:
            # The read transaction that the copy is a snapshot of: opened here so
            # that ``started`` can tell when it began; the backup step reads within it.
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if started is not None:
                started()
            src.backup(dst, pages=-1)  # one step: one consistent snapshot
            src.execute("COMMIT")
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            problems = [str(r[0]) for r in dst.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise BackupError("the copy failed its check: " + "; ".join(problems[:5]))
            events, last, _ = _summary(dst)
        finally:
            dst.close()
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, dest)
        _fsync_dir(dest.parent)
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {os.fspath(source)!r} failed: {exc}") from None
    finally:
        src.close()
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return BackupResult(
        os.fspath(source),
        os.fspath(destination),
        dest.stat().st_size,
        time.monotonic() - began,
        last,
        events,
    )


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def hold(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold a shared lock on the database file for the block: what a running
    gateway does, so that ``restore`` refuses to replace its database. Several
    holders may share it; ``restore`` holds it exclusively while it works."""
    if fcntl is None or not Path(path).is_file():  # no lock to take (":memory:")
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatabaseHeld(
                f"{os.fspath(path)!r} is being restored (python -m catsock db restore); "
                "start the gateway once that is done"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def restore(
    backup_path: str | os.PathLike[str],
    database: str | os.PathLike[str],
    *,
    now: Callable[[], float] = time.time,
) -> RestoreResult:
    """Replace ``database`` by the backup at ``backup_path`` (see the module docstring).

    Raises ``DatabaseHeld`` while a gateway runs on ``database`` and
    ``BackupError`` when the backup fails its check; nothing is changed then."""
    checked = check(backup_path)
    if not checked.ok:
        raise BackupError(
            f"{os.fspath(backup_path)!r} is not a usable backup: " + "; ".join(checked.problems())
        )
    target = Path(database)
    if not target.parent.is_dir():
        raise BackupError(f"the directory {os.fspath(target.parent)!r} does not exist")
    if target.exists() and target.resolve() == Path(backup_path).resolve():
        raise BackupError("the backup is the database itself")
    stamp = datetime.fromtimestamp(now(), UTC).strftime("%Y%m%dT%H%M%SZ")
    previous: Path | None = None
    lock_fd = os.open(target, os.O_RDONLY) if target.exists() else None
    try:
        if lock_fd is not None and fcntl is not None:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DatabaseHeld(
                    f"a running gateway holds {os.fspath(database)!r}: stop it first "
                    "(systemctl stop catsock), then restore"
                ) from None
        staged = target.with_name(f".{target.name}.restoring-{os.getpid()}")
        try:
            _copy(Path(backup_path), staged)
            with sqlite3.connect(staged) as conn:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.close()
            if lock_fd is not None:
                previous = target.with_name(f"{target.name}.pre-restore-{stamp}")
                _copy(target, previous)
            for side in ("-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    target.with_name(target.name + side).unlink()
            os.replace(staged, target)
            _fsync_dir(target.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    return RestoreResult(
        os.fspath(backup_path),
        os.fspath(database),
        None if previous is None else str(previous),
        checked,
    )


def _copy(source: Path, destination: Path) -> None:
    """A consistent copy through SQLite (the source's WAL included)."""
    src = _connect_existing(source)
    try:
        with contextlib.suppress(FileNotFoundError):
            destination.unlink()
        dst = sqlite3.connect(destination)
        try:
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"copying {source} to {destination} failed: {exc}") from None
    finally:
        src.close()
    with open(destination, "rb") as f:
        os.fsync(f.fileno())
