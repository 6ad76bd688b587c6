"""``python -m catsock deploy | db``: deployment files, the binary, backups and checks.

``deploy nginx`` and ``deploy systemd`` print a site and a unit (catsock/deploy.py)
on stdout, for a shell redirect into place; ``deploy binary`` builds the
single-file executable. ``db backup`` copies the live database, ``db check``
checks a database or a backup, ``db restore`` puts a backup in place of a
stopped gateway's database (storage/backup.py). docs/deploy.md uses each.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

import storage
from storage import backup as db_backup

from .cli import _config_option, _database_option, _flags, _load, main
from .deploy import (
    DEFAULT_COMMAND,
    BinaryBuildError,
    NginxSite,
    SystemdUnit,
    build_binary,
    nginx_site,
    systemd_unit,
)

__all__ = ["db", "deploy"]


@main.group()
def deploy() -> None:
    """Generate an nginx site and a systemd unit; build a single-file binary."""


@deploy.command("nginx")
@_config_option
@click.option("--server-name", required=True, help="The public host name, e.g. socket.example.com.")
@click.option(
    "--listen",
    multiple=True,
    metavar="[ADDR:]PORT",
    help="Where nginx listens (default 443 with TLS, else 80). Repeatable, e.g. "
    "--listen 443 --listen [::]:443.",
)
@click.option(
    "--upstream",
    metavar="HOST:PORT",
    help="The gateway (default: host and port of the configuration, 127.0.0.1:8765).",
)
@click.option("--tls-cert", help="PEM certificate chain (e.g. Let's Encrypt's fullchain.pem).")
@click.option("--tls-key", help="Its private key (privkey.pem).")
@click.option(
    "--metrics-allow",
    multiple=True,
    metavar="CIDR",
    help="Who may read /metrics through nginx (default: 127.0.0.1 and ::1). Repeatable.",
)
def deploy_nginx(
    config_path: str | None,
    server_name: str,
    listen: tuple[str, ...],
    upstream: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    metrics_allow: tuple[str, ...],
) -> None:
    """Print an nginx site for the gateway: WebSocket on /ws, HTTP API and dashboard.

    Timeouts follow the configuration (heartbeat, long-poll wait), /metrics is
    for loopback only unless --metrics-allow says otherwise, and with
    --tls-cert/--tls-key nginx serves TLS 1.2 and 1.3 only.
    """
    config = _load(config_path)
    # nginx reads a relative path from its own prefix (/etc/nginx): make it the one meant.
    tls_cert = os.path.abspath(tls_cert) if tls_cert else None
    tls_key = os.path.abspath(tls_key) if tls_key else None
    try:
        site = NginxSite.for_config(
            config,
            server_name=server_name,
            listen=listen,
            upstream=upstream,
            tls_cert=tls_cert,
            tls_key=tls_key,
            metrics_allow=metrics_allow,
        )
        click.echo(nginx_site(site), nl=False)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@deploy.command("systemd")
@click.option("--user", default="catsock", show_default=True, help="The user the gateway runs as.")
@click.option(
    "--config",
    "config_path",
    default="/etc/catsock/catsock.toml",
    show_default=True,
    help="The gateway's config file; read now, if it exists, for database and shutdown_timeout.",
)
@click.option(
    "--command",
    default=DEFAULT_COMMAND,
    show_default=True,
    help="What starts catsock, e.g. /usr/local/bin/catsock for the single-file binary.",
)
@_database_option
@click.option(
    "--writable",
    multiple=True,
    metavar="DIR",
    help="Another directory the gateway may write (e.g. for backups). Repeatable.",
)
@click.option(
    "--environment-file",
    metavar="FILE",
    help="Read variables from FILE (e.g. SOCKET_AUTH_TOKEN with allow_shared_token).",
)
def deploy_systemd(
    user: str,
    config_path: str,
    command: str,
    database: str | None,
    writable: tuple[str, ...],
    environment_file: str | None,
) -> None:
    """Print a hardened systemd unit (catsock.service) for the gateway."""
    values: dict[str, object] = {}
    if Path(config_path).is_file():
        config = _load(config_path, _flags(database=database))
        values = {"database": config.database, "shutdown_timeout": config.shutdown_timeout}
    elif database is not None:
        values = {"database": database}
    try:
        unit = SystemdUnit(
            user=user,
            config_path=config_path,
            command=command,
            writable=writable,
            environment_file=environment_file,
            **values,  # type: ignore[arg-type]
        )
        click.echo(systemd_unit(unit), nl=False)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@deploy.command("binary")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory to write the executable to (as DIR/catsock).",
)
def deploy_binary(out: str) -> None:
    """Build a single-file executable with PyInstaller (pip install 'catsock[binary]').

    The result needs no Python on the host: copy DIR/catsock to /usr/local/bin.
    """
    began = time.monotonic()
    click.echo("catsock: building the binary with PyInstaller (about a minute)", err=True)
    try:
        path = build_binary(Path(out))
    except BinaryBuildError as exc:
        raise click.ClickException(str(exc)) from None
    size = path.stat().st_size / 1e6
    took = time.monotonic() - began
    click.echo(f"catsock: built {path} ({size:.1f} MB) in {took:.0f} s", err=True)
    click.echo(str(path))


@main.group()
def db() -> None:
    """Back up, check and restore the database."""


@db.command("backup")
@_config_option
@_database_option
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace FILE if it exists.")
def db_backup_command(
    config_path: str | None, database: str | None, file: str, overwrite: bool
) -> None:
    """Copy the database to FILE while the gateway runs (a consistent snapshot).

    FILE holds every event committed before the backup started; it is checked
    before it gets its name, and is a single SQLite file.
    """
    config = _load(config_path, _flags(database=database))

    def started() -> None:
        click.echo(f"catsock: backing up {config.database} to {file}", err=True)

    try:
        result = db_backup.backup(config.database, file, overwrite=overwrite, started=started)
    except db_backup.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"backed up {result.source} to {result.destination}: {result.bytes / 1e6:.1f} MB, "
        f"{_events(result)}, in {result.seconds:.2f} s"
    )


def _events(result: db_backup.BackupResult | db_backup.CheckResult) -> str:
    if result.last_seq is None:
        return "no events"
    return f"{result.events} events up to seq {result.last_seq}"


@db.command("check")
@_config_option
@_database_option
@click.argument("file", required=False, type=click.Path(dir_okay=False))
def db_check(config_path: str | None, database: str | None, file: str | None) -> None:
    """Check FILE (default: the configured database): integrity and schema version.

    Exits 1 if it is damaged or written by a newer catsock. Changes nothing.
    """
    path = file if file is not None else _load(config_path, _flags(database=database)).database
    try:
        result = db_backup.check(path)
    except db_backup.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    current = storage.SCHEMA_VERSION
    schema = f"schema {result.schema_version}"
    if result.schema_version < current:
        schema += f" (older; this catsock migrates it to {current} when it opens it)"
    elif result.schema_version > current:
        schema += f" (newer than this catsock's {current})"
    integrity = "ok" if result.integrity == ["ok"] else "FAILED"
    click.echo(
        f"{path}: integrity {integrity}, {schema}, {result.tokens} tokens, {_events(result)}"
    )
    if not result.ok:
        for problem in result.problems():
            click.echo(f"  {problem}", err=True)
        raise click.ClickException(f"{path} failed the check")


@db.command("restore")
@_config_option
@_database_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def db_restore(config_path: str | None, database: str | None, file: str) -> None:
    """Replace the configured database by the backup FILE; the gateway must be stopped.

    FILE is checked first. A running gateway holds its database (a shared flock),
    so restoring under it is refused; the database being replaced is kept as
    DATABASE.pre-restore-<time>.
    """
    config = _load(config_path, _flags(database=database))
    try:
        result = db_backup.restore(file, config.database)
    except db_backup.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    kept = f"; the previous database is {result.previous}" if result.previous else ""
    click.echo(f"restored {result.database} from {result.backup}{kept}")
    owner = _owner_hint(Path(config.database))
    if owner:
        click.echo(owner, err=True)


def _owner_hint(path: Path) -> str | None:
    """Restored as root for a gateway of another user: say how to give it back."""
    if os.geteuid() != 0:
        return None
    parent = path.parent.stat()
    if parent.st_uid == 0:
        return None
    return (
        f"catsock: {path} now belongs to root; give it to the gateway's user: "
        f"chown {parent.st_uid}:{parent.st_gid} {path}"
    )
