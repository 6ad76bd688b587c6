"""``python -m catsock refused``: list the events the gateway refused, retry one.

Listing reads the database like ``logs`` and ``ledger`` (in cluster mode the
cluster's Redis, catsock/refused_store.py); a retry goes through a
running gateway (``POST /api/refused/retry``), because only the gateway can
number, route and deliver an event (docs/operations.md, "Refused events").
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

import click
import orjson

import storage

from .cli import _config_option, _database_option, _flags, _load, _open, main
from .cli_cluster import on_redis, where
from .refused_sink import refused_store

__all__ = ["refused"]

_COLUMNS = ("id", "at", "reason", "identity", "transport", "type", "message_id", "retried")


@main.group(invoke_without_command=True)
@_config_option
@_database_option
@click.option(
    "--since", help="Only these: an ISO time (2026-12-05T10:00) or an age (90s, 15m, 2h, 7d)."
)
@click.option("--reason", help="Only this error code, e.g. RATE_LIMIT_EXCEEDED.")
@click.option("--identity", help="Only this publisher (a token name).")
@click.option("--message-id", help="Only this message_id.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, with bodies.")
@click.option(
    "--local",
    is_flag=True,
    help="Cluster mode: this node's file, not Redis (refusals kept while Redis was down).",
)
@click.pass_context
def refused(
    ctx: click.Context,
    config_path: str | None,
    database: str | None,
    since: str | None,
    reason: str | None,
    identity: str | None,
    message_id: str | None,
    limit: int,
    as_json: bool,
    local: bool,
) -> None:
    """Events refused from publishers (rate limit, validation, rights, overload),
    newest first. ``refused retry ID`` submits one again. In cluster mode every
    node's, from the cluster's Redis."""
    if ctx.invoked_subcommand is not None:
        return
    filters = {
        "since": None if since is None else _since(since),
        "reason": reason,
        "identity": identity,
        "message_id": message_id,
    }
    config = _load(config_path, _flags(database=database))
    db = _open(config_path, database)
    if config.cluster.redis and not local:
        rows = on_redis(config, lambda log: refused_store(config, log).find(limit=limit, **filters))
        click.echo(f"refused events of every node, from Redis at {where(config)}", err=True)
        kept = storage.list_refused(db, limit=1)
        if kept:
            # Refusals a node could not store in Redis stay in its own file.
            click.echo(
                f"this node's file {config.database} also keeps refused events (Redis was"
                " unreachable when they were refused; a running node moves them to Redis"
                " once it answers): --local lists them",
                err=True,
            )
    else:
        rows = storage.list_refused(db, limit=limit, **filters)
    if as_json:
        for row in rows:
            click.echo(orjson.dumps(row).decode())
        return
    table = [[c.upper() for c in _COLUMNS]]
    for row in rows:
        retried = "-" if row["retried_at"] is None else f"{row['retry_result']} {row['retried_at']}"
        table.append(
            ["-" if row.get(c) is None else str(row[c]) for c in _COLUMNS[:-1]] + [retried]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    for line in table:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


@refused.command("retry")
@click.argument("refused_id", type=int)
@click.option(
    "--url",
    default=lambda: os.environ.get("CATSOCK_URL", "http://127.0.0.1:8765"),
    show_default="$CATSOCK_URL or http://127.0.0.1:8765",
    help="The running gateway (http:// or https://; a ws:// URL is taken as its host).",
)
@click.option(
    "--token",
    default=lambda: os.environ.get("CATSOCK_TOKEN"),
    help="An admin token: DASHBOARD, bound to no user ($CATSOCK_TOKEN).",
)
def retry(refused_id: int, url: str, token: str | None) -> None:
    """Submit refused event REFUSED_ID again, as the identity that sent it, once the
    cause is fixed. Prints the gateway's answer; exits 1 if it refused it again."""
    if not token:
        raise click.UsageError("give an admin token with --token or CATSOCK_TOKEN")
    endpoint = _http_base(url) + "/api/refused/retry"
    request = urllib.request.Request(
        endpoint,
        data=json.dumps({"id": refused_id}).encode(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            status, body = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"cannot reach the gateway at {endpoint}: {exc}") from None
    answer: dict[str, Any] = json.loads(body) if body else {}
    if status == 202:
        what = "a duplicate of" if answer.get("duplicate") else "accepted as"
        click.echo(f"refused event {refused_id}: {what} seq {answer.get('seq')}")
        return
    click.echo(
        f"refused event {refused_id}: HTTP {status} {answer.get('error_code', '')}:"
        f" {answer.get('error_message', '')}",
        err=True,
    )
    raise SystemExit(1)


def _http_base(url: str) -> str:
    url = url.rstrip("/")
    for ws, http in (("ws://", "http://"), ("wss://", "https://")):
        if url.startswith(ws):
            url = http + url[len(ws) :]
    if url.endswith("/ws"):
        url = url[: -len("/ws")]
    return url


def _since(value: str) -> str:
    """An ISO time as stored (UTC), from an ISO time or an age like 15m."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].replace(".", "", 1).isdigit():
        return storage.iso(time.time() - float(value[:-1]) * units[value[-1]])
    return value
