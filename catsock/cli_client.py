"""``python -m catsock publish | tail``: the client library (catsock/client/) from a shell.

``publish TYPE --payload JSON`` sends one event, waits for the gateway's
``accepted`` and prints ``accepted seq=N message_id=...`` (plus ``duplicate``);
a refusal is one ``Error:`` line and exit 1. ``tail`` prints every event it
receives as one JSON line, ``seq`` first, until Ctrl-C or SIGTERM. Both read the
token from ``--token`` or ``$CATSOCK_TOKEN`` and the URL from ``--url`` or
``$CATSOCK_URL``; status goes to stderr (each failed connection attempt as a
line), data to stdout.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import click
import orjson
import trio

from protocol.codec import json_object

from .cli import main
from .client import (
    Accepted,
    AuthError,
    ClientClosed,
    ConnectError,
    EventStream,
    PublishError,
    _describe,
    _single_error,
    connect,
)

__all__ = ["publish", "tail"]

DEFAULT_URL = "ws://127.0.0.1:8765/ws"
F = TypeVar("F", bound=Callable[..., Any])


def _connection_options(default_type: str) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        func = click.option(
            "--client-type",
            default=default_type,
            show_default=True,
            help="The client type the token is registered for.",
        )(func)
        func = click.option(
            "--token",
            envvar="CATSOCK_TOKEN",
            required=True,
            help="The client token (default: $CATSOCK_TOKEN).",
        )(func)
        func = click.option(
            "--url",
            envvar="CATSOCK_URL",
            default=DEFAULT_URL,
            show_default=True,
            help="The gateway's WebSocket URL (default: $CATSOCK_URL, else this).",
        )(func)
        return func

    return decorate


def _log_to_stderr(level: int) -> None:
    logging.basicConfig(stream=sys.stderr, level=level, format="catsock: %(message)s")


def _json_object(ctx: click.Context, param: click.Parameter, value: str) -> dict[str, Any]:
    try:
        return json_object(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc}; e.g. '{{\"adware_id\": 100}}'") from None


def _run(func: Callable[[], Any]) -> Any:
    """``trio.run`` with the client's failures as one-line errors."""
    try:
        return trio.run(func)
    except ValueError as exc:  # a bad URL
        raise click.UsageError(str(exc)) from None
    except AuthError as exc:
        hint = ""
        if "for client type" in str(exc):  # the gateway names the token's own type
            hint = " (pass --client-type with the token's type)"
        raise click.ClickException(f"authentication failed: {exc}{hint}") from None
    except ConnectError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        sys.exit(130)


@main.command()
@click.argument("type_", metavar="TYPE")
@click.option(
    "--payload",
    required=True,
    callback=_json_object,
    help='The payload, a JSON object, e.g. \'{"adware_id": 100, "action": "UPDATE"}\'.',
)
@_connection_options("CATS")
@click.option("--message-id", help="The event's message_id (default: a new unique one).")
@click.option(
    "--outbox",
    type=click.Path(dir_okay=False),
    help="Keep the event in this SQLite outbox until the gateway accepts it; a later "
    "publish with the same outbox resends what is still pending.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the gateway's answer (reconnecting meanwhile).",
)
def publish(
    type_: str,
    payload: dict[str, Any],
    url: str,
    token: str,
    client_type: str,
    message_id: str | None,
    outbox: str | None,
    timeout: float,
) -> None:
    """Publish one TYPE event and wait until the gateway accepts it.

    Prints "accepted seq=N message_id=ID" (with "duplicate" if the gateway had
    this message_id already) and exits 0; a refused event exits 1.
    """
    # Failed connection attempts are worth a line each, as for tail: a gateway that is
    # down shows as such while publish keeps trying, not only when it gives up.
    _log_to_stderr(logging.WARNING)
    options = {"outbox_path": outbox, "receive": False}
    result = _run(
        partial(_publish, url, token, client_type, type_, payload, message_id, timeout, options)
    )
    accepted, pending = result
    if accepted is None:
        where = "; it stays pending in the outbox" if outbox else ""
        raise click.ClickException(f"no answer from {url} within {timeout:g} s ({pending}){where}")
    if accepted.seq is None:
        click.echo(f"sent message_id={accepted.message_id} (the gateway does not acknowledge)")
        return
    duplicate = " duplicate" if accepted.duplicate else ""
    click.echo(f"accepted seq={accepted.seq} message_id={accepted.message_id}{duplicate}")


async def _publish(
    url: str,
    token: str,
    client_type: str,
    type_: str,
    payload: dict[str, Any],
    message_id: str | None,
    seconds: float,
    options: dict[str, Any],
) -> tuple[Accepted | None, str]:
    async with connect(url, token, client_type, wait_connected=False, **options) as client:
        with trio.move_on_after(seconds):
            try:
                accepted = await client.publish(type_, payload, message_id=message_id)
                await client.flush()  # what an earlier run left in the outbox went first
                return accepted, ""
            except PublishError as exc:
                raise click.ClickException(f"refused: {exc}") from None
            except ClientClosed:
                pass
        last = client.last_error
        return None, "not connected" if last is None else f"last error: {_describe(last)}"


@main.command()
@click.option("--type", "types", multiple=True, help="Print only events of this type. Repeatable.")
@_connection_options("AFAD")
@click.option("--since", type=click.IntRange(min=0), help="Replay the events after this seq first.")
@click.option(
    "--ack/--no-ack",
    default=True,
    show_default=True,
    help="Acknowledge events once printed (--no-ack: the gateway counts them as "
    "delivered once written).",
)
def tail(
    types: tuple[str, ...],
    url: str,
    token: str,
    client_type: str,
    since: int | None,
    ack: bool,
) -> None:
    """Print every event received, one JSON line each (with its seq), until Ctrl-C."""
    _log_to_stderr(logging.WARNING)  # reconnects are worth a line
    _run(partial(_tail, url, token, client_type, frozenset(types), since, ack))


async def _tail(
    url: str, token: str, client_type: str, types: frozenset[str], since: int | None, ack: bool
) -> None:
    """Print events until SIGINT/SIGTERM; leaving ``connect`` closes with 1000."""
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_print_events, url, token, client_type, types, since, ack)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        leaf = _single_error(group)
        if leaf is None:
            raise
        raise leaf from None


async def _print_events(
    url: str, token: str, client_type: str, types: frozenset[str], since: int | None, ack: bool
) -> None:
    async with connect(url, token, client_type, since=since, acks=ack) as client:
        click.echo(f"catsock: tailing {url} as {client_type}", err=True)
        await _print_stream(client.events(), types)


async def _print_stream(stream: EventStream, types: frozenset[str]) -> None:
    async with stream:
        async for event in stream:
            if types and event.type not in types:
                continue
            text = event.text
            if "\n" in text or "\r" in text:  # pretty-printed by its publisher: one line
                text = orjson.dumps(event.message).decode()
            click.echo(text)
