"""The command line: ``python -m catsock serve | config | token | logs | ledger | forget |
conformance``.

Every command takes ``--config FILE`` (or ``$CATSOCK_CONFIG``); settings then
come from ``CATSOCK_*`` variables and the command's own flags, in that order.
Bad input ends with a one-line message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import gc
import os
import re
import shlex
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson
import trio

import storage

from .config import Config, ConfigError, load_config, to_toml

if TYPE_CHECKING:
    from .eventlog.credentials import RedisCredentials

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


def _config_option(func: F) -> F:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="TOML config file (default: $CATSOCK_CONFIG, else built-in defaults).",
    )(func)


def _database_option(func: F) -> F:
    return click.option("--database", "--db", help="SQLite file (overrides config).")(func)


def _load(config_path: str | None, overrides: dict[str, Any] | None = None) -> Config:
    try:
        return load_config(config_path, overrides={k: v for k, v in (overrides or {}).items()})
    except ConfigError as exc:
        raise click.ClickException(f"config: {exc}") from None


def _flags(**values: Any) -> dict[str, Any]:
    """Flags as a nested override dict (``a__b`` → ``{"a": {"b": ...}}``), unset ones dropped."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        *parents, leaf = key.split("__")
        target = out
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """catsock: a real-time event gateway (WebSocket, typed events, SQLite logs)."""


@main.command()
@_config_option
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (default 8765; 0 picks a free one).")
@_database_option
@click.option("--log-policy", type=click.Choice(["full", "metadata", "off"]), help="Message log.")
@click.option("--tls-cert", help="PEM certificate chain: serve wss://.")
@click.option("--tls-key", help="PEM private key for --tls-cert.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Gateway processes sharing the port (SO_REUSEPORT); more than 1 needs cluster mode.",
)
@click.option("--reuse-port", is_flag=True, default=None, help="Bind with SO_REUSEPORT.")
@click.option("--supervisor-pid", type=int, hidden=True)  # set for workers by --workers
def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    database: str | None,
    log_policy: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    workers: int,
    reuse_port: bool | None,
    supervisor_pid: int | None,
) -> None:
    """Run the gateway until SIGINT or SIGTERM (then shut down gracefully)."""
    config = _load(
        config_path,
        _flags(
            host=host,
            port=port,
            database=database,
            log__policy=log_policy,
            tls__cert=tls_cert,
            tls__key=tls_key,
            reuse_port=reuse_port,
        ),
    )
    if workers > 1:
        options = {
            "--config": config_path, "--host": host, "--port": port, "--database": database,
            "--log-policy": log_policy, "--tls-cert": tls_cert, "--tls-key": tls_key,
        }  # fmt: skip
        args = [a for k, v in options.items() if v is not None for a in (k, str(v))]
        sys.exit(_serve_workers(config, workers, args))
    given = []  # what a CLI command needs to reach the same database, as given
    config_file = config_path or os.environ.get("CATSOCK_CONFIG")
    if config_file:
        given += ["--config", config_file]
    db_given = database or os.environ.get("CATSOCK_DATABASE")
    if db_given:
        given += ["--db", db_given]
    try:
        trio.run(_serve, config, given, supervisor_pid)
    except KeyboardInterrupt:  # pragma: no cover - second Ctrl-C during shutdown
        sys.exit(130)
    except Exception as exc:
        message = _startup_failure(exc, config)
        if message is None:
            raise
        raise click.ClickException(message) from None


def _serve_workers(config: Config, workers: int, args: list[str]) -> int:
    """``serve --workers N``: N gateways on one port (catsock/workers.py)."""
    from .workers import supervise, worker_command

    if config.port == 0:
        raise click.ClickException("--workers needs a fixed port (with 0 each would get its own)")
    if not config.cluster.redis:
        raise click.ClickException(
            "--workers needs cluster mode: set cluster.redis (CATSOCK_CLUSTER__REDIS;"
            " docs/scaling.md), or each worker would number events on its own"
        )
    return trio.run(
        supervise,
        worker_command(args),
        workers,
        config.shutdown_timeout,
        lambda line: click.echo(line, err=True),
    )


def _startup_failure(exc: BaseException, config: Config) -> str | None:
    """A one-line explanation for the ways ``serve`` fails to start, else None."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    from .server import StartupError

    if isinstance(exc, StartupError | ValueError):
        return str(exc)
    if isinstance(exc, sqlite3.Error | storage.SchemaVersionError):
        return f"cannot open database {config.database!r}: {exc}"
    if isinstance(exc, OSError):
        return f"cannot serve on {config.host}:{config.port}: {exc.strerror or exc}"
    return None


def program() -> str:
    """How the user runs catsock: the single-file binary, or the module."""
    return "catsock" if getattr(sys, "frozen", False) else "python -m catsock"


#: The cyclic garbage collector's thresholds while serving (Python's: 700, 10, 10).
GC_THRESHOLDS = (10_000, 20, 20)
#: How long a thread may hold the GIL while another waits for it (Python's: 5 ms).
SWITCH_INTERVAL = 0.001


def _tune_runtime() -> None:
    """The interpreter's defaults suit a batch job; these suit a server.

    ``gc.freeze``: what start-up built (modules, the configuration, caches) lives
    as long as the process, so no collection walks it again. The thresholds: a
    gateway allocates and frees containers by the thousand per second (frames,
    entries, task steps), nearly all freed by reference counting; at Python's
    defaults the youngest generation was collected ~14 times a second, each
    collection stopping everything, and every pause falls on some event's latency.

    The switch interval: the log writer's thread gives up the GIL around each
    SQLite call and, while the event loop is busy, gets it back only when the
    interval forces a switch, so a commit of a few calls waited 5 ms per call
    (``python -m bench.convoy``; issue 19). It costs nothing while only one thread
    wants the GIL."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL)


#: How often a worker of ``serve --workers`` looks whether its supervisor is still
#: there, where the system cannot say so (no ``pidfd_open``).
SUPERVISOR_CHECK = 1.0


async def _until_orphaned(supervisor: int, done: trio.CancelScope) -> None:
    """End ``done`` once ``supervisor`` (this worker's parent) has exited: killed
    with -9, say. A worker must not outlive the supervisor that would stop it."""
    try:
        fd = os.pidfd_open(supervisor)  # readable once the process has exited
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
    else:
        while os.getppid() == supervisor:  # noqa: ASYNC110 (nothing to wait on)
            await trio.sleep(SUPERVISOR_CHECK)
    click.echo("catsock: the supervisor is gone", err=True)
    done.cancel()


async def _serve(config: Config, given: list[str], supervisor: int | None = None) -> None:
    from .server import Gateway

    gateway = Gateway(config)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            host, port = await nursery.start(gateway.serve)
            _tune_runtime()
            scheme = "wss" if config.tls.cert else "ws"
            shown = f"[{host}]" if ":" in host else host
            click.echo(f"catsock: listening on {scheme}://{shown}:{port}/ws", err=True)
            base = f"{'https' if config.tls.cert else 'http'}://{shown}:{port}"
            click.echo(
                f"catsock: dashboard {base}/ , HTTP API {base}/api/publish and "
                f"{base}/api/events, health {base}/health",
                err=True,
            )
            if not gateway.auth.has_tokens():
                where = "".join(f" {shlex.quote(word)}" for word in given)
                click.echo(
                    "catsock: no tokens yet; create one (printed once) with:\n"
                    f"  {program()} token create{where} --client-type CATS --name cats-1",
                    err=True,
                )
            async with trio.open_nursery() as waiting:
                if supervisor is not None:
                    waiting.start_soon(_until_orphaned, supervisor, waiting.cancel_scope)
                async for _ in signals:
                    break
                waiting.cancel_scope.cancel()
        click.echo("catsock: shutting down", err=True)
        await gateway.shutdown()


@main.command("config")
@_config_option
def show_config(config_path: str | None) -> None:
    """Print the effective configuration as TOML (passwords and secrets hidden).

    In cluster mode, a last comment line says which Redis the node uses and
    whether it answers now."""
    config = _load(config_path)
    click.echo(to_toml(config))
    if config.cluster.redis:
        from .cli_cluster import reachable, where

        at, problem = where(config), reachable(config)
        state = "reachable"
        if problem is not None:
            state = "NOT reachable: " + problem.removeprefix(f"cannot reach Redis at {at}: ")
        click.echo(f"\n# cluster mode: Redis at {at}, {state}")


@main.group()
def token() -> None:
    """Create, list and revoke client tokens (in cluster mode, in the cluster's Redis)."""


T = TypeVar("T")


def _in_cluster(config: Config, work: Callable[[RedisCredentials], Awaitable[T]]) -> T:
    """Run ``work(store)`` against the cluster's credential store (cluster.redis);
    Redis unreachable is a one-line error."""
    from .auth import CredentialsUnavailable
    from .eventlog import client_missing

    try:
        from .eventlog.credentials import open_credentials
    except ImportError as exc:
        raise click.ClickException(str(client_missing(exc))) from None

    async def run() -> T:
        async with open_credentials(config.cluster) as store:
            return await work(store)

    try:
        return trio.run(run)
    except Exception as exc:
        # The Redis client's task group wraps what its body raises.
        while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if isinstance(exc, CredentialsUnavailable):
            raise click.ClickException(f"cluster.redis: {exc}") from None
        if isinstance(exc, storage.CredentialError):
            raise click.ClickException(str(exc)) from None
        raise


def _open(config_path: str | None, database: str | None) -> Any:
    config = _load(config_path, _flags(database=database))
    try:
        return storage.open_db(config.database)
    except Exception as exc:  # sqlite3 errors, bad paths, a newer schema
        raise click.ClickException(f"cannot open database {config.database!r}: {exc}") from None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """A length of time: ``90`` or ``90s``, ``15m``, ``1h``, ``30d``, ``2w``; in seconds."""
    if value is None:
        return None
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise click.BadParameter(f"{value!r} is not a duration like 90s, 15m, 1h, 30d or 2w")
    seconds = float(match[1]) * _UNITS[match[2] or "s"]
    if not 0 < seconds < float("inf"):
        raise click.BadParameter(f"{value!r} must be longer than nothing")
    return seconds


def _when(unix: float | None) -> str:
    return "-" if unix is None else storage.iso(unix)


@token.command("create")
@_config_option
@_database_option
@click.option("--client-type", required=True, help="CATS, AFAD, DASHBOARD or your own type.")
@click.option("--name", required=True, help="Identity name, e.g. afad-prod (unique).")
@click.option("--user-id", help="Bind to one user: the token then sees only user:<id>.")
@click.option(
    "--publish-only",
    is_flag=True,
    help="The token publishes and receives nothing (e.g. PHP request handlers).",
)
@click.option(
    "--expires-in",
    callback=_duration,
    help="The token stops working after this long (90s, 15m, 1h, 30d, 2w); "
    "its connections get TOKEN_EXPIRED then. Default: never.",
)
def token_create(
    config_path: str | None,
    database: str | None,
    client_type: str,
    name: str,
    user_id: str | None,
    publish_only: bool,
    expires_in: float | None,
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    config = _load(config_path, _flags(database=database))
    try:
        if config.cluster.redis:
            plain, row = storage.new_credential(
                name=name,
                client_type=client_type,
                user_id=user_id,
                publish_only=publish_only,
                expires_in=expires_in,
            )
            _in_cluster(config, lambda store: store.create(row))
        else:
            plain = storage.create_token(
                _open(config_path, database),
                name=name,
                client_type=client_type,
                user_id=user_id,
                publish_only=publish_only,
                expires_in=expires_in,
            )
    except storage.CredentialError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(plain)
    until = "" if expires_in is None else f", valid until {_when(time.time() + expires_in)}"
    click.echo(
        f"token for {name} ({client_type}){until}; store it now, it is not shown again", err=True
    )


@token.command("list")
@_config_option
@_database_option
def token_list(config_path: str | None, database: str | None) -> None:
    """List tokens (names and types; never the tokens themselves)."""
    config = _load(config_path, _flags(database=database))
    if config.cluster.redis:

        async def load(store: RedisCredentials) -> list[storage.Credential]:
            found = await store.load()
            return [] if found is None else list(found.rows)

        rows = _in_cluster(config, load)
    else:
        rows = storage.list_tokens(_open(config_path, database))
    click.echo(
        f"{'NAME':<24} {'TYPE':<10} {'USER':<10} {'CREATED':<25} {'REVOKED':<25} "
        f"{'RECEIVES':<8} EXPIRES"
    )
    for c in rows:
        click.echo(
            f"{c.name:<24} {c.client_type:<10} {c.user_id or '-':<10} "
            f"{c.created_at:<25} {c.revoked_at or '-':<25} "
            f"{'no' if c.publish_only else 'yes':<8} {_when(c.expires_at)}"
        )


@token.command("revoke")
@_config_option
@_database_option
@click.argument("name", required=False)
@click.option("--jti", help="Revoke a JWT by its jti claim (instead of a token by name).")
def token_revoke(
    config_path: str | None, database: str | None, name: str | None, jti: str | None
) -> None:
    """Revoke a token by name, or a JWT by --jti; a running gateway cuts their
    connections within seconds and refuses them from then on."""
    if (name is None) == (jti is None):
        raise click.UsageError("name a token, or give --jti (not both)")
    config = _load(config_path, _flags(database=database))
    cluster = bool(config.cluster.redis)
    now = storage.iso(time.time())
    if jti is not None:
        try:
            if cluster:
                added = _in_cluster(config, lambda store: store.revoke_jti(jti, now))
            else:
                added = storage.revoke_jti(_open(config_path, database), jti)
        except storage.CredentialError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"revoked jti {jti}" if added else f"jti {jti} was revoked already", err=True)
        return
    assert name is not None
    if cluster:
        revoked = _in_cluster(config, lambda store: store.revoke(name, now))
    else:
        revoked = storage.revoke_token(_open(config_path, database), name)
    if not revoked:
        raise click.ClickException(f"no active token named {name!r}")
    click.echo(f"revoked {name}", err=True)


@token.command("import")
@_config_option
@_database_option
def token_import(config_path: str | None, database: str | None) -> None:
    """Cluster mode: copy the tokens and revoked JWT ids of a node's SQLite file
    (--db) into the cluster's store; names the store knows already stay as they are."""
    config = _load(config_path, _flags(database=database))
    if not config.cluster.redis:
        raise click.ClickException(
            "token import copies into the cluster's store: set cluster.redis"
            " (CATSOCK_CLUSTER__REDIS)"
        )
    db = _open(config_path, database)
    try:
        rows, jtis = storage.list_tokens(db), storage.list_revoked_jtis(db)
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot read {config.database!r}: {exc}") from None
    finally:
        db.close()
    added = _in_cluster(config, lambda store: store.import_rows(rows, jtis, only_if_empty=False))
    click.echo(
        f"{added} new in the cluster's store, of the {len(rows)} token(s) and"
        f" {len(jtis)} revoked jti(s) of {config.database}",
        err=True,
    )


@token.command("jwt")
@_config_option
@click.option("--client-type", required=True, help="CATS, AFAD, DASHBOARD or your own type.")
@click.option("--name", required=True, help="The identity: the token's sub claim.")
@click.option("--ttl", callback=_duration, default="1h", show_default=True, help="Lifetime.")
@click.option("--user-id", help="Bind to one user: the token then sees only user:<id>.")
@click.option(
    "--algorithm",
    type=click.Choice(["HS256", "HS384", "HS512"]),
    default="HS256",
    show_default=True,
)
def token_jwt(
    config_path: str | None,
    client_type: str,
    name: str,
    ttl: float,
    user_id: str | None,
    algorithm: str,
) -> None:
    """Mint a JWT signed with jwt.secret (CATSOCK_JWT__SECRET) and print it: for tests
    and small setups. Nothing is stored; revoke it with ``token revoke --jti``."""
    from .jwtauth import JwtConfigError, JwtIdentity, JwtVerifier, mint

    config = _load(config_path)
    try:
        minted = mint(
            config.jwt,
            sub=name,
            client_type=client_type,
            ttl=ttl,
            user_id=user_id,
            algorithm=algorithm,
        )
        # What the gateway with this configuration would make of it.
        checked = JwtVerifier(config.jwt).verify(minted)
    except (ValueError, JwtConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    if not isinstance(checked, JwtIdentity):
        raise click.ClickException(f"the gateway would refuse this token: {checked.detail}")
    click.echo(minted)
    click.echo(
        f"JWT for {name} ({client_type}), jti {checked.jti}, valid until "
        f"{_when(checked.expires_at - config.jwt.leeway)}",
        err=True,
    )


@main.command()
@_config_option
@_database_option
@click.option("--connections", is_flag=True, help="Show connections instead of messages.")
@click.option(
    "--type", "type_", help="Only messages of this type / connections of this client type."
)
@click.option("--identity", help="Only connections of this identity.")
@click.option("--connection", "connection_id", help="Only messages of this connection.")
@click.option(
    "--direction", type=click.Choice(["in", "out"]), help="Only in- or outbound messages."
)
@click.option("--message-id", help="Only this message_id.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def logs(
    config_path: str | None,
    database: str | None,
    connections: bool,
    type_: str | None,
    identity: str | None,
    connection_id: str | None,
    direction: str | None,
    message_id: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show recent connections or messages from the log, newest first.

    In cluster mode too these are one node's: each node logs its own
    connections and messages in its own file (the one named on stderr)."""
    config = _load(config_path, _flags(database=database))
    if config.cluster.redis:
        click.echo(
            f"cluster mode: logs are each node's own; these are from {config.database} only",
            err=True,
        )
    db = _open(config_path, database)
    if connections:
        rows = storage.recent_connections(db, limit=limit, client_type=type_, identity=identity)
        columns = [
            "id",
            "client_type",
            "identity",
            "remote_addr",
            "connected_at",
            "disconnected_at",
            "close_code",
            "close_reason",
        ]
    else:
        rows = storage.recent_messages(
            db,
            limit=limit,
            type=type_,
            connection_id=connection_id,
            direction=direction,
            message_id=message_id,
            policy=storage.LogPolicy(config.log.policy),
            redact_fields=config.redact_fields(),
        )
        columns = ["created_at", "direction", "type", "message_id", "connection_id", "size"]
    if as_json:
        for row in rows:
            click.echo(orjson.dumps(row).decode())
        return
    table = [[c.upper() for c in columns]]
    table += [["-" if row.get(c) is None else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


@main.command()
@_config_option
@_database_option
@click.argument("message_id")
@click.option("--recipient", "-r", help="Only this recipient (a token name).")
def ledger(
    config_path: str | None, database: str | None, message_id: str, recipient: str | None
) -> None:
    """What happened to MESSAGE_ID: accepted, routed, written, acked, expired, dropped.

    Exits 1 when the event log has no such message. In cluster mode it reads the
    cluster's Redis (the shared log, ledger, cursors and refused events; tokens
    from this node's file).
    """
    from .ledger import explain, refusals

    config = _load(config_path, _flags(database=database))
    db = _open(config_path, database)
    if config.cluster.redis:
        db = _cluster_snapshot(config, message_id)
    stories = explain(
        db, message_id, recipient=recipient, durable_types=config.delivery.durable_types
    )
    refused = refusals(db, message_id)
    if refused:
        click.echo(f"message {message_id}")
        for line in refused:
            click.echo(f"  {line}")
    if not stories:
        why = (
            "it was refused (above; `python -m catsock refused retry ID` sends it again)"
            if refused
            else "never accepted, or pruned after delivery.retention_days"
        )
        click.echo(f"no event with message_id {message_id!r} in the log: {why}", err=True)
        sys.exit(1)
    for story in stories:
        click.echo(f"message {message_id}")
        for line in story.lines:
            click.echo(f"  {line}")
        for name, facts in story.recipients.items():
            click.echo(f"  {name}:")
            for fact in facts:
                click.echo(f"    {fact}")


def _cluster_snapshot(config: Config, message_id: str) -> Any:
    """What the cluster's Redis knows of ``message_id``, as a database ``explain`` reads."""
    from .cli_cluster import on_redis, where
    from .refused_sink import refused_store
    from .views import cluster_snapshot

    snapshot = on_redis(
        config,
        lambda log: cluster_snapshot(log, refused_store(config, log), message_id),
    )
    click.echo(f"cluster mode: the shared log at Redis {where(config)}", err=True)
    return snapshot


@main.command()
@_config_option
@_database_option
@click.option(
    "--field",
    "field_specs",
    multiple=True,
    metavar="NAME=VALUE",
    help="Forget the visitor whose NAME (a payload key, any case) is VALUE. Repeatable.",
)
@click.option("--user-id", help="Forget a user: events routed to it or naming it.")
def forget(
    config_path: str | None,
    database: str | None,
    field_specs: tuple[str, ...],
    user_id: str | None,
) -> None:
    """Erase one person's data: redact the matching events and log rows (docs/privacy.md).

    Prints how many events, message-log and refused-event rows and connections were redacted;
    with ``cluster.redis`` set, also how many events and refused events in the cluster's Redis.
    """
    fields = []
    for spec in field_specs:
        name, sep, value = spec.partition("=")
        if not sep or not name.strip() or not value:
            raise click.ClickException(f"--field {spec!r}: expected NAME=VALUE")
        fields.append((name.strip(), value))
    if user_id is not None and not user_id.strip():
        raise click.ClickException("--user-id must not be empty")
    if not fields and user_id is None:
        raise click.ClickException("say whom to forget: --field NAME=VALUE or --user-id N")
    config = _load(config_path, _flags(database=database))
    if config.cluster.redis:
        from .cli_cluster import reachable

        problem = reachable(config)  # before anything is changed: all or, for now, nothing
        if problem is not None:
            raise click.ClickException(f"cluster.redis: {problem}; nothing was forgotten")
    db = _open(config_path, database)
    try:
        done = storage.forget(db, config.redact_fields(), fields=fields, user_id=user_id)
    except sqlite3.Error as exc:
        raise click.ClickException(f"database {config.database!r}: {exc}") from None
    finally:
        db.close()
    click.echo(
        f"forgot: {done.events} events, {done.messages} message-log and refused-event rows,"
        f" {done.connections} connection addresses redacted"
    )
    if not done.checkpointed:
        click.echo(
            "catsock: a reader held the write-ahead log, so old copies may remain in"
            f" {config.database}-wal until the next checkpoint; run forget again later",
            err=True,
        )
    if config.cluster.redis:
        from .cli_cluster import forget_in_redis, where

        shared = forget_in_redis(config, fields, user_id)
        click.echo(
            f"forgot in Redis at {where(config)}: {shared.events} events,"
            f" {shared.refused} refused-event rows redacted"
        )


from . import cli_client as _cli_client  # noqa: E402,F401  (registers publish and tail)
from . import cli_conformance as _cli_conformance  # noqa: E402,F401  (registers conformance)
from . import cli_ops as _cli_ops  # noqa: E402,F401  (registers deploy and db)
from . import cli_refused as _cli_refused  # noqa: E402,F401  (registers refused)
